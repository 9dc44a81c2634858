"""Privacy: each account's retention — content kept only as long as the account agreed,
metadata for its own period, both within the operator's limits (policy §5)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text, update

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.models import Message
from amnex.privacy.retention import purge_once
from amnex.privacy.retention_settings import (
    EffectiveRetention,
    RetentionSettings,
    effective_retention,
    limit_errors,
)
from support import AccountHandle, make_account, serve_api


async def send_and_settle(
    settings: Settings, db: Database, account: AccountHandle, status: str, at: datetime
) -> str:
    """A message of `account`, put in `status` at `at`; its id."""
    body = f"secret-body-{secrets.token_hex(8)}"
    message = {"channel": "email", "to": "reader@example.com", "subject": "Hi", "body": body}
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=message)
    assert sent.status_code == 201, sent.text
    message_id = str(sent.json()["id"])
    async with db.unit_of_work() as session:
        await session.execute(
            update(Message).where(Message.id == message_id).values(status=status, updated_at=at)
        )
    return message_id


async def stored_body(db: Database, message_id: str) -> str | None:
    """The row's raw body (ciphertext while kept); KeyError once the row is deleted."""
    async with db.read_session() as session:
        rows = (
            await session.execute(
                text("SELECT body FROM messages WHERE id = :id"), {"id": message_id}
            )
        ).all()
    if not rows:
        raise KeyError(message_id)
    body: str | None = rows[0][0]
    return body


async def exists(db: Database, message_id: str) -> bool:
    async with db.read_session() as session:
        return await session.get(Message, message_id) is not None


