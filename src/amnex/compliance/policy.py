"""Compliance: an account's compliance settings, with the defaults a new account gets.

Stored in `accounts.settings["compliance"]` and changed by an operator
(`PATCH /admin/v1/accounts/{id}/compliance`). Every field has a default that keeps a new
account within the rules: marketing needs consent, marketing SMS keep to the recipient's
legal hours, a first marketing SMS names the brand and says how to opt out, messages go to
the account's home country only, and public link shorteners are flagged.
`AccountCompliance` is the resolved form the gate reads, built once per API key context
and per worker cache entry, so no message parses settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import time
from typing import Any, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from amnex.compliance.content import PHISHING, US_CATEGORIES, ContentPolicy

# Destinations where US carrier content rules (SHAFT-C) apply; elsewhere phishing only.
_SHAFT_COUNTRIES = frozenset({"US", "CA", "PR", "VI", "GU", "AS", "MP"})


class MarketingHours(BaseModel):
    """The account's own marketing hours, local to the recipient; only ever narrows the law."""

    model_config = ConfigDict(extra="forbid")

    start: time = Field(description="Local time from which marketing may go, e.g. 09:00.")
    end: time = Field(description="Local time until which marketing may go, e.g. 20:00.")

    @model_validator(mode="after")
    def _ordered(self) -> MarketingHours:
        if self.end <= self.start:
            raise ValueError("marketing_hours: end must be after start (same day)")
        return self


class ComplianceSettings(BaseModel):
    """An account's compliance settings (every field optional; defaults are compliant)."""

    model_config = ConfigDict(extra="forbid")

    allowed_countries: list[str] | None = Field(
        default=None,
        description="ISO 3166 codes the account may send SMS to (001: international networks "
        "such as +800 and +881, if the operator does not block them); null means its home country.",
    )
    allow_landline_sms: bool = Field(
        default=False, description="Send SMS to numbers typed as landlines (text-to-landline)."
    )
    require_marketing_consent: bool = Field(
        default=True, description="Reject marketing without a live consent in the ledger."
    )
    marketing_hours: MarketingHours | None = Field(
        default=None, description="Stricter local hours for marketing than the law's."
    )
    link_shorteners: Literal["allow", "flag", "block"] = "flag"
    extra_shorteners: list[str] = Field(default_factory=list, max_length=100)
    brand_name: str | None = Field(
        default=None, max_length=60, description="The name a marketing SMS must carry."
    )
    require_opt_out_language: bool = Field(
        default=True,
        description="A first marketing SMS to a number must name the brand and say how to opt out.",
    )
    postal_address: str | None = Field(default=None, max_length=300)
    postal_address_pattern: str | None = Field(default=None, max_length=300)
    opt_out_keywords: list[str] = Field(default_factory=list, max_length=50)
    opt_in_keywords: list[str] = Field(default_factory=list, max_length=50)
    help_keywords: list[str] = Field(default_factory=list, max_length=50)
    opt_out_reply: str | None = Field(default=None, max_length=320)
    opt_in_reply: str | None = Field(default=None, max_length=320)
    help_reply: str | None = Field(default=None, max_length=320)
    help_contact: str | None = Field(default=None, max_length=120)
    daily_cap: int | None = Field(
        default=None, ge=1, description="Messages the account may send per UTC day."
    )
    prefix_velocity_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Messages per minute to one destination prefix (country code + 3 digits).",
    )

    @field_validator("allowed_countries")
    @classmethod
    def _countries(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        # "001": phonenumbers' region for international networks (+800, +881, ...).
        known = phonenumbers.SUPPORTED_REGIONS | {"001"}
        out = []
        for code in value:
            upper = code.strip().upper()
            if upper not in known:
                raise ValueError(f"allowed_countries: {code!r} is not an ISO 3166 country code")
            out.append(upper)
        return sorted(set(out))

    @field_validator("postal_address_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"postal_address_pattern: not a regular expression ({exc})"
                ) from None
        return value


@dataclass(frozen=True, slots=True)
class AccountCompliance:
    """What the gate needs to know about one account, resolved once."""

    account_id: str
    home_country: str
    brand: str
    settings: ComplianceSettings = field(default_factory=ComplianceSettings)
    # The two content policies (US carrier rules or not), built on first use.
    _policies: dict[bool, ContentPolicy] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def allowed_countries(self) -> frozenset[str]:
        listed = self.settings.allowed_countries
        return frozenset(listed) if listed is not None else frozenset({self.home_country})

    @property
    def marketing_window(self) -> tuple[time, time] | None:
        hours = self.settings.marketing_hours
        return None if hours is None else (hours.start, hours.end)

    def content_policy(self, destination_country: str | None) -> ContentPolicy:
        """The content rules for a message of this account to that country (built once)."""
        shaft = destination_country in _SHAFT_COUNTRIES
        policy = self._policies.get(shaft)
        if policy is None:
            s = self.settings
            policy = ContentPolicy(
                brand=s.brand_name or self.brand,
                forbidden_categories=US_CATEGORIES if shaft else frozenset({PHISHING}),
                shortener_policy=s.link_shorteners,
                extra_shorteners=frozenset(d.lower() for d in s.extra_shorteners),
                require_opt_out_on_first_contact=s.require_opt_out_language,
                postal_address=s.postal_address,
                postal_address_pattern=s.postal_address_pattern,
            )
            self._policies[shaft] = policy
        return policy


def account_compliance(
    account_id: str, *, country: str, business_name: str, settings: dict[str, Any]
) -> AccountCompliance:
    """The resolved compliance of an account from its row's fields."""
    return AccountCompliance(
        account_id=account_id,
        home_country=country.upper(),
        brand=business_name,
        settings=ComplianceSettings.model_validate(settings.get("compliance") or {}),
    )
