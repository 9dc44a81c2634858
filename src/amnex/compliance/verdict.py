"""Compliance: the verdict every rule returns — allow, defer until an instant, or reject.

A rule is a pure function that answers with one of three values:

- `Allow` (use the constant `ALLOW`): the message may go now.
- `Defer(until, rule, detail)`: not now; the message is stored as `scheduled` with
  `next_attempt_at = until` (timezone-aware UTC) and the deciding rule recorded.
- `Reject(code, rule, detail)`: never; at accept a 422 problem+json carrying `code` and no
  message stored, at dispatch status `rejected` with `error_code = code`.

Rule names (`RULE_*`) and reject codes (`CODE_*`) are stable: clients read the codes, the
database keeps the rule names. Extend these lists; never rename an entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

RULE_NUMBER_TYPE = "number_type"
RULE_GEO = "geo"
RULE_SUPPRESSION = "suppression"
RULE_CONSENT = "consent"
RULE_QUIET_HOURS = "quiet_hours"

CODE_NUMBER_TYPE_NOT_ALLOWED = "number_type_not_allowed"
"""The destination is a kind of number that cannot or may not receive SMS (landline, ...)."""
CODE_DESTINATION_COUNTRY_NOT_ALLOWED = "destination_country_not_allowed"
"""The destination's country is not among the account's allowed destination countries."""
CODE_DESTINATION_BLOCKED = "destination_blocked"
"""The operator blocks the destination (premium rate, a fraud-prone prefix or country)."""
CODE_RECIPIENT_OPTED_OUT = "recipient_opted_out"
"""The recipient opted out of this account's (or all) messages on this channel."""
CODE_CONSENT_REQUIRED = "consent_required"
"""A marketing message without a live consent, on an account that requires one."""
CODE_NO_SENDING_WINDOW = "no_sending_window"
"""Quiet hours leave no instant at which a marketing message may ever be sent."""


@dataclass(frozen=True, slots=True)
class Allow:
    """The message may be sent now."""


@dataclass(frozen=True, slots=True)
class Defer:
    """Send no earlier than `until` (aware UTC), because of `rule`; `detail` says why."""

    until: datetime
    rule: str
    detail: str

    def __post_init__(self) -> None:
        if self.until.tzinfo is None or self.until.utcoffset() != timedelta(0):
            raise ValueError(f"Defer.until must be timezone-aware UTC, got {self.until!r}")


@dataclass(frozen=True, slots=True)
class Reject:
    """The message must not be sent: `code` is the stable error code, `detail` the reason."""

    code: str
    rule: str
    detail: str


Verdict = Allow | Defer | Reject

ALLOW = Allow()


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """The gate's answer for several rules' verdicts, taken in the gate's order.

    The first `Reject` wins (iteration stops there, so a generator of rule calls runs no rule
    after a rejection); otherwise the `Defer` with the latest `until` (the earliest of equals),
    since the message may go only once every deferring rule allows it; otherwise `ALLOW`.
    """
    latest: Defer | None = None
    for verdict in verdicts:
        if isinstance(verdict, Reject):
            return verdict
        if isinstance(verdict, Defer) and (latest is None or verdict.until > latest.until):
            latest = verdict
    return ALLOW if latest is None else latest