async def test_content_kept_for_the_days_the_account_agreed_and_at_once_for_others(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given an account that agreed to keep delivered content 7 days, and one with the default
    keeper = await make_account(db, name="Keeper", retention={"content_days": 7})
    delivered_at = utc_now()
    kept_id = await send_and_settle(settings, db, keeper, "delivered", delivered_at)
    default_id = await send_and_settle(settings, db, account, "delivered", delivered_at)

    # When the purge runs at once, on day 6 and on day 8
    at_once = await purge_once(db, settings, now=delivered_at + timedelta(minutes=1))
    default_after = await stored_body(db, default_id)
    kept_at_once = await stored_body(db, kept_id)
    day_6 = await purge_once(db, settings, now=delivered_at + timedelta(days=6))
    kept_day_6 = await stored_body(db, kept_id)
    day_8 = await purge_once(db, settings, now=delivered_at + timedelta(days=8))

    # Then the default account's content goes at once, the keeper's only after its 7 days
    assert at_once.counts["content"] == 1
    assert default_after is None
    assert kept_at_once is not None
    assert day_6.counts["content"] == 0
    assert kept_day_6 is not None
    assert day_8.counts["content"] == 1
    assert await stored_body(db, kept_id) is None


async def test_an_accounts_own_failed_window_applies_to_its_failed_content_only(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    brief = await make_account(db, name="Brief", retention={"failed_content_hours": 1})
    failed_at = utc_now()
    brief_id = await send_and_settle(settings, db, brief, "failed", failed_at)
    default_id = await send_and_settle(settings, db, account, "failed", failed_at)

    report = await purge_once(db, settings, now=failed_at + timedelta(hours=2))

    assert report.counts["content"] == 1
    assert await stored_body(db, brief_id) is None
    assert await stored_body(db, default_id) is not None  # the operator's 72 h


async def test_metadata_kept_for_the_accounts_days_while_the_default_keeps_its_365(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given an account keeping metadata 30 days, and one with the default (365)
    short = await make_account(db, name="Short", retention={"metadata_days": 30})
    now = utc_now()
    short_id = await send_and_settle(settings, db, short, "delivered", now)
    default_id = await send_and_settle(settings, db, account, "delivered", now)

    # When the purge runs on day 29 and on day 31
    day_29 = await purge_once(db, settings, now=now + timedelta(days=29))
    day_31 = await purge_once(db, settings, now=now + timedelta(days=31))

    # Then only the short account's message is deleted, and only after its 30 days
    assert day_29.counts["metadata"] == 0
    assert day_31.counts["metadata"] == 1
    assert not await exists(db, short_id)
    assert await exists(db, default_id)


async def test_a_lowered_limit_caps_a_value_the_account_already_has(
    settings: Settings, db: Database
) -> None:
    # Given an account whose 20 content days and 700 metadata days were within the limits
    long = await make_account(db, name="Long", retention={"content_days": 20, "metadata_days": 700})
    now = utc_now()
    message_id = await send_and_settle(settings, db, long, "delivered", now)

    # When the operator lowers the limits to 5 and 100 days
    lowered = settings.model_copy(
        update={"max_content_retention_days": 5, "max_metadata_retention_days": 100}
    )
    day_4 = await purge_once(db, lowered, now=now + timedelta(days=4))
    day_6 = await purge_once(db, lowered, now=now + timedelta(days=6))
    body_day_6 = await stored_body(db, message_id)
    day_99 = await purge_once(db, lowered, now=now + timedelta(days=99))
    day_101 = await purge_once(db, lowered, now=now + timedelta(days=101))

    # Then the purge applies the limits, not the account's longer values
    assert day_4.counts["content"] == 0
    assert day_6.counts["content"] == 1
    assert body_day_6 is None
    assert day_99.counts["metadata"] == 0
    assert day_101.counts["metadata"] == 1
    assert not await exists(db, message_id)


async def test_a_dry_run_counts_each_account_under_its_own_retention(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    keeper = await make_account(db, name="Keeper", retention={"content_days": 7})
    now = utc_now()
    await send_and_settle(settings, db, keeper, "delivered", now)
    await send_and_settle(settings, db, account, "delivered", now)

    day_1 = await purge_once(db, settings, now=now + timedelta(days=1), dry_run=True)
    day_8 = await purge_once(db, settings, now=now + timedelta(days=8), dry_run=True)

    assert day_1.counts["content"] == 1
    assert day_8.counts["content"] == 2


# The pure part: limits and the periods the purge applies.

LIMITS = Settings(
    database_url="sqlite+aiosqlite:///:memory:",
    max_content_retention_days=30,
    max_metadata_retention_days=730,
)


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        pytest.param({"content_days": 30}, [], id="content-at-the-limit"),
        pytest.param({"content_days": 31}, ["content_days"], id="content-above"),
        pytest.param({"failed_content_hours": 720}, [], id="failed-at-the-limit"),
        pytest.param({"failed_content_hours": 721}, ["failed_content_hours"], id="failed-above"),
        pytest.param({"inbound_content_days": 31}, ["inbound_content_days"], id="inbound-above"),
        pytest.param({"metadata_days": 730}, [], id="metadata-at-the-limit"),
        pytest.param({"metadata_days": 731}, ["metadata_days"], id="metadata-above"),
        pytest.param(
            {"content_days": 90, "metadata_days": 1000},
            ["content_days", "metadata_days"],
            id="both-above",
        ),
    ],
)
def test_values_above_the_operators_limits_are_refused_naming_field_and_limit(
    values: dict[str, Any], refused: list[str]
) -> None:
    errors = limit_errors(RetentionSettings.model_validate(values), LIMITS, set(values))

    assert [error["loc"] for error in errors] == [(name,) for name in refused]
    for error in errors:
        setting = (
            "max_metadata_retention_days"
            if error["loc"] == ("metadata_days",)
            else "max_content_retention_days"
        )
        assert setting in error["msg"]
        assert error["loc"][0] in error["msg"]


def test_only_the_fields_being_changed_are_checked_against_the_limits() -> None:
    stored = RetentionSettings(content_days=90, metadata_days=30)

    assert limit_errors(stored, LIMITS, {"metadata_days"}) == []


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(
            {},
            EffectiveRetention(timedelta(0), timedelta(hours=72), timedelta(days=30), 365),
            id="defaults-are-the-operators-settings",
        ),
        pytest.param(
            {"content_days": 7, "failed_content_hours": 1, "inbound_content_days": 2},
            EffectiveRetention(timedelta(days=7), timedelta(hours=1), timedelta(days=2), 365),
            id="own-values",
        ),
        pytest.param(
            {"content_days": 90, "inbound_content_days": 90, "metadata_days": 1000},
            EffectiveRetention(timedelta(days=30), timedelta(hours=72), timedelta(days=30), 730),
            id="capped-by-the-limits",
        ),
    ],
)
def test_effective_retention_takes_the_accounts_values_within_the_limits(
    values: dict[str, Any], expected: EffectiveRetention
) -> None:
    retention = RetentionSettings.model_validate(values)

    assert effective_retention(retention, LIMITS) == expected
