"""Number type: which kinds of number may receive SMS, and each destination's country."""

from __future__ import annotations

import pytest

from amnex.compliance.number_type import (
    check_number_type,
    number_type_name,
    parse_e164,
    region_for_number,
)
from amnex.compliance.verdict import ALLOW, RULE_NUMBER_TYPE, Reject
from amnex.errors import InvalidAddress

ALLOWED = [
    ("+14155552671", "FIXED_LINE_OR_MOBILE"),  # every US number has this type
    ("+16045551234", "FIXED_LINE_OR_MOBILE"),
    ("+447911123456", "MOBILE"),
    ("+4915123456789", "MOBILE"),
    ("+447640123456", "PAGER"),
    ("+445612345678", "VOIP"),
    ("+18002345678", "TOLL_FREE"),
]
REFUSED = [
    ("+4930123456", "FIXED_LINE", "number_type_not_allowed"),
    ("+442079460958", "FIXED_LINE", "number_type_not_allowed"),
    ("+19002345678", "PREMIUM_RATE", "destination_blocked"),
    ("+449012345678", "PREMIUM_RATE", "destination_blocked"),
    ("+447012345678", "PERSONAL_NUMBER", "number_type_not_allowed"),
    ("+445512345678", "UAN", "number_type_not_allowed"),
    ("+971700012345", "SHARED_COST", "number_type_not_allowed"),
    ("+41860123456789", "VOICEMAIL", "number_type_not_allowed"),
    ("+447700900123", "UNKNOWN", "number_type_not_allowed"),  # Ofcom drama range: not valid
]


@pytest.mark.parametrize(("number", "type_name"), ALLOWED)
def test_sms_capable_numbers_are_allowed(number: str, type_name: str) -> None:
    assert number_type_name(number) == type_name
    assert check_number_type(number) == ALLOW


@pytest.mark.parametrize(("number", "type_name", "code"), REFUSED)
def test_other_numbers_are_rejected_naming_their_type(
    number: str, type_name: str, code: str
) -> None:
    verdict = check_number_type(number)
    assert isinstance(verdict, Reject)
    assert (verdict.code, verdict.rule) == (code, RULE_NUMBER_TYPE)
    assert f"({type_name})" in verdict.detail
    assert number in verdict.detail


@pytest.mark.parametrize(
    ("number", "allow_landline", "allowed"),
    [
        ("+4930123456", True, True),
        ("+442079460958", True, True),
        ("+19002345678", True, False),  # premium rate stays blocked
        ("+447012345678", True, False),
    ],
)
def test_a_route_that_allows_landlines_allows_only_landlines_besides(
    number: str, allow_landline: bool, allowed: bool
) -> None:
    assert (check_number_type(number, allow_landline=allow_landline) == ALLOW) is allowed


@pytest.mark.parametrize(
    ("number", "region"),
    [
        ("+14155552671", "US"),
        ("+16045551234", "CA"),
        ("+17875551234", "PR"),
        ("+442079460958", "GB"),
        ("+447911123456", "GG"),
        ("+881612345678", None),
        ("+97912345678", None),
        ("+447700900123", None),
    ],
)
def test_the_region_of_a_number_is_its_iso_country_or_none(number: str, region: str | None) -> None:
    assert region_for_number(number) == region


@pytest.mark.parametrize("bad", ["4155552671", "+", "call me", "+1 call"])
def test_a_string_that_is_not_e164_raises_rather_than_passing(bad: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_e164(bad)
    with pytest.raises(InvalidAddress):
        check_number_type(bad)
