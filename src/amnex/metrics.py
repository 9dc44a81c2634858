"""Observability: the Prometheus metrics every stage updates (names prefixed `amnex_`)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_ACCEPTED = Counter(
    "amnex_messages_accepted_total", "Messages accepted by the API and durably stored", ["channel"]
)
MESSAGES_REJECTED = Counter(
    "amnex_messages_rejected_total", "Send requests refused at accept, by error code", ["code"]
)
MESSAGES_DELIVERED = Counter(
    "amnex_messages_delivered_total", "Messages that reached delivered", ["channel"]
)
DISPATCH_OUTCOMES = Counter(
    "amnex_dispatch_outcomes_total",
    "Send attempts by outcome (sent, delivered, retry, failed)",
    ["channel", "outcome"],
)
# Sampled by each API process every `backpressure_sample_s` (api.backpressure); counts stop
# at a ceiling (max_queue_depth + 1) so that a sample stays cheap however long the queue is.
QUEUE_DEPTH = Gauge(
    "amnex_queue_depth", "Due messages (queued or scheduled, their time come), at the last sample"
)
QUEUE_OLDEST_DUE_AGE = Gauge(
    "amnex_queue_oldest_due_age_seconds",
    "How long the oldest due message has been waiting to be claimed, at the last sample",
)
WEBHOOK_BACKLOG = Gauge(
    "amnex_webhook_backlog", "Webhook deliveries pending (not yet delivered), at the last sample"
)
BACKPRESSURE_ACCOUNTS = Gauge(
    "amnex_backpressure_accounts",
    "Accounts refused with account_backlog_full (over max_account_backlog), at the last sample",
)
BACKPRESSURE_CONNECTORS = Gauge(
    "amnex_backpressure_connectors",
    "Connectors whose SMS are refused with connector_backlog_full (over "
    "max_connector_backlog), at the last sample",
)
BACKPRESSURE_REFUSALS = Counter(
    "amnex_backpressure_refusals_total",
    "Send requests refused by backpressure (queue_full, account_backlog_full, "
    "connector_backlog_full)",
    ["code"],
)
QUEUE_SAMPLE_ERRORS = Counter(
    "amnex_queue_sample_errors_total", "Queue samples that failed (the database did not answer)"
)
API_REQUEST_DURATION = Histogram(
    "amnex_api_request_duration_seconds",
    "HTTP request duration by route and status class",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
RECEIPTS = Counter(
    "amnex_receipts_total",
    "Delivery receipts by outcome (applied, duplicate, intermediate, pending, matched_later, "
    "expired, unreadable, late)",
    ["outcome"],
)
INBOUND_MESSAGES = Counter(
    "amnex_inbound_messages_total",
    "Inbound messages and parts by outcome (stored, part, duplicate_part, incomplete, "
    "unknown_destination, undecodable)",
    ["outcome"],
)
RECEIPT_TIMEOUTS = Counter(
    "amnex_receipt_timeouts_total", "Sent messages that never had a receipt (receipt_timeout)"
)
EMAIL_BOUNCES = Counter(
    "amnex_email_bounces_total",
    "Reports received by the bounce receiver, by kind (hard, soft, complaint, unmatched)",
    ["kind"],
)
RECEIPT_LAG = Histogram(
    "amnex_receipt_lag_seconds",
    "Time from a part's submit to its final delivery receipt",
    # From a fast SMSC's fraction of a second to a phone that was off for a day.
    buckets=(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0),
)
# The worker's group commits: one observation per transaction that wrote something, by kind
# (claim: messages taken under a lease; outcome: send outcomes recorded; receipt: delivery
# receipts and inbound messages stored). Items per transaction show how well writes batch.
WORKER_BATCH_SIZE = Histogram(
    "amnex_worker_batch_size",
    "Items one worker transaction wrote, by kind (claim, outcome, receipt)",
    ["kind"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
WORKER_BATCH_SECONDS = Histogram(
    "amnex_worker_batch_seconds",
    "Time one worker transaction took, from its start to its commit, by kind",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def count_batch(kind: str, items: int, seconds: float) -> None:
    """One worker transaction of `kind` that wrote `items` items in `seconds`."""
    WORKER_BATCH_SIZE.labels(kind=kind).observe(items)
    WORKER_BATCH_SECONDS.labels(kind=kind).observe(seconds)


PURGED = Counter(
    "amnex_purged_total",
    "Rows changed by the purge, by step (content, metadata, exports, audit_personal, "
    "audit_entries, webhook_log, keys_destroyed); content includes what is emptied at delivery",
    ["step"],
)


def count_purged(counts: Mapping[str, int]) -> None:
    """Add one purge run's counts (`privacy.retention.PurgeReport.counts`)."""
    for step, n in counts.items():
        PURGED.labels(step=step).inc(n)
