"""Messages: the status machine — one pure transition table that every status change obeys."""

from __future__ import annotations

from enum import StrEnum

from amnex.errors import InvalidTransition


class Status(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELED = "canceled"


FINAL_STATUSES = frozenset(
    {Status.DELIVERED, Status.UNDELIVERED, Status.FAILED, Status.REJECTED, Status.CANCELED}
)

# Claimable by a worker when `next_attempt_at` has passed. A `sending` row is claimable only
# after its lease expired: the claim sets `next_attempt_at` to the lease's end.
CLAIMABLE_STATUSES = (Status.SCHEDULED, Status.QUEUED, Status.SENDING)

CANCELABLE_STATUSES = frozenset({Status.SCHEDULED, Status.QUEUED})

# -> scheduled again: the compliance gate deferred a claimed message (quiet hours).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.SCHEDULED: frozenset(
        {Status.SCHEDULED, Status.QUEUED, Status.CANCELED, Status.FAILED, Status.REJECTED}
    ),
    Status.QUEUED: frozenset(
        {Status.SCHEDULED, Status.SENDING, Status.CANCELED, Status.FAILED, Status.REJECTED}
    ),
    # sending -> sending: a worker's lease expired and another worker reclaimed the message.
    # sending -> queued: a temporary error, retried later, or a lease released at shutdown.
    Status.SENDING: frozenset(
        {
            Status.SCHEDULED,
            Status.SENDING,
            Status.QUEUED,
            Status.SENT,
            Status.DELIVERED,
            Status.UNDELIVERED,
            Status.FAILED,
            Status.REJECTED,
        }
    ),
    Status.SENT: frozenset({Status.DELIVERED, Status.UNDELIVERED, Status.FAILED}),
    # delivered -> undelivered: email only, and only a bounce takes it. SMTP delivery is final
    # at the recipient server's 250; a hard bounce that comes back later (`email.receiver`)
    # says the mail never reached the mailbox after all.
    Status.DELIVERED: frozenset({Status.UNDELIVERED}),
    Status.UNDELIVERED: frozenset(),
    Status.FAILED: frozenset(),
    Status.REJECTED: frozenset(),
    Status.CANCELED: frozenset(),
}


def can_transition(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: Status, target: Status) -> None:
    """Raise InvalidTransition unless the table allows current -> target."""
    if not can_transition(current, target):
        raise InvalidTransition(f"a {current.value} message cannot become {target.value}")


def is_final(status: Status) -> bool:
    return status in FINAL_STATUSES
