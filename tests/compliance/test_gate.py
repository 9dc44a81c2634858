"""The gate: `screen`, then `decide` with the recipient's facts, and `recheck` at dispatch,
in the documented order (address, geo, suppression, consent, content, quiet hours)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from amnex.compliance.content import (
    CODE_CONTENT_FORBIDDEN,
    CODE_LINK_SHORTENER_BLOCKED,
    CODE_OPT_OUT_LANGUAGE_MISSING,
    CODE_SENDER_IDENTIFICATION_MISSING,
    RULE_CONTENT,
)
from amnex.compliance.gate import (
    NO_FACTS,
    Candidate,
    RecipientFacts,
    decide,
    recheck,
    screen,
)
from amnex.compliance.geo import DEFAULT_GEO_POLICY, GeoPolicy
from amnex.compliance.policy import AccountCompliance, ComplianceSettings, account_compliance
from amnex.compliance.verdict import (
    ALLOW,
    CODE_CONSENT_REQUIRED,
    CODE_DESTINATION_BLOCKED,
    CODE_DESTINATION_COUNTRY_NOT_ALLOWED,
    CODE_NUMBER_TYPE_NOT_ALLOWED,
    CODE_RECIPIENT_OPTED_OUT,
    RULE_CONSENT,
    RULE_GEO,
    RULE_NUMBER_TYPE,
    RULE_QUIET_HOURS,
    RULE_SUPPRESSION,
    Defer,
    Reject,
    Verdict,
)

NEW_YORK = "+12125551234"  # America/New_York, the federal window 08:00-21:00
MIAMI = "+13055551234"  # Florida: 08:00-20:00
NEW_BRUNSWICK = "+15062345678"  # Canada
UK_MOBILE = "+447400123456"
UK_LANDLINE = "+441212345678"
IRIDIUM = "+881612345678"  # satellite, blocked by default

BRAND = "Shop Example"
COMPLIANT = "Shop Example: 20% off all week. Reply STOP to opt out."
NO_BRAND = "20% off all week. Reply STOP to opt out."
NO_OPT_OUT = "Shop Example: 20% off all week."
FORBIDDEN = "Shop Example: new Glock 19 in stock. Reply STOP to opt out."
SHORTENED = "Shop Example: see bit.ly/abc123. Reply STOP to opt out."
CODE = "Your code is 123456"

CONSENTED = RecipientFacts(consented=True)
FIRST_CONTACT = RecipientFacts(consented=True, first_contact=True)

NY = ZoneInfo("America/New_York")


def local(hour: int, minute: int = 0) -> datetime:
    """A winter wall-clock time in New York (EST, UTC-5), as an aware UTC instant."""
    return datetime(2025, 1, 15, hour, minute, tzinfo=NY).astimezone(UTC)


NOON = local(12)
NIGHT = local(2)


def account(country: str = "US", **compliance: Any) -> AccountCompliance:
    return account_compliance(
        "acc_gate", country=country, business_name=BRAND, settings={"compliance": compliance}
    )


def sms(to: str, body: str = COMPLIANT, category: str = "marketing") -> Candidate:
    return Candidate(channel="sms", to=to, category=category, body=body)


def gate(
    message: Candidate,
    rules: AccountCompliance,
    facts: RecipientFacts = CONSENTED,
    *,
    now: datetime = NOON,
    geo: GeoPolicy = DEFAULT_GEO_POLICY,
) -> Verdict:
    return decide(message, screen(message, rules, geo=geo, now=now), facts)


def code_of(verdict: Verdict) -> str | None:
    """The rejection's code; None for an allow (a deferral fails the test)."""
    if verdict == ALLOW:
        return None
    assert isinstance(verdict, Reject), verdict
    return verdict.code


# --- 1 and 2: address and geo, answered before anything else ------------------------------


