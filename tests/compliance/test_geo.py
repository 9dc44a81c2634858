"""Geo: operator blocks by prefix (longest match) and country, then the account's countries."""

from __future__ import annotations

import re

import phonenumbers
import pytest

from amnex.compliance.geo import DEFAULT_BLOCKED_PREFIXES, GeoPolicy, check_geo
from amnex.compliance.verdict import ALLOW, RULE_GEO, Reject, Verdict

US_ONLY = frozenset({"US"})
EVERYWHERE = frozenset(phonenumbers.SUPPORTED_REGIONS) | {"001"}


def rejected(verdict: Verdict, code: str) -> Reject:
    assert isinstance(verdict, Reject)
    assert (verdict.code, verdict.rule) == (code, RULE_GEO)
    return verdict


@pytest.mark.parametrize(
    ("number", "prefix"),
    [
        ("+870301234567", "+870"),  # Inmarsat
        ("+881612345678", "+881"),  # Iridium
        ("+8823421234", "+882"),
        ("+883510012345", "+883"),
        ("+979123456789", "+979"),  # international premium rate
        ("+2463801234", "+246"),  # Diego Garcia
        ("+24740123", "+247"),  # Ascension
        ("+672381234", "+672"),  # Norfolk Island
        ("+6745551234", "+674"),  # Nauru
        ("+6838884012", "+683"),  # Niue
        ("+688901234", "+688"),  # Tuvalu
        ("+6907290", "+690"),  # Tokelau
    ],
)
def test_high_risk_ranges_are_blocked_by_default_whatever_the_account_allows(
    number: str, prefix: str
) -> None:
    verdict = rejected(check_geo(number, EVERYWHERE), "destination_blocked")
    assert f"in {prefix}," in verdict.detail


def test_every_default_prefix_is_an_assigned_country_code() -> None:
    for prefix in DEFAULT_BLOCKED_PREFIXES:
        assert phonenumbers.region_code_for_country_code(int(prefix[1:])) != "ZZ", prefix


@pytest.mark.parametrize(
    ("number", "allowed_countries", "expected"),
    [
        ("+14155552671", {"US"}, None),
        ("+14155552671", {"us", "ca"}, None),
        ("+16045551234", {"US", "CA"}, None),
        ("+80012345678", {"001"}, None),  # international freephone: no country, not blocked
        ("+16045551234", {"US"}, "+16045551234 is in CA; this account may send to: US"),
        ("+17875551234", {"US"}, "+17875551234 is in PR; this account may send to: US"),
        ("+447911123456", {"GB", "US"}, "+447911123456 is in GG; this account may send to: GB, US"),
        ("+80012345678", {"US"}, "+80012345678 is in 001; this account may send to: US"),
        ("+14155552671", set(), "+14155552671 is in US; this account may send to: none"),
    ],
)
def test_the_account_reaches_only_its_allowed_countries(
    number: str, allowed_countries: set[str], expected: str | None
) -> None:
    verdict = check_geo(number, allowed_countries)
    if expected is None:
        assert verdict == ALLOW
    else:
        assert rejected(verdict, "destination_country_not_allowed").detail == expected


@pytest.mark.parametrize(
    ("number", "decided_by"),
    [
        ("+447911123456", None),  # +4479 is exempt, longer than the blocked +447
        ("+447700900123", "+447"),
        ("+442079460958", "+44"),
        ("+881612345678", None),  # +8816 (Iridium) exempted from the default +881
        ("+881812345678", "+881"),
        ("+14155552671", None),
    ],
)
def test_the_longest_matching_prefix_decides(number: str, decided_by: str | None) -> None:
    policy = GeoPolicy.from_settings(
        blocked_prefixes="+44, +447", exempt_prefixes=["+4479", "+8816"]
    )
    verdict = check_geo(number, EVERYWHERE, policy)
    assert policy.blocking_prefix(number) == decided_by
    if decided_by is None:
        assert verdict == ALLOW
    else:
        assert f"in {decided_by}," in rejected(verdict, "destination_blocked").detail


def test_blocked_countries_reject_naming_the_country() -> None:
    policy = GeoPolicy.from_settings(blocked_countries="KP, ir")
    verdict = rejected(check_geo("+989123456789", EVERYWHERE, policy), "destination_blocked")
    assert verdict.detail == "+989123456789 is in IR, a country blocked on this platform"
    assert check_geo("+5351234567", EVERYWHERE, policy) == ALLOW


def test_an_operator_block_is_reported_before_the_account_limit() -> None:
    policy = GeoPolicy.from_settings(blocked_countries=["CU"])
    rejected(check_geo("+881612345678", US_ONLY), "destination_blocked")
    rejected(check_geo("+5351234567", US_ONLY, policy), "destination_blocked")


def test_settings_add_to_the_defaults_and_are_normalised() -> None:
    policy = GeoPolicy.from_settings(
        blocked_countries=" kp ,IR,", blocked_prefixes="+88 6, ,+999", exempt_prefixes=""
    )
    assert policy.blocked_countries == {"KP", "IR"}
    assert policy.blocked_prefixes == DEFAULT_BLOCKED_PREFIXES | {"+886", "+999"}
    assert policy.exempt_prefixes == frozenset()
    assert GeoPolicy() == GeoPolicy.from_settings()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("blocked_prefixes", "881", "'881' is not an E.164 prefix"),
        ("blocked_prefixes", "+0881", "'+0881' is not an E.164 prefix"),
        ("exempt_prefixes", "+88a", "'+88a' is not an E.164 prefix"),
        ("blocked_countries", "UK", "'UK' is not an ISO 3166-1 alpha-2 country code"),
        ("blocked_countries", "USA", "'USA' is not an ISO 3166-1 alpha-2 country code"),
    ],
)
def test_malformed_settings_are_refused_by_name(field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        GeoPolicy.from_settings(**{field: value})
