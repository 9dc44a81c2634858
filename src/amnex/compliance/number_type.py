"""Compliance: may this kind of number receive SMS? Decided from phonenumbers' number type.

The address rule has already normalised the destination to a valid E.164 number; this rule
looks only at what kind of number it is:

    phonenumbers type       verdict
    MOBILE                  allow
    FIXED_LINE_OR_MOBILE    allow (every US and Canadian number is this type; DESIGN.md)
    PAGER, VOIP             allow (both receive text)
    TOLL_FREE               allow (toll-free SMS exists in the US and Canada; elsewhere the
                            carrier refuses it, which costs nothing)
    FIXED_LINE              reject `number_type_not_allowed`, unless the route allows
                            landlines (`allow_landline=True`: landline text-to-speech services)
    PREMIUM_RATE            reject `destination_blocked` (the recipient is billed, or the
                            range is a revenue-share fraud target)
    SHARED_COST, UAN,       reject `number_type_not_allowed`: service numbers that route calls
    PERSONAL_NUMBER,        elsewhere and cannot receive SMS; UK 070 "personal" numbers are a
    VOICEMAIL               classic fraud vehicle
    UNKNOWN                 reject `number_type_not_allowed`: phonenumbers answers UNKNOWN only
                            for a number it does not consider valid (a valid number always
                            matches one of its type patterns), so nothing the address rule
                            would refuse gets through here either

The detail of every rejection names the phonenumbers type, e.g. `FIXED_LINE`.
"""

from __future__ import annotations

from phonenumbers import PhoneNumber, PhoneNumberType

from amnex.compliance.addresses import PhoneFacts, phone_facts
from amnex.compliance.verdict import (
    ALLOW,
    CODE_DESTINATION_BLOCKED,
    CODE_NUMBER_TYPE_NOT_ALLOWED,
    RULE_NUMBER_TYPE,
    Reject,
    Verdict,
)
from amnex.errors import InvalidAddress

_SMS_CAPABLE = frozenset(
    {
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
        PhoneNumberType.PAGER,
        PhoneNumberType.VOIP,
        PhoneNumberType.TOLL_FREE,
    }
)
_TYPE_NAMES = {
    value: name
    for name, value in vars(PhoneNumberType).items()
    if name.isupper() and isinstance(value, int)
}
NON_GEOGRAPHIC_REGION = "001"
"""phonenumbers' region for numbers of no country (+800, +870, +881, +882, +883, +979...)."""


def parse_e164(number_e164: str) -> PhoneNumber:
    """The parsed number; raises InvalidAddress for a string that is not an E.164 number.

    The rules run after the address rule, so a failure here is a caller's mistake; it raises
    rather than answering a verdict so that it can never be mistaken for an allow.
    """
    return _facts(number_e164).number


def _facts(number_e164: str) -> PhoneFacts:
    if not number_e164.startswith("+"):
        raise InvalidAddress(f"to: {number_e164!r} is not an E.164 number", field="to")
    return phone_facts(number_e164)


def number_type_name(number_e164: str) -> str:
    """phonenumbers' name for the number's type: `MOBILE`, `FIXED_LINE`, `TOLL_FREE`..."""
    return _TYPE_NAMES[_facts(number_e164).type]


def phone_region(number_e164: str) -> str | None:
    """phonenumbers' region for the number (`"001"` for international networks), or None."""
    return _facts(number_e164).region


def region_for_number(number_e164: str) -> str | None:
    """The ISO 3166-1 alpha-2 country of an E.164 number, or None when it has none.

    None for numbers of international networks (+800, +870, +881, +882, +883, +979...) and for
    numbers phonenumbers cannot place. Crown dependencies and territories are their own
    countries, as in ISO 3166: +44 7781 is `GG` (Guernsey), not `GB`.
    """
    region = _facts(number_e164).region
    if region is None or region == NON_GEOGRAPHIC_REGION:
        return None
    return str(region)


def check_number_type(number_e164: str, *, allow_landline: bool = False) -> Verdict:
    """Allow, or reject a destination whose kind of number cannot or may not receive SMS."""
    number_type = _facts(number_e164).type
    name = _TYPE_NAMES[number_type]
    if number_type in _SMS_CAPABLE:
        return ALLOW
    if number_type == PhoneNumberType.FIXED_LINE:
        if allow_landline:
            return ALLOW
        return Reject(
            CODE_NUMBER_TYPE_NOT_ALLOWED,
            RULE_NUMBER_TYPE,
            f"{number_e164} is a landline ({name}); this route does not send SMS to landlines",
        )
    if number_type == PhoneNumberType.PREMIUM_RATE:
        return Reject(
            CODE_DESTINATION_BLOCKED,
            RULE_NUMBER_TYPE,
            f"{number_e164} is a premium-rate number ({name})",
        )
    if number_type == PhoneNumberType.UNKNOWN:
        return Reject(
            CODE_NUMBER_TYPE_NOT_ALLOWED,
            RULE_NUMBER_TYPE,
            f"{number_e164} is not a number phonenumbers recognises ({name})",
        )
    return Reject(
        CODE_NUMBER_TYPE_NOT_ALLOWED,
        RULE_NUMBER_TYPE,
        f"{number_e164} is a service number that cannot receive SMS ({name})",
    )


def destination_prefix(number_e164: str) -> str:
    """The country code and the first three national digits (`+1415`, `+4477`): the unit of
    the per-prefix velocity limit, narrow enough to catch a run through one range."""
    number = parse_e164(number_e164)
    return f"+{number.country_code}{str(number.national_number)[:3]}"
