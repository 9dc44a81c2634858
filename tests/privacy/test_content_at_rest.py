"""Privacy: content is encrypted at rest, purged at its final status, and unreadable once its
key is destroyed — checked in the database files themselves (policy §2c, §5, §8)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text, update

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.models import Message
from amnex.privacy.audit import AuditEntry
from amnex.privacy.content import (
    ContentKey,
    ContentKeyring,
    WrongMasterKey,
    installed,
    key_of,
)
from amnex.privacy.crypto import SecretBox, generate_key
from amnex.privacy.retention import PurgeRun, purge_once
from support import AccountHandle, eventually, on_disk, serve_api, serve_system

pytestmark = pytest.mark.asyncio


def marker() -> str:
    return f"secret-body-{secrets.token_hex(8)}"


def email(body: str, to: str = "reader@example.com") -> dict[str, str]:
    return {"channel": "email", "to": to, "subject": f"Subject {body}", "body": body}


async def raw_content(db: Database, message_id: str) -> tuple[str | None, str | None]:
    async with db.read_session() as session:
        row = (
            await session.execute(
                text("SELECT subject, body FROM messages WHERE id = :id"), {"id": message_id}
            )
        ).one()
    return row[0], row[1]


async def test_content_is_stored_encrypted_and_read_back_in_clear(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    body = marker()
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(body))
        read = await api.client.get(f"/v1/messages/{sent.json()['id']}", headers=account.headers)

    subject, stored = await raw_content(db, sent.json()["id"])
    assert sent.json()["body"] == body
    assert read.json()["body"] == body
    assert read.json()["subject"] == f"Subject {body}"
    assert stored is not None
    assert stored.startswith("amx1:ck_")
    assert body not in stored
    assert subject is not None
    assert body not in subject
    assert not await on_disk(db, body)


async def test_delivered_content_is_destroyed_at_delivery_and_never_reaches_the_disk(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    body = marker()
    async with serve_system(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(body))
        path = f"/v1/messages/{sent.json()['id']}"

        async def read() -> dict[str, Any]:
            got: dict[str, Any] = (await api.client.get(path, headers=account.headers)).json()
            return got

        # The write that makes the message delivered empties its content: no purge has run.
        delivered = await eventually(read, lambda m: m["status"] == "delivered")
        stored_at_delivery = await raw_content(db, sent.json()["id"])
        report = await purge_once(db, settings)

    assert delivered["body"] is None
    assert delivered["subject"] is None
    assert delivered["content_purged_at"] == delivered["delivered_at"]
    assert stored_at_delivery == (None, None)
    assert not await on_disk(db, body)
    # The purge, which covers what reaches a final status any other way, finds nothing left.
    assert report.counts["content"] == 0
    async with db.read_session() as session:
        runs = list(await session.scalars(select(PurgeRun)))
    assert runs
    assert runs[-1].counts["content"] == 0


async def test_failed_content_is_kept_for_the_retry_window_then_purged(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(marker()))
    message_id = sent.json()["id"]
    failed_at = utc_now()
    async with db.unit_of_work() as session:
        await session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(status="failed", updated_at=failed_at, failed_at=failed_at)
        )

    within = await purge_once(db, settings, now=failed_at + timedelta(hours=71))
    kept = await raw_content(db, message_id)
    after = await purge_once(db, settings, now=failed_at + timedelta(hours=73))

    assert within.counts["content"] == 0
    assert kept[1] is not None
    assert after.counts["content"] == 1
    assert await raw_content(db, message_id) == (None, None)


async def test_a_spent_key_is_destroyed_and_a_stale_copy_no_longer_opens(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    quick = settings.model_copy(update={"content_key_period_s": 60})
    async with serve_api(quick, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(marker()))
        message_id = sent.json()["id"]
        _, stale = await raw_content(db, message_id)  # what a backup taken now would hold
        assert stale is not None
        key_id = key_of(stale)
        ring = installed()
        assert ring is not None
        later = utc_now() + timedelta(minutes=5)

        # While the message holds content under it, the key lives
        kept = await purge_once(db, quick, now=later)
        async with db.unit_of_work() as session:
            await session.execute(
                update(Message).where(Message.id == message_id).values(status="delivered")
            )
        spent = await purge_once(db, quick, now=later)
        async with db.read_session() as session:
            row = await session.get(ContentKey, key_id)

        assert key_id not in kept.destroyed_keys
        assert key_id in spent.destroyed_keys
        assert row is not None
        assert row.wrapped is None
        assert row.destroyed_at is not None
        assert ring.decrypt(stale, "body") is None  # the copy is noise now
    async with db.read_session() as session:
        key_events = {
            (entry.action, entry.target_id)
            for entry in await session.scalars(
                select(AuditEntry).where(AuditEntry.target_type == "content_key")
            )
        }
    assert ("content_key.create", key_id) in key_events  # every key operation is audited
    assert ("content_key.destroy", key_id) in key_events


@pytest.mark.no_master_key
async def test_without_a_master_key_content_is_stored_as_it_is(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    plain = settings.model_copy(update={"master_key": None})
    body = marker()
    async with serve_api(plain, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(body))
    assert (await raw_content(db, sent.json()["id"]))[1] == body


async def test_a_dry_run_counts_and_changes_nothing(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(marker()))
    async with db.unit_of_work() as session:
        await session.execute(
            update(Message).where(Message.id == sent.json()["id"]).values(status="delivered")
        )

    dry = await purge_once(db, settings, dry_run=True)

    assert dry.counts["content"] == 1
    assert (await raw_content(db, sent.json()["id"]))[1] is not None
    async with db.read_session() as session:
        assert list(await session.scalars(select(PurgeRun))) == []


async def test_metadata_past_its_retention_is_deleted_with_its_events(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(marker()))
    message_id = sent.json()["id"]
    async with db.unit_of_work() as session:
        await session.execute(
            update(Message).where(Message.id == message_id).values(status="delivered")
        )

    young = await purge_once(db, settings, now=utc_now() + timedelta(days=364))
    old = await purge_once(db, settings, now=utc_now() + timedelta(days=366))

    assert young.counts["metadata"] == 0
    assert old.counts["metadata"] == 1
    async with db.read_session() as session:
        left = (
            await session.execute(
                text("SELECT count(*) FROM message_events WHERE message_id = :id"),
                {"id": message_id},
            )
        ).scalar()
        assert await session.get(Message, message_id) is None
    assert left == 0


async def test_a_wrong_master_key_is_refused_before_anything_is_written(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:  # sets up the content keys with the suite key
        await api.client.get("/healthz")
    wrong = settings.model_copy(update={"master_key": SecretStr(generate_key())})

    with pytest.raises(WrongMasterKey, match="do not open with this master key"):
        await ContentKeyring.start(db, SecretBox.from_settings(wrong), period_s=86_400)
    assert installed() is None
