"""Compliance: geo permissions — may this account send to this destination's country or range?

Three checks, in this order, on an E.164 number the address rule has already validated:

1. **Blocked prefixes** (operator, platform-wide): the longest prefix of the number found in
   either the blocked or the exempt list decides. A blocked match rejects with
   `destination_blocked` naming the prefix; an exempt prefix (the operator's carve-out, e.g.
   `+8816` to reach Iridium phones while `+881` stays blocked) lets the number through to the
   next check. A prefix in both lists counts as exempt. `DEFAULT_BLOCKED_PREFIXES` are always
   part of a policy built with `GeoPolicy.from_settings`.
2. **Blocked countries** (operator, platform-wide; none by default — embargoes are the
   operator's legal call): rejects with `destination_blocked` naming the country.
3. **Allowed countries** (per account; the caller passes the set, by default the account's
   home country alone): a country outside it rejects with `destination_country_not_allowed`
   naming the country and the list.

Countries are ISO 3166-1 alpha-2 codes as phonenumbers assigns them, so territories are their
own countries (a Guernsey mobile is `GG`, Puerto Rico is `PR`). Numbers of no country
(international networks: +800, +870, +881, +882, +883, +979...) count as the country `001`,
phonenumbers' code for them: an account reaches them only if its list names `001`, and the
operator can block them all by blocking `001`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import phonenumbers

from amnex.compliance.number_type import NON_GEOGRAPHIC_REGION, phone_region
from amnex.compliance.verdict import (
    ALLOW,
    CODE_DESTINATION_BLOCKED,
    CODE_DESTINATION_COUNTRY_NOT_ALLOWED,
    RULE_GEO,
    Reject,
    Verdict,
)

# High-risk ranges blocked unless the operator exempts them. International Revenue Share Fraud
# (IRSF) pumps traffic to numbers whose termination fees are shared with the fraudster; the
# ranges it uses recur in the fraud reports operators publish (CFCA Global Fraud Loss Surveys,
# the GSMA fraud and security group's IRSF "hot destination" lists). The list is deliberately
# short: only ranges that carry almost no legitimate A2P traffic, so blocking them costs real
# senders nothing. National premium-rate ranges need no entry: the number-type rule rejects
# every number phonenumbers types PREMIUM_RATE. Codes are ITU-T E.164 assignments:
DEFAULT_BLOCKED_PREFIXES = frozenset(
    {
        "+870",  # Inmarsat single network access code (satellite; per-message fees)
        "+881",  # Global Mobile Satellite System (Iridium, Globalstar, ...)
        "+882",  # International Networks (shared code: satellite, maritime, IPRN resellers)
        "+883",  # International Networks (extension of +882)
        "+979",  # International Premium Rate Service
        "+246",  # Diego Garcia (British Indian Ocean Territory): no civilian subscribers
        "+247",  # Ascension Island
        "+672",  # Australian External Territories (Norfolk Island, Antarctic bases)
        "+674",  # Nauru
        "+683",  # Niue
        "+688",  # Tuvalu
        "+690",  # Tokelau
    }
)

_PREFIX = re.compile(r"\+[1-9][0-9]{0,14}")


def _entries(value: str | Iterable[str]) -> list[str]:
    """Items of a comma-separated setting (`"+881, +882"`) or of a list, stripped, non-empty."""
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def _checked_prefixes(prefixes: Iterable[str], *, what: str) -> frozenset[str]:
    checked = set()
    for prefix in prefixes:
        compact = prefix.replace(" ", "")
        if not _PREFIX.fullmatch(compact):
            raise ValueError(f"{what}: {prefix!r} is not an E.164 prefix like '+881'")
        checked.add(compact)
    return frozenset(checked)


def _checked_countries(countries: Iterable[str], *, what: str) -> frozenset[str]:
    checked = set()
    for country in countries:
        code = country.strip().upper()
        if code not in phonenumbers.SUPPORTED_REGIONS and code != NON_GEOGRAPHIC_REGION:
            raise ValueError(
                f"{what}: {country!r} is not an ISO 3166-1 alpha-2 country code (or 001)"
            )
        checked.add(code)
    return frozenset(checked)


@dataclass(frozen=True, slots=True)
class GeoPolicy:
    """The operator's platform-wide blocks. Built directly, its lists are used as given
    (defaults included only if passed); `from_settings` always adds the defaults."""

    blocked_countries: frozenset[str] = frozenset()
    blocked_prefixes: frozenset[str] = DEFAULT_BLOCKED_PREFIXES
    exempt_prefixes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Normalised once here, so the per-message check is a few set look-ups.
        countries = _checked_countries(self.blocked_countries, what="blocked countries")
        blocked = _checked_prefixes(self.blocked_prefixes, what="blocked prefixes")
        exempt = _checked_prefixes(self.exempt_prefixes, what="exempt prefixes")
        object.__setattr__(self, "blocked_countries", countries)
        object.__setattr__(self, "blocked_prefixes", blocked)
        object.__setattr__(self, "exempt_prefixes", exempt)

    @classmethod
    def from_settings(
        cls,
        *,
        blocked_countries: str | Iterable[str] = "",
        blocked_prefixes: str | Iterable[str] = "",
        exempt_prefixes: str | Iterable[str] = "",
    ) -> GeoPolicy:
        """A policy from settings values: comma-separated strings (`"+881,+882"`, `"KP,IR"`)
        or lists. The operator's blocked prefixes are added to `DEFAULT_BLOCKED_PREFIXES`;
        a default is lifted by listing it (or a longer prefix under it) as exempt.
        Raises ValueError naming a malformed prefix or unknown country code."""
        return cls(
            blocked_countries=frozenset(_entries(blocked_countries)),
            blocked_prefixes=DEFAULT_BLOCKED_PREFIXES | frozenset(_entries(blocked_prefixes)),
            exempt_prefixes=frozenset(_entries(exempt_prefixes)),
        )

    def blocking_prefix(self, number_e164: str) -> str | None:
        """The blocked prefix that decides for this number, or None (no match, or exempt)."""
        for length in range(len(number_e164), 1, -1):
            prefix = number_e164[:length]
            if prefix in self.exempt_prefixes:
                return None
            if prefix in self.blocked_prefixes:
                return prefix
        return None


DEFAULT_GEO_POLICY = GeoPolicy()


def check_geo(
    number_e164: str,
    allowed_countries: Collection[str],
    policy: GeoPolicy = DEFAULT_GEO_POLICY,
) -> Verdict:
    """Allow, or reject a destination the operator blocks or the account may not reach."""
    prefix = policy.blocking_prefix(number_e164)
    if prefix is not None:
        return Reject(
            CODE_DESTINATION_BLOCKED,
            RULE_GEO,
            f"{number_e164} is in {prefix}, a range blocked on this platform",
        )
    country = phone_region(number_e164)
    place = "no country" if country is None else country
    if country in policy.blocked_countries:
        return Reject(
            CODE_DESTINATION_BLOCKED,
            RULE_GEO,
            f"{number_e164} is in {place}, a country blocked on this platform",
        )
    allowed = {code.upper() for code in allowed_countries}
    if country not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        return Reject(
            CODE_DESTINATION_COUNTRY_NOT_ALLOWED,
            RULE_GEO,
            f"{number_e164} is in {place}; this account may send to: {listed}",
        )
    return ALLOW
