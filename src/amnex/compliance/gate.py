"""Compliance: the gate — every rule, in one fixed order, for every message.

The order, and the first rejection wins:

1. **address** — normalised and valid (`addresses`), and for SMS a kind of number that
   may receive one (`number_type`);
2. **geo** — the account's allowed countries, the operator's blocked countries and ranges
   (`geo`);
3. **suppression** — the recipient has not opted out of this account or platform-wide on
   this channel (`recipients`);
4. **consent** — a marketing message has a live consent, where the account requires one;
5. **content** — forbidden content, link shorteners, and on a first marketing SMS the brand
   and opt-out language; marketing email's postal address and unsubscribe link (`content`);
6. **quiet hours** — marketing SMS only inside the recipient's legal hours, else deferred
   (`quiet_hours`);
7. **limits** — the account's daily cap and per-prefix velocity (`api.ratelimit`, at accept).

Rules 3 and 4, and content's first-contact check, need the database; the rest are pure. So
the gate runs in two steps. `screen` runs the pure rules when the request is validated: an
address or geo rejection is answered at once, the others are kept. `decide` runs with the
recipient's `RecipientFacts`, looked up in the same transaction that would store the message
(`recipients.facts`), and gives the verdict in the order above. Dispatch runs 3, 4 and 6
again when it claims the message (`recheck`), so an opt-out that arrives after accept still
stops it. Nothing here reads the clock or the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from amnex.compliance.content import (
    ContentCheck,
    ContentFlag,
    check_content,
    check_opt_out_language,
    check_sender_identification,
)
from amnex.compliance.geo import GeoPolicy, check_geo
from amnex.compliance.number_type import check_number_type, region_for_number
from amnex.compliance.policy import AccountCompliance
from amnex.compliance.quiet_hours import quiet_hours
from amnex.compliance.verdict import (
    ALLOW,
    CODE_CONSENT_REQUIRED,
    CODE_RECIPIENT_OPTED_OUT,
    RULE_CONSENT,
    RULE_SUPPRESSION,
    Reject,
    Verdict,
)

PHONE_CHANNELS = frozenset({"sms", "mms"})


@dataclass(frozen=True, slots=True)
class Candidate:
    """The parts of a message the rules read."""

    channel: str
    to: str  # normalised: E.164 for SMS/MMS, the normalised address for email
    category: str
    body: str | None
    subject: str | None = None
    html: str | None = None


@dataclass(frozen=True, slots=True)
class Screened:
    """What the pure rules said, waiting for the recipient's facts."""

    early: Reject | None  # address or geo: answered before anything else
    content: Verdict
    flags: tuple[ContentFlag, ...]
    timing: Verdict  # quiet hours: allow, defer, or reject when no window ever opens
    needs_consent: bool
    needs_first_contact: bool
    brand: str


@dataclass(frozen=True, slots=True)
class RecipientFacts:
    """What the database says about one recipient, for one account and channel."""

    opted_out: str | None = None  # "account" or "platform" when an opt-out applies
    consented: bool = False  # a live marketing consent
    first_contact: bool = False  # no earlier outbound message to this recipient


NO_FACTS = RecipientFacts()


def screen(
    message: Candidate,
    account: AccountCompliance,
    *,
    geo: GeoPolicy,
    now: datetime,
    allow_landline: bool = False,
) -> Screened:
    """Rules 1, 2, 5 (without first contact) and 6 for one message."""
    phone = message.channel in PHONE_CHANNELS
    marketing = message.category == "marketing"
    country: str | None = None
    if phone:
        for verdict in (
            check_number_type(
                message.to, allow_landline=allow_landline or account.settings.allow_landline_sms
            ),
            check_geo(message.to, account.allowed_countries, geo),
        ):
            if isinstance(verdict, Reject):
                return Screened(verdict, ALLOW, (), ALLOW, False, False, "")
        country = region_for_number(message.to)
    policy = account.content_policy(country)
    content: ContentCheck = check_content(
        message.body or "",
        channel=message.channel,  # type: ignore[arg-type]  # a Channel, validated at accept
        category=message.category,  # type: ignore[arg-type]
        policy=policy,
        first_contact=False,
        subject=message.subject,
        html_body=message.html,
    )
    timing: Verdict = ALLOW
    if phone and marketing:
        timing = quiet_hours(
            message.to, message.category, now, account_window=account.marketing_window
        )
    return Screened(
        early=None,
        content=content.verdict,
        flags=content.flags,
        timing=timing,
        needs_consent=marketing and account.settings.require_marketing_consent,
        needs_first_contact=phone and marketing and account.settings.require_opt_out_language,
        brand=policy.brand,
    )


def decide(message: Candidate, screened: Screened, facts: RecipientFacts) -> Verdict:
    """The gate's verdict, in the module's order, once the recipient's facts are known."""
    if screened.early is not None:
        return screened.early
    suppression = suppression_verdict(message, facts)
    if suppression is not None:
        return suppression
    if screened.needs_consent and not facts.consented:
        return consent_rejection(message)
    if isinstance(screened.content, Reject):
        return screened.content
    if screened.needs_first_contact and facts.first_contact:
        body = message.body or ""
        for verdict in (
            check_sender_identification(
                body,
                category=message.category,  # type: ignore[arg-type]
                brand=screened.brand,
                first_contact=True,
                require_on_first_contact=True,
            ),
            check_opt_out_language(
                body,
                category=message.category,  # type: ignore[arg-type]
                first_contact=True,
                require_on_first_contact=True,
            ),
        ):
            if isinstance(verdict, Reject):
                return verdict
    return screened.timing


def suppression_verdict(message: Candidate, facts: RecipientFacts) -> Reject | None:
    if facts.opted_out is None:
        return None
    scope = "this account" if facts.opted_out == "account" else "every sender on this platform"
    return Reject(
        CODE_RECIPIENT_OPTED_OUT,
        RULE_SUPPRESSION,
        f"the recipient opted out of {message.channel} from {scope}",
    )


def consent_rejection(message: Candidate) -> Reject:
    return Reject(
        CODE_CONSENT_REQUIRED,
        RULE_CONSENT,
        f"no live marketing consent for this recipient on {message.channel}; "
        "record one with POST /v1/consents",
    )


def recheck(
    message: Candidate,
    account: AccountCompliance,
    facts: RecipientFacts,
    *,
    now: datetime,
) -> Verdict:
    """Rules 3, 4 and 6 again, when dispatch claims the message."""
    suppression = suppression_verdict(message, facts)
    if suppression is not None:
        return suppression
    marketing = message.category == "marketing"
    if marketing and account.settings.require_marketing_consent and not facts.consented:
        return consent_rejection(message)
    if marketing and message.channel in PHONE_CHANNELS:
        return quiet_hours(
            message.to, message.category, now, account_window=account.marketing_window
        )
    return ALLOW