@pytest.mark.parametrize(
    ("to", "rules", "code", "rule"),
    [
        pytest.param(
            UK_LANDLINE,
            account("GB"),
            CODE_NUMBER_TYPE_NOT_ALLOWED,
            RULE_NUMBER_TYPE,
            id="landline",
        ),
        pytest.param(
            UK_LANDLINE, account("GB", allow_landline_sms=True), None, None, id="landline-allowed"
        ),
        pytest.param(UK_MOBILE, account("GB"), None, None, id="uk-mobile"),
        pytest.param(
            NEW_BRUNSWICK,
            account("US"),
            CODE_DESTINATION_COUNTRY_NOT_ALLOWED,
            RULE_GEO,
            id="canada-for-us-only",
        ),
        pytest.param(
            NEW_BRUNSWICK,
            account("US", allowed_countries=["US", "CA"]),
            None,
            None,
            id="canada-allowed",
        ),
        pytest.param(
            UK_MOBILE,
            account("US", allowed_countries=["US", "CA"]),
            CODE_DESTINATION_COUNTRY_NOT_ALLOWED,
            RULE_GEO,
            id="uk-for-north-america",
        ),
        pytest.param(IRIDIUM, account("US"), CODE_DESTINATION_BLOCKED, RULE_GEO, id="satellite"),
    ],
)
def test_address_and_geo_rejections_are_early(
    to: str, rules: AccountCompliance, code: str | None, rule: str | None
) -> None:
    screened = screen(sms(to, category="transactional"), rules, geo=DEFAULT_GEO_POLICY, now=NOON)
    if code is None:
        assert screened.early is None
    else:
        assert screened.early is not None
        assert (screened.early.code, screened.early.rule) == (code, rule)


def test_the_screen_s_own_landline_switch_lets_a_landline_through() -> None:
    message = sms(UK_LANDLINE, category="transactional")
    screened = screen(message, account("GB"), geo=DEFAULT_GEO_POLICY, now=NOON, allow_landline=True)
    assert screened.early is None


def test_without_the_default_block_a_satellite_number_falls_to_the_country_rule() -> None:
    # The default policy's +881 block is what refuses it first: without it, +881 has no
    # country, and a US account's list does not name one.
    message = sms(IRIDIUM, category="transactional")
    screened = screen(message, account("US"), geo=GeoPolicy(blocked_prefixes=frozenset()), now=NOON)
    assert screened.early is not None
    assert screened.early.code == CODE_DESTINATION_COUNTRY_NOT_ALLOWED


def test_an_operator_exemption_lifts_the_satellite_block_only_for_its_range() -> None:
    policy = GeoPolicy.from_settings(exempt_prefixes="+8816")
    exempt = screen(sms(IRIDIUM, category="transactional"), account("US"), geo=policy, now=NOON)
    assert exempt.early is not None
    assert exempt.early.code == CODE_DESTINATION_COUNTRY_NOT_ALLOWED  # past the block


def test_an_early_rejection_wins_over_every_fact_and_rule() -> None:
    # A CA number for a US-only account, opted out, without consent, forbidden, at night.
    message = sms(NEW_BRUNSWICK, body=FORBIDDEN)
    screened = screen(message, account("US"), geo=DEFAULT_GEO_POLICY, now=NIGHT)
    verdict = decide(message, screened, RecipientFacts(opted_out="account", first_contact=True))
    assert code_of(verdict) == CODE_DESTINATION_COUNTRY_NOT_ALLOWED


# --- 3 to 6: suppression, consent, content, quiet hours ------------------------------------


