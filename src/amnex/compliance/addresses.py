"""Compliance: recipient and sender addresses — validation and normalisation, no network.

Email addresses go through `email-validator` (without DNS: a look-up at accept time blocks
and fails offline). Its full check costs about 100 µs, most of the accept path's budget, so
the common shape — an ASCII dot-atom local part at an ASCII host name — is checked here by a
pattern that accepts only what the library accepts and normalises it the same way; anything
else (Unicode, Punycode, quoting, reserved names, oddities) goes to the library.
"""

from __future__ import annotations

import re

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

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


def normalise_phone_number(address: str, *, field: str) -> str:
    """An E.164 number (`+` and digits) that phonenumbers considers valid."""
    try:
        number = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidAddress(f"{field}: not an E.164 number ({exc})", field=field) from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidAddress(f"{field}: {address!r} is not a valid phone number", field=field)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
