"""The status machine: one table decides every transition."""

from __future__ import annotations

import pytest

from amnex.errors import InvalidTransition
from amnex.messages.status import (
    FINAL_STATUSES,
    TRANSITIONS,
    Status,
    can_transition,
    check_transition,
    is_final,
)


def test_the_statuses_are_exactly_those_of_the_design() -> None:
    assert {s.value for s in Status} == {
        "scheduled", "queued", "sending", "sent", "delivered",
        "undelivered", "failed", "rejected", "canceled",
    }  # fmt: skip
    assert {s.value for s in FINAL_STATUSES} == {
        "delivered", "undelivered", "failed", "rejected", "canceled",
    }  # fmt: skip


# The one way out of a final status: an email bounce after the recipient server's 250.
BOUNCE_EDGE = (Status.DELIVERED, Status.UNDELIVERED)


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
def test_a_final_status_never_changes_but_for_a_bounce(final: Status) -> None:
    assert is_final(final)
    for target in Status:
        if (final, target) == BOUNCE_EDGE:
            continue
        assert not can_transition(final, target)
        with pytest.raises(InvalidTransition):
            check_transition(final, target)


def test_only_undelivered_follows_delivered() -> None:
    assert TRANSITIONS[Status.DELIVERED] == frozenset({Status.UNDELIVERED})
    check_transition(*BOUNCE_EDGE)
    assert TRANSITIONS[Status.UNDELIVERED] == frozenset()


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (Status.SCHEDULED, Status.QUEUED, True),
        (Status.SCHEDULED, Status.CANCELED, True),
        (Status.SCHEDULED, Status.SENDING, False),
        (Status.QUEUED, Status.SENDING, True),
        (Status.QUEUED, Status.CANCELED, True),
        (Status.QUEUED, Status.DELIVERED, False),
        (Status.SENDING, Status.SENDING, True),  # reclaimed after a lease expired
        (Status.SENDING, Status.QUEUED, True),  # retry later
        (Status.SENDING, Status.DELIVERED, True),
        (Status.SENDING, Status.CANCELED, False),  # a message on the wire cannot be recalled
        (Status.SENT, Status.DELIVERED, True),
        (Status.SENT, Status.QUEUED, False),
        (Status.SENT, Status.SENDING, False),
        (Status.DELIVERED, Status.UNDELIVERED, True),  # an email bounce
        (Status.DELIVERED, Status.FAILED, False),
    ],
)
def test_transition_table(current: Status, target: Status, allowed: bool) -> None:
    assert can_transition(current, target) is allowed


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(Status)
