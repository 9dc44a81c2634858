"""Compliance: recipient and sender addresses — validation and normalisation, no network.

Email addresses go through `email-validator` (without DNS: a look-up at accept time blocks
and fails offline). Its full check costs about 100 µs, most of the accept path's budget, so
the common shape — an ASCII dot-atom local part at an ASCII host name — is checked here by a
pattern that accepts only what the library accepts and normalises it the same way; anything
else (Unicode, Punycode, quoting, reserved names, oddities) goes to the library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from phonenumbers import PhoneMetadata, PhoneNumberType
from phonenumbers.phonenumberutil import (
    _number_type_helper,
    country_code_for_valid_region,
    national_significant_number,
)

from amnex.errors import InvalidAddress

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TLD = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_COMMON_EMAIL = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@((?:{_LABEL}\.)+{_TLD})")
_RESERVED = frozenset(SPECIAL_USE_DOMAIN_NAMES)
_CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


def _fast_email(address: str) -> str | None:
    """The normalised address when it has the common shape, else None (ask the library)."""
    match = _COMMON_EMAIL.fullmatch(address)
    if match is None:
        return None
    local, domain = match.groups()
    if len(local) > 64 or len(address) > 254 or "--" in domain:
        return None  # length limits and IDNA rules: the library words the error
    domain = domain.lower()
    if domain.rpartition(".")[2] in _RESERVED or domain in _RESERVED:
        return None
    if local.lower() in _CASE_INSENSITIVE:
        local = local.lower()  # RFC 2142 role mailboxes (postmaster, abuse, news, ...)
    return f"{local}@{domain}"


def normalise_email_address(address: str, *, field: str) -> str:
    """A deliverable-looking email address, normalised (domain lower-cased, IDNA decoded)."""
    fast = _fast_email(address)
    if fast is not None:
        return fast
    try:
        result = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{field}: {exc}", field=field) from exc
    return result.normalized


@dataclass(frozen=True, slots=True)
class PhoneFacts:
    """What phonenumbers says about a number, worked out once: the address rule, the
    number-type and geo rules and quiet hours all read it."""

    e164: str
    number: phonenumbers.PhoneNumber
    region: str | None  # phonenumbers' region ("001" for international networks), or None
    type: int  # a phonenumbers.PhoneNumberType; UNKNOWN for an invalid number
    valid: bool


_NON_GEO_REGION = "001"  # phonenumbers' region for international networks (+800, +881...)
_PHONE_FACTS: dict[str, PhoneFacts] = {}
# Big enough for every message in flight at once (the accept writer's batch of 256 and the
# requests behind it, a claim of 100 in a worker), which is where the same number is asked
# about again; small enough to stay a few MiB. At 65,536 the cache itself was the API
# process's memory growth in the first minutes of a soak (16 MiB, one new number per send),
# and it held that many recent recipients' numbers in memory.
_PHONE_FACTS_MAX = 4_096


def phone_facts(address: str, *, field: str = "to") -> PhoneFacts:
    """Parse and classify a number (E.164 or `+`-prefixed), or raise InvalidAddress.

    phonenumbers' own `is_valid_number`, `number_type` and `region_code_for_number` each
    find the number's region again, which for +1 means matching it against every NANP
    country's patterns: here that happens once per number, and the answer is kept (a small
    bounded cache, cleared when full) for the rules that ask next about the same message.
    """
    cached = _PHONE_FACTS.get(address)
    if cached is not None:
        return cached
    try:
        number = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidAddress(f"{field}: not an E.164 number ({exc})", field=field) from exc
    region = phonenumbers.region_code_for_number(number)
    metadata = (
        PhoneMetadata.metadata_for_region_or_calling_code(number.country_code or 0, region)
        if region is not None
        else None
    )
    kind = (
        _number_type_helper(national_significant_number(number), metadata)
        if metadata is not None
        else PhoneNumberType.UNKNOWN
    )
    valid = (
        region is not None
        and metadata is not None
        and (
            region == _NON_GEO_REGION
            or number.country_code == country_code_for_valid_region(region)
        )
        and kind != PhoneNumberType.UNKNOWN
    )
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    facts = PhoneFacts(e164=e164, number=number, region=region, type=kind, valid=valid)
    if len(_PHONE_FACTS) + 2 > _PHONE_FACTS_MAX:  # room for both keys below
        _PHONE_FACTS.clear()
    _PHONE_FACTS[address] = facts
    if not number.extension:  # the E.164 text parses to this very number only without one
        _PHONE_FACTS[e164] = facts
    return facts


def normalise_phone_number(address: str, *, field: str) -> str:
    """An E.164 number (`+` and digits) that phonenumbers considers valid."""
    facts = phone_facts(address, field=field)
    if not facts.valid:
        raise InvalidAddress(f"{field}: {address!r} is not a valid phone number", field=field)
    return facts.e164