@pytest.mark.parametrize(
    ("facts", "body", "now", "code", "rule"),
    [
        pytest.param(
            RecipientFacts(opted_out="account"),
            FORBIDDEN,
            NIGHT,
            CODE_RECIPIENT_OPTED_OUT,
            RULE_SUPPRESSION,
            id="suppression-beats-consent",
        ),
        pytest.param(
            RecipientFacts(opted_out="platform", consented=True),
            FORBIDDEN,
            NIGHT,
            CODE_RECIPIENT_OPTED_OUT,
            RULE_SUPPRESSION,
            id="platform-suppression-beats-content",
        ),
        pytest.param(
            NO_FACTS,
            FORBIDDEN,
            NIGHT,
            CODE_CONSENT_REQUIRED,
            RULE_CONSENT,
            id="consent-beats-content",
        ),
        pytest.param(
            RecipientFacts(first_contact=True),
            NO_BRAND,
            NIGHT,
            CODE_CONSENT_REQUIRED,
            RULE_CONSENT,
            id="consent-beats-first-contact",
        ),
        pytest.param(
            CONSENTED,
            FORBIDDEN,
            NIGHT,
            CODE_CONTENT_FORBIDDEN,
            RULE_CONTENT,
            id="content-beats-quiet-hours",
        ),
        pytest.param(
            FIRST_CONTACT,
            NO_BRAND,
            NIGHT,
            CODE_SENDER_IDENTIFICATION_MISSING,
            RULE_CONTENT,
            id="first-contact-beats-quiet-hours",
        ),
    ],
)
def test_the_first_rule_that_refuses_decides(
    facts: RecipientFacts, body: str, now: datetime, code: str, rule: str
) -> None:
    verdict = gate(sms(NEW_YORK, body=body), account(), facts, now=now)
    assert isinstance(verdict, Reject), verdict
    assert (verdict.code, verdict.rule) == (code, rule)


def test_the_suppression_rejection_names_the_scope() -> None:
    own = gate(sms(NEW_YORK), account(), RecipientFacts(opted_out="account", consented=True))
    platform = gate(sms(NEW_YORK), account(), RecipientFacts(opted_out="platform", consented=True))
    assert isinstance(own, Reject)
    assert isinstance(platform, Reject)
    assert "this account" in own.detail
    assert "every sender" in platform.detail


@pytest.mark.parametrize(
    ("category", "require", "facts", "code"),
    [
        ("marketing", None, NO_FACTS, CODE_CONSENT_REQUIRED),  # the default requires it
        ("marketing", True, NO_FACTS, CODE_CONSENT_REQUIRED),
        ("marketing", True, CONSENTED, None),
        ("marketing", False, NO_FACTS, None),
        ("transactional", True, NO_FACTS, None),
    ],
)
def test_marketing_needs_consent_only_where_the_account_requires_it(
    category: str, require: bool | None, facts: RecipientFacts, code: str | None
) -> None:
    settings: dict[str, Any] = {} if require is None else {"require_marketing_consent": require}
    body = COMPLIANT if category == "marketing" else CODE
    assert code_of(gate(sms(NEW_YORK, body, category), account(**settings), facts)) == code


@pytest.mark.parametrize(
    ("body", "category", "first_contact", "settings", "code"),
    [
        (NO_BRAND, "marketing", True, {}, CODE_SENDER_IDENTIFICATION_MISSING),
        (NO_OPT_OUT, "marketing", True, {}, CODE_OPT_OUT_LANGUAGE_MISSING),
        ("20% off all week.", "marketing", True, {}, CODE_SENDER_IDENTIFICATION_MISSING),
        (COMPLIANT, "marketing", True, {}, None),
        (NO_BRAND, "marketing", False, {}, None),
        (NO_OPT_OUT, "marketing", False, {}, None),
        (NO_BRAND, "marketing", True, {"require_opt_out_language": False}, None),
        ("20% off all week. Reply STOP to opt out.", "transactional", True, {}, None),
        # The account's own brand name is the one the message must carry.
        (
            COMPLIANT,
            "marketing",
            True,
            {"brand_name": "Acme Outlet"},
            CODE_SENDER_IDENTIFICATION_MISSING,
        ),
        (
            "Acme Outlet: 20% off. Reply STOP to opt out.",
            "marketing",
            True,
            {"brand_name": "Acme Outlet"},
            None,
        ),
    ],
)
def test_a_first_marketing_sms_names_the_brand_and_says_how_to_opt_out(
    body: str, category: str, first_contact: bool, settings: dict[str, Any], code: str | None
) -> None:
    facts = RecipientFacts(consented=True, first_contact=first_contact)
    verdict = gate(sms(NEW_YORK, body, category), account(**settings), facts)
    assert code_of(verdict) == code
    if code is not None:
        assert isinstance(verdict, Reject)
        assert verdict.rule == RULE_CONTENT


