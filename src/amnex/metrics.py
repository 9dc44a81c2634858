"""Observability: the Prometheus metrics every stage updates (names prefixed `amnex_`)."""

from __future__ import annotations

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
QUEUE_DEPTH = Gauge("amnex_queue_depth", "Messages queued or scheduled and not yet final")
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
