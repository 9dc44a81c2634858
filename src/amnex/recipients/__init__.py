"""Recipients' choices: the suppression list (opt-outs) and the consent ledger.

`service` is what the compliance gate, the inbound keyword handler and the API call;
`models` holds the tables.
"""
