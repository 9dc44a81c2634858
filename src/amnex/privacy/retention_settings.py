"""Privacy: an account's retention settings, bounded by the operator's limits.

Stored in `accounts.settings["retention"]` and changed by an operator
(`PATCH /admin/v1/accounts/{id}/retention`); an account without them follows the operator's
settings. Every field is optional: `content_days` 0 purges delivered content at its final
status (the policy's default, §5); a longer period is kept only where the account agreed to
it. The operator's limits (`max_content_retention_days`, `max_metadata_retention_days`)
refuse a value above them, and cap a value stored before a limit was lowered:
`effective_retention` is what the purge applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from amnex.config import Settings


class RetentionSettings(BaseModel):
    """An account's own retention (null: the operator's setting)."""

    model_config = ConfigDict(extra="forbid")

    content_days: int = Field(
        default=0,
        ge=0,
        description="Days a delivered, rejected or canceled message keeps its content after "
        "its final status; 0 (the default) purges it at once. More only where the account "
        "agreed to it; at most the operator's `max_content_retention_days`.",
    )
    failed_content_hours: int | None = Field(
        default=None,
        ge=0,
        description="Hours a failed or undelivered message keeps its content; null: the "
        "operator's `failed_content_retention_s` (72 h).",
    )
    inbound_content_days: int | None = Field(
        default=None,
        ge=0,
        description="Days an inbound message keeps its text; null: the operator's "
        "`inbound_content_retention_s` (30 days).",
    )
    metadata_days: int | None = Field(
        default=None,
        ge=1,
        description="Days after creation a message in a final status is deleted; null: the "
        "operator's `metadata_retention_days` (365). At most `max_metadata_retention_days`.",
    )


@dataclass(frozen=True, slots=True)
class EffectiveRetention:
    """The periods the purge applies to one account (or to every account without settings)."""

    content: timedelta
    failed_content: timedelta
    inbound_content: timedelta
    metadata_days: int


def retention_of(account_settings: dict[str, Any]) -> RetentionSettings:
    """An account's retention settings from its row's `settings`."""
    return RetentionSettings.model_validate(account_settings.get("retention") or {})


def default_retention(settings: Settings) -> EffectiveRetention:
    """What an account without settings of its own gets: the operator's settings."""
    return EffectiveRetention(
        content=timedelta(0),
        failed_content=timedelta(seconds=settings.failed_content_retention_s),
        inbound_content=timedelta(seconds=settings.inbound_content_retention_s),
        metadata_days=settings.metadata_retention_days,
    )


def effective_retention(retention: RetentionSettings, settings: Settings) -> EffectiveRetention:
    """The account's periods: its values where it has them, else the operator's, each within
    the operator's current limits (a limit lowered later caps a value stored before)."""
    base = default_retention(settings)
    content_cap = timedelta(days=settings.max_content_retention_days)

    def capped(value: timedelta | None, default: timedelta) -> timedelta:
        return default if value is None else min(value, content_cap)

    hours = retention.failed_content_hours
    inbound = retention.inbound_content_days
    metadata = retention.metadata_days
    return EffectiveRetention(
        content=min(timedelta(days=retention.content_days), content_cap),
        failed_content=capped(
            None if hours is None else timedelta(hours=hours), base.failed_content
        ),
        inbound_content=capped(
            None if inbound is None else timedelta(days=inbound), base.inbound_content
        ),
        metadata_days=base.metadata_days
        if metadata is None
        else min(metadata, settings.max_metadata_retention_days),
    )


def limit_errors(
    retention: RetentionSettings, settings: Settings, fields: set[str]
) -> list[dict[str, Any]]:
    """The given fields of `retention` that exceed the operator's limits, as validation errors
    (pydantic's shape, `loc` the field). Only the fields being changed are checked: a value
    stored before a limit was lowered is kept, and capped by `effective_retention`."""
    content_limit = settings.max_content_retention_days
    metadata_limit = settings.max_metadata_retention_days
    checks: dict[str, tuple[float | None, int, str, str]] = {
        "content_days": (
            retention.content_days,
            content_limit,
            f"{content_limit} days",
            "max_content_retention_days",
        ),
        "failed_content_hours": (
            retention.failed_content_hours,
            content_limit * 24,
            f"{content_limit * 24} hours",
            "max_content_retention_days",
        ),
        "inbound_content_days": (
            retention.inbound_content_days,
            content_limit,
            f"{content_limit} days",
            "max_content_retention_days",
        ),
        "metadata_days": (
            retention.metadata_days,
            metadata_limit,
            f"{metadata_limit} days",
            "max_metadata_retention_days",
        ),
    }
    errors = []
    for name in sorted(fields & checks.keys()):
        value, limit, shown, setting = checks[name]
        if value is not None and value > limit:
            errors.append(
                {
                    "type": "less_than_equal",
                    "loc": (name,),
                    "msg": f"{name}: at most {shown} (the operator's {setting})",
                    "input": value,
                    "ctx": {"le": limit},
                }
            )
    return errors


class RetentionPeriods(BaseModel):
    """Retention periods in the units of the settings."""

    content_days: float
    failed_content_hours: float
    inbound_content_days: float
    metadata_days: int


class RetentionLimits(BaseModel):
    max_content_retention_days: int = Field(
        description="No content period may exceed this (failed content: this many days in hours)."
    )
    max_metadata_retention_days: int


class RetentionView(BaseModel):
    """An account's retention as it applies: what the purge uses, the account's own
    settings, the operator's defaults and the operator's limits."""

    effective: RetentionPeriods = Field(description="What the purge applies to the account.")
    account: RetentionSettings = Field(description="The account's own settings (null: default).")
    defaults: RetentionPeriods = Field(description="What an account without settings gets.")
    limits: RetentionLimits


def _periods(retention: EffectiveRetention) -> RetentionPeriods:
    return RetentionPeriods(
        content_days=retention.content / timedelta(days=1),
        failed_content_hours=retention.failed_content / timedelta(hours=1),
        inbound_content_days=retention.inbound_content / timedelta(days=1),
        metadata_days=retention.metadata_days,
    )


def retention_view(retention: RetentionSettings, settings: Settings) -> RetentionView:
    return RetentionView(
        effective=_periods(effective_retention(retention, settings)),
        account=retention,
        defaults=_periods(default_retention(settings)),
        limits=RetentionLimits(
            max_content_retention_days=settings.max_content_retention_days,
            max_metadata_retention_days=settings.max_metadata_retention_days,
        ),
    )