def test_the_first_contact_check_applies_to_mms_but_not_to_email() -> None:
    mms = Candidate(channel="mms", to=NEW_YORK, category="marketing", body=NO_BRAND)
    email = Candidate(
        channel="email",
        to="alex@example.com",
        category="marketing",
        subject="Sale",
        body="20% off. 1 Main St, Springfield. Unsubscribe: https://shop.example/u/1",
    )
    rules = account(postal_address="1 Main St, Springfield")
    assert code_of(gate(mms, rules, FIRST_CONTACT)) == CODE_SENDER_IDENTIFICATION_MISSING
    assert code_of(gate(email, rules, FIRST_CONTACT)) is None


def test_a_blocked_link_shortener_is_a_content_rejection_before_quiet_hours() -> None:
    rules = account(link_shorteners="block")
    verdict = gate(sms(NEW_YORK, SHORTENED), rules, now=NIGHT)
    assert code_of(verdict) == CODE_LINK_SHORTENER_BLOCKED


def test_accounts_with_the_same_brand_keep_their_own_shortener_policy() -> None:
    # Each account's resolved settings decide, whichever account was screened before it
    # (a new account object, say after an operator changed the setting, may take the
    # memory, and so the id(), of one that was dropped).
    policies = {
        CODE_LINK_SHORTENER_BLOCKED: ComplianceSettings(link_shorteners="block"),
        None: ComplianceSettings(link_shorteners="allow"),
    }
    message = sms(NEW_YORK, SHORTENED)
    wrong = []
    for i in range(400):
        code = CODE_LINK_SHORTENER_BLOCKED if i % 2 else None
        rules = AccountCompliance("acc_gate", "US", BRAND, policies[code])
        got = code_of(gate(message, rules))
        if got != code:
            wrong.append((i, got))
        del rules
    assert wrong == []


# --- 6: quiet hours --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "category", "now", "settings", "until"),
    [
        # 02:00 in New York (07:00 UTC): wait for 08:00 local, 13:00 UTC in winter.
        pytest.param(
            NEW_YORK, "marketing", NIGHT, {}, datetime(2025, 1, 15, 13, tzinfo=UTC), id="ny-night"
        ),
        pytest.param(NEW_YORK, "marketing", local(8), {}, None, id="ny-opens-at-8"),
        pytest.param(NEW_YORK, "marketing", local(20, 30), {}, None, id="ny-20:30-open"),
        pytest.param(
            NEW_YORK,
            "marketing",
            local(21),
            {},
            datetime(2025, 1, 16, 13, tzinfo=UTC),
            id="ny-closes-at-21",
        ),
        # Florida closes at 20:00: 20:30 waits for 08:00 the next morning.
        pytest.param(
            MIAMI,
            "marketing",
            local(20, 30),
            {},
            datetime(2025, 1, 16, 13, tzinfo=UTC),
            id="florida-20:30",
        ),
        pytest.param(MIAMI, "marketing", local(19, 59), {}, None, id="florida-19:59"),
        pytest.param(NEW_YORK, "transactional", local(3), {}, None, id="transactional-at-3"),
        pytest.param(MIAMI, "transactional", local(23), {}, None, id="transactional-at-23"),
        # The account's hours only narrow the law's: 09:00 is inside the law's window.
        pytest.param(
            NEW_YORK,
            "marketing",
            local(9),
            {"marketing_hours": {"start": "10:00", "end": "18:00"}},
            datetime(2025, 1, 15, 15, tzinfo=UTC),
            id="account-hours-narrow",
        ),
        pytest.param(
            NEW_YORK,
            "marketing",
            local(18, 30),
            {"marketing_hours": {"start": "10:00", "end": "18:00"}},
            datetime(2025, 1, 16, 15, tzinfo=UTC),
            id="account-hours-close-early",
        ),
        # ... and never widen them: 07:00 still waits for the law's 08:00.
        pytest.param(
            NEW_YORK,
            "marketing",
            local(7),
            {"marketing_hours": {"start": "06:00", "end": "23:00"}},
            datetime(2025, 1, 15, 13, tzinfo=UTC),
            id="account-hours-never-widen",
        ),
    ],
)
def test_marketing_sms_waits_for_the_recipients_local_hours(
    to: str, category: str, now: datetime, settings: dict[str, Any], until: datetime | None
) -> None:
    body = COMPLIANT if category == "marketing" else CODE
    verdict = gate(sms(to, body, category), account(**settings), now=now)
    if until is None:
        assert verdict == ALLOW
    else:
        assert isinstance(verdict, Defer), verdict
        assert (verdict.until, verdict.rule) == (until, RULE_QUIET_HOURS)


