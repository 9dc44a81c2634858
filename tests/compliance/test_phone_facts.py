"""Phone facts: one parse answers what phonenumbers' own validity, type and region functions
would, for numbers of every kind, and the address rule still refuses invalid ones."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType

from amnex.compliance import addresses
from amnex.compliance.addresses import PhoneFacts, normalise_phone_number, phone_facts
from amnex.errors import InvalidAddress

M = PhoneNumberType.MOBILE
F = PhoneNumberType.FIXED_LINE
FM = PhoneNumberType.FIXED_LINE_OR_MOBILE
UNKNOWN = PhoneNumberType.UNKNOWN

# (number, valid, type, region) as phonenumbers answers them.
NUMBERS = [
    ("+14155552671", True, FM, "US"),
    ("+12015550123", True, FM, "US"),
    ("+15062345678", True, FM, "CA"),
    ("+17872345678", True, FM, "PR"),
    ("+18762101234", True, M, "JM"),  # Jamaica shares +1 with the US
    ("+18765230123", True, FM, "JM"),
    ("+12423591234", True, M, "BS"),  # Bahamas
    ("+12423456789", True, F, "BS"),
    ("+447400123456", True, M, "GB"),
    ("+441212345678", True, F, "GB"),
    ("+447781123456", True, M, "GG"),  # Guernsey: +44 7781, its own region
    ("+441481256789", True, F, "GG"),
    ("+4915123456789", True, M, "DE"),
    ("+4930123456", True, F, "DE"),
    ("+33612345678", True, M, "FR"),
    ("+33123456789", True, F, "FR"),
    ("+918123456789", True, M, "IN"),
    ("+8613123456789", True, M, "CN"),
    ("+861012345678", True, F, "CN"),
    ("+5511961234567", True, M, "BR"),
    ("+551123456789", True, F, "BR"),
    ("+61412345678", True, M, "AU"),
    ("+61212345678", True, F, "AU"),
    ("+819012345678", True, M, "JP"),
    ("+81312345678", True, F, "JP"),
    ("+881612345678", True, M, "001"),  # Iridium
    ("+80012345678", True, PhoneNumberType.TOLL_FREE, "001"),  # international freephone
    ("+870301234567", True, M, "001"),  # Inmarsat
    ("+979123456789", True, PhoneNumberType.PREMIUM_RATE, "001"),
    # Invalid: too short, an unassigned area code, a reserved range, wrong lengths.
    ("+1555", False, UNKNOWN, None),
    ("+11235551234", False, UNKNOWN, None),
    ("+15555550100", False, UNKNOWN, "US"),
    ("+4412", False, UNKNOWN, None),
    ("+44740012345678", False, UNKNOWN, None),
    ("+3361234567", False, UNKNOWN, None),
    ("+8001234", False, UNKNOWN, None),
]


def library(address: str) -> tuple[bool, int, str | None, str]:
    number = phonenumbers.parse(address, None)
    return (
        phonenumbers.is_valid_number(number),
        phonenumbers.number_type(number),
        phonenumbers.region_code_for_number(number),
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
    )


def ours(facts: PhoneFacts) -> tuple[bool, int, str | None, str]:
    return facts.valid, facts.type, facts.region, facts.e164


@pytest.mark.parametrize(("number", "valid", "kind", "region"), NUMBERS)
def test_phone_facts_agree_with_phonenumbers(
    number: str, valid: bool, kind: int, region: str | None
) -> None:
    facts = phone_facts(number)
    assert ours(facts) == library(number)
    # The table says what the library says, so a change in its metadata shows here too.
    assert facts.valid is valid
    if valid:
        assert (facts.type, facts.region) == (kind, region)
    else:
        assert facts.type == UNKNOWN


@settings(max_examples=3000)
@given(st.text(alphabet="0123456789", min_size=1, max_size=17).map(lambda d: "+" + d))
@example("+1")
@example("+0")
@example("+0123456789")
@example("+18765230123")
@example("+447781123456")
@example("+88161234567890")
@example("+3906698123456")  # Italian leading zero
@example("+3930000000000000")
def test_phone_facts_agree_with_phonenumbers_on_any_digits(address: str) -> None:
    try:
        expected = library(address)
    except phonenumbers.NumberParseException:
        with pytest.raises(InvalidAddress):
            phone_facts(address)
        return
    assert ours(phone_facts(address)) == expected


@pytest.mark.parametrize(
    "address",
    [
        "+1 (415) 555-2671",
        "+44 7781 123456",
        "+49 151 23456789",
        "+1-876-210-1234",
        "+33 6 12 34 56 78",
    ],
)
def test_formatted_numbers_give_the_facts_of_their_e164_form(address: str) -> None:
    facts = phone_facts(address)
    assert ours(facts) == library(address)
    assert ours(phone_facts(facts.e164)) == ours(facts)


@pytest.mark.parametrize("number", [n for n, *_ in NUMBERS])
def test_a_second_call_answers_the_same(number: str) -> None:
    first = phone_facts(number)
    second = phone_facts(number)
    assert second == first
    assert ours(second) == library(number)


def test_the_cache_answers_the_same_after_many_other_numbers() -> None:
    # Enough different numbers to fill the bounded cache and clear it several times.
    before = {number: ours(phone_facts(number)) for number, *_ in NUMBERS}
    for i in range(3 * addresses._PHONE_FACTS_MAX):
        phone_facts(f"+1415{i:07d}")
    after = {number: ours(phone_facts(number)) for number, *_ in NUMBERS}
    assert after == before


def test_the_cache_stays_bounded_however_many_numbers_pass() -> None:
    # One new recipient per send is the common case: memory must not grow with it (the soak's
    # RSS rule), and a process should not hold more recent numbers than it needs.
    for i in range(5 * addresses._PHONE_FACTS_MAX):
        phone_facts(f"+44 20 {i:08d}")  # not E.164 as written: kept under both forms
        assert len(addresses._PHONE_FACTS) <= addresses._PHONE_FACTS_MAX


@pytest.mark.parametrize(
    "address",
    ["+1555", "+11235551234", "+15555550100", "+4412", "+999123456789", "+", "4155552671", "+1abc"],
)
def test_normalise_phone_number_refuses_invalid_numbers(address: str) -> None:
    with pytest.raises(InvalidAddress) as raised:
        normalise_phone_number(address, field="to")
    assert raised.value.extra["field"] == "to"


@pytest.mark.parametrize(
    ("address", "e164"),
    [
        ("+1 (415) 555-2671", "+14155552671"),
        ("+44 7781 123456", "+447781123456"),
        ("+881612345678", "+881612345678"),
    ],
)
def test_normalise_phone_number_gives_e164_for_valid_numbers(address: str, e164: str) -> None:
    assert normalise_phone_number(address, field="to") == e164


def test_a_cached_number_with_an_extension_does_not_leak_into_its_e164_form() -> None:
    # The cache keeps an answer under the E.164 form too: that answer must be the E.164
    # number's own, not the extension-carrying number it was first parsed from.
    with_extension = phone_facts("+16175550123 ext. 5")
    plain = phone_facts(with_extension.e164)
    assert plain.e164 == "+16175550123"
    assert plain.number == phonenumbers.parse("+16175550123", None)
