"""Addresses: the fast email path agrees with email-validator on everything it accepts."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from hypothesis import example, given, settings
from hypothesis import strategies as st

from amnex.compliance.addresses import (
    _fast_email,
    normalise_email_address,
    normalise_phone_number,
)
from amnex.errors import InvalidAddress


def library(address: str) -> str | None:
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


ODD = st.text(alphabet="aZ09.-_+@!#'`~ü", min_size=1, max_size=30)
ROLE = st.sampled_from(sorted(CASE_INSENSITIVE_MAILBOX_NAMES)).map(
    lambda name: name.upper() + "@Example.COM"
)


@settings(max_examples=3000)
@given(st.one_of(st.emails(), ODD, ROLE, st.emails().map(lambda e: e.upper())))
@example("a@ab--cd.com")
@example("NEWS@Shop.Example")
@example("PostMaster@example.com")
@example("a@foo.test")
@example("a..b@example.com")
@example("a@example.123")
@example("x" * 65 + "@example.com")
def test_the_fast_path_accepts_only_what_the_library_accepts_and_normalises_alike(
    address: str,
) -> None:
    fast = _fast_email(address)
    if fast is not None:
        assert fast == library(address)


@pytest.mark.parametrize(
    ("given_address", "normalised"),
    [
        ("Alex.Doe+tag@Example.COM", "Alex.Doe+tag@example.com"),
        ("a@xn--bcher-kva.ch", "a@bücher.ch"),
        ("ü@bücher.ch", "ü@bücher.ch"),
    ],
)
def test_email_addresses_are_normalised(given_address: str, normalised: str) -> None:
    assert normalise_email_address(given_address, field="to") == normalised


@pytest.mark.parametrize(
    "bad", ["plain", "a@b", "a@localhost", "a@foo.test", "a b@example.com", "@example.com"]
)
def test_invalid_email_addresses_are_refused_with_the_field(bad: str) -> None:
    with pytest.raises(InvalidAddress) as caught:
        normalise_email_address(bad, field="to")
    assert caught.value.detail.startswith("to: ")


@pytest.mark.parametrize(
    ("given_number", "e164"),
    [("+1 (312) 555-0199", "+13125550199"), ("+442079460958", "+442079460958")],
)
def test_phone_numbers_are_e164(given_number: str, e164: str) -> None:
    assert normalise_phone_number(given_number, field="to") == e164


@pytest.mark.parametrize("bad", ["3125550199", "+1555", "call me"])
def test_invalid_phone_numbers_are_refused(bad: str) -> None:
    with pytest.raises(InvalidAddress):
        normalise_phone_number(bad, field="to")