def test_a_night_time_marketing_sms_is_deferred_on_its_first_contact_too() -> None:
    verdict = gate(sms(NEW_YORK), account(), FIRST_CONTACT, now=NIGHT)
    assert isinstance(verdict, Defer)
    assert verdict.until == datetime(2025, 1, 15, 13, tzinfo=UTC)


def test_marketing_email_is_never_deferred() -> None:
    email = Candidate(
        channel="email",
        to="alex@example.com",
        category="marketing",
        subject="Sale",
        body="20% off. 1 Main St, Springfield. Unsubscribe: https://shop.example/u/1",
    )
    rules = account(postal_address="1 Main St, Springfield")
    assert gate(email, rules, now=NIGHT) == ALLOW


# --- recheck, at dispatch ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "facts", "now", "expected"),
    [
        pytest.param(
            sms(NEW_YORK),
            RecipientFacts(opted_out="account", consented=True),
            NOON,
            CODE_RECIPIENT_OPTED_OUT,
            id="opted-out",
        ),
        pytest.param(
            sms(NEW_YORK, CODE, "transactional"),
            RecipientFacts(opted_out="platform"),
            NOON,
            CODE_RECIPIENT_OPTED_OUT,
            id="transactional-opted-out",
        ),
        pytest.param(
            sms(NEW_YORK),
            RecipientFacts(opted_out="account"),
            NIGHT,
            CODE_RECIPIENT_OPTED_OUT,
            id="opt-out-first",
        ),
        pytest.param(sms(NEW_YORK), NO_FACTS, NOON, CODE_CONSENT_REQUIRED, id="consent-revoked"),
        pytest.param(
            sms(NEW_YORK), NO_FACTS, NIGHT, CODE_CONSENT_REQUIRED, id="consent-before-hours"
        ),
        pytest.param(
            sms(NEW_YORK),
            CONSENTED,
            NIGHT,
            datetime(2025, 1, 15, 13, tzinfo=UTC),
            id="marketing-at-night",
        ),
        pytest.param(sms(NEW_YORK), CONSENTED, NOON, None, id="marketing-at-noon"),
        pytest.param(
            sms(NEW_YORK, CODE, "transactional"), NO_FACTS, NIGHT, None, id="transactional-at-night"
        ),
        # Content is not checked again: it was decided at accept.
        pytest.param(sms(NEW_YORK, FORBIDDEN), CONSENTED, NOON, None, id="content-not-rechecked"),
    ],
)
def test_recheck_runs_suppression_consent_and_quiet_hours_again(
    message: Candidate, facts: RecipientFacts, now: datetime, expected: str | datetime | None
) -> None:
    verdict = recheck(message, account(), facts, now=now)
    if expected is None:
        assert verdict == ALLOW
    elif isinstance(expected, datetime):
        assert isinstance(verdict, Defer), verdict
        assert (verdict.until, verdict.rule) == (expected, RULE_QUIET_HOURS)
    else:
        assert code_of(verdict) == expected


def test_recheck_honours_the_accounts_consent_setting_and_hours() -> None:
    lenient = account(require_marketing_consent=False)
    narrow = account(marketing_hours={"start": "13:00", "end": "17:00"})
    assert recheck(sms(NEW_YORK), lenient, NO_FACTS, now=NOON) == ALLOW
    verdict = recheck(sms(NEW_YORK), narrow, CONSENTED, now=NOON)
    assert isinstance(verdict, Defer)
    assert verdict.until == datetime(2025, 1, 15, 18, tzinfo=UTC)
