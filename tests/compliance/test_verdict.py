"""Verdicts: the gate combines rules' answers — first rejection, else the latest deferral."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from amnex.compliance import verdict
from amnex.compliance.verdict import ALLOW, Allow, Defer, Reject, Verdict, combine

T1 = datetime(2025, 1, 15, 13, 0, tzinfo=UTC)
T2 = datetime(2025, 1, 16, 13, 0, tzinfo=UTC)
EARLY = Defer(T1, "quiet_hours", "early")
LATE = Defer(T2, "other", "late")
SAME_AS_LATE = Defer(T2, "quiet_hours", "same instant")
OPTED_OUT = Reject("recipient_opted_out", "suppression", "opted out")
BLOCKED = Reject("destination_blocked", "geo", "blocked")


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([], ALLOW),
        ([ALLOW, ALLOW], ALLOW),
        ([ALLOW, EARLY], EARLY),
        ([EARLY, LATE], LATE),
        ([LATE, EARLY], LATE),
        ([LATE, SAME_AS_LATE], LATE),
        ([EARLY, OPTED_OUT, BLOCKED], OPTED_OUT),
        ([ALLOW, BLOCKED, LATE], BLOCKED),
    ],
)
def test_combine_takes_the_first_rejection_else_the_latest_deferral(
    verdicts: list[Verdict], expected: Verdict
) -> None:
    assert combine(verdicts) == expected


def test_combine_runs_no_rule_after_a_rejection() -> None:
    def rules() -> Iterator[Verdict]:
        yield ALLOW
        yield BLOCKED
        raise AssertionError("a rule after the rejection ran")

    assert combine(rules()) is BLOCKED


@pytest.mark.parametrize(
    "until",
    [
        datetime(2025, 1, 15, 13, 0),  # noqa: DTZ001 - the naive value under test
        datetime(2025, 1, 15, 8, 0, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_a_deferral_is_only_until_an_aware_utc_instant(until: datetime) -> None:
    with pytest.raises(ValueError, match="UTC"):
        Defer(until, "quiet_hours", "detail")


@pytest.mark.parametrize("value", [EARLY, BLOCKED])
def test_verdicts_are_immutable(value: Defer | Reject) -> None:
    assert not hasattr(value, "__dict__")  # slots
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.rule = "changed"  # type: ignore[misc]


def test_allow_is_one_value() -> None:
    assert Allow() == ALLOW


def test_rule_names_and_codes_are_distinct_snake_case() -> None:
    for prefix in ("RULE_", "CODE_"):
        values = [value for name, value in vars(verdict).items() if name.startswith(prefix)]
        assert values
        assert len(set(values)) == len(values)
        assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", value) for value in values)
