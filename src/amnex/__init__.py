"""Amnex: a self-hostable A2P messaging platform.

Packages follow the message, in the order it travels:

    api/          HTTP: /v1 for clients, /admin/v1 for operators, problem+json errors
    accounts/     accounts, API keys, senders, operators
    messages/     accept: schemas, the message table, the status machine, group commit
    dispatch/     claim due messages under leases, retry with backoff, record outcomes in
                  group commits
    carriers/     connectors (carrier accounts, secrets sealed) and routes; route choice
    channels/     carrier connections behind one protocol: email over SMTP; SMS over
                  smpp/ (codec, text encodings, session, connector with several binds)
    receipts/     delivery receipts and inbound SMS: parsed, stored before the SMSC is
                  answered, matched to parts, swept for late matches and timeouts
    simulators/   local carrier peers for dev, tests and benchmarks (SMTP sink, SMSC)
    privacy/      audit log, log-safe failure summaries, master key and sealed secrets
                  (encryption of content, retention follow)
    db/           engines, unit of work, migrations
    config.py, errors.py, clock.py, metrics.py, runtime.py, cli.py
"""

__version__ = "0.1.0"
