"""Privacy: `rotate_master` re-wraps content keys, data keys and carrier passwords under a new
master key, once, without touching what it cannot open; unsubscribe links survive it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from amnex.carriers.models import Connector
from amnex.carriers.service import connector_password, create_connector
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.email.unsubscribe import UnsubscribeTokens
from amnex.privacy.audit import PLATFORM_CHAIN, AuditEntry
from amnex.privacy.content import ContentKey, ContentKeyring, WrongMasterKey
from amnex.privacy.crypto import SecretBox, generate_key, parse_key
from amnex.privacy.keys import AddressKeyring, DataKey, mark_unkeyed
from amnex.privacy.rotation import rotate_master
from support import AccountHandle

PERIOD_S = 86_400
PASSWORD = "pw-1234"  # SMPP allows 8 characters


def suite_key(settings: Settings) -> str:
    """The key the suite's database was set up with (its index and platform keys are under
    it): the "old" key of a rotation."""
    assert settings.master_key is not None
    return settings.master_key.get_secret_value()


def box(key: str, *previous: str) -> SecretBox:
    return SecretBox(parse_key(key), previous=[parse_key(p) for p in previous])


@asynccontextmanager
async def content_ring(db: Database, secret_box: SecretBox) -> AsyncIterator[ContentKeyring]:
    ring = await ContentKeyring.start(db, secret_box, period_s=PERIOD_S)
    try:
        yield ring
    finally:
        await ring.close()


@asynccontextmanager
async def address_ring(db: Database, secret_box: SecretBox) -> AsyncIterator[AddressKeyring]:
    # Loaded afresh with `secret_box` (not the keyring the suite's process installed).
    yield await AddressKeyring.opened(db, secret_box)


async def seed(db: Database, secret_box: SecretBox, account_id: str) -> tuple[str, str]:
    """Everything sealed under `secret_box`'s key: two content keys (this period and the
    next), the index key, two data keys, a connector's password. Returns the connector's id
    and a body encrypted under the current content key."""
    async with content_ring(db, secret_box) as ring:
        stored = ring.encrypt("hello from before the rotation", "body")
    async with address_ring(db, secret_box) as addresses:
        await addresses.prepare([account_id, None])
    async with db.unit_of_work() as session:
        connector = await create_connector(
            session,
            secret_box,
            name="Carrier A",
            config={"host": "smsc.example", "port": 2775, "system_id": "amnex"},
            password=PASSWORD,
            actor="system",
        )
    return connector.id, stored


async def wrapped_values(db: Database) -> dict[str, str | None]:
    async with db.read_session() as session:
        content = (await session.execute(select(ContentKey.id, ContentKey.wrapped))).all()
        data = (await session.execute(select(DataKey.id, DataKey.wrapped))).all()
        secrets = (await session.execute(select(Connector.id, Connector.secret))).all()
    return {row[0]: row[1] for row in (*content, *data, *secrets)}


async def rotations(db: Database) -> list[AuditEntry]:
    async with db.read_session() as session:
        return list(
            await session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == "master_key.rotate")
                .order_by(AuditEntry.seq)
            )
        )


@pytest.mark.asyncio
async def test_rotation_rewraps_every_key_and_secret_so_the_new_key_alone_opens_them(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given: a database set up under the old key
    old, new = suite_key(settings), generate_key()
    connector_id, stored = await seed(db, box(old), account.account_id)
    before = await wrapped_values(db)
    # ... and a process restarted with the new key and the old one as previous (step 2)
    async with content_ring(db, box(new, old)) as restarted:
        assert restarted.decrypt(stored, "body") == "hello from before the rotation"

    # When: the rotation runs, two rows per transaction
    report = await rotate_master(db, box(new, old), actor="cli:ops", chunk=2)

    # Then: every value was re-wrapped, and the new key alone opens them
    assert report.ok
    assert report.counts() == {
        "content_keys": {"rewrapped": 2, "current": 0, "changed": 0, "unreadable": 0},
        "data_keys": {"rewrapped": 3, "current": 0, "changed": 0, "unreadable": 0},
        "connectors": {"rewrapped": 1, "current": 0, "changed": 0, "unreadable": 0},
    }
    after = await wrapped_values(db)
    sealed = [key for key, value in before.items() if value is not None]
    assert len(sealed) == 6
    assert [key for key in sealed if after[key] == before[key]] == []
    async with content_ring(db, box(new)) as ring:
        # Content is under the same content keys: it was never re-encrypted.
        assert ring.decrypt(stored, "body") == "hello from before the rotation"
    addresses = await AddressKeyring.opened(db, box(new))
    await addresses.prepare([account.account_id], create=False)
    assert addresses.open(addresses.seal(account.account_id, "+13125550100")) == "+13125550100"
    async with db.read_session() as session:
        connector = await session.get(Connector, connector_id)
    assert connector is not None
    assert connector_password(box(new), connector) == PASSWORD
    # ... and a process left with only the old key refuses to start
    with pytest.raises(WrongMasterKey):
        await ContentKeyring.start(db, box(old), period_s=PERIOD_S)
    with pytest.raises(WrongMasterKey):
        await AddressKeyring.opened(db, box(old))
    # ... and the run is in the platform audit chain, counts and no keys
    (entry,) = await rotations(db)
    assert entry.chain == PLATFORM_CHAIN
    assert (entry.target_type, entry.target_id) == ("platform", "master_key")
    assert entry.detail["tables"] == report.counts()
    assert old not in str(entry.detail)
    assert new not in str(entry.detail)


@pytest.mark.asyncio
async def test_a_second_rotation_rewraps_nothing(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    old, new = suite_key(settings), generate_key()
    await seed(db, box(old), account.account_id)
    await rotate_master(db, box(new, old))
    rotated = await wrapped_values(db)

    again = await rotate_master(db, box(new, old), chunk=1)

    assert again.ok
    assert again.rewrapped == 0
    assert {table: counts["current"] for table, counts in again.counts().items()} == {
        "content_keys": 2,
        "data_keys": 3,
        "connectors": 1,
    }
    assert await wrapped_values(db) == rotated
    assert len(await rotations(db)) == 2


@pytest.mark.asyncio
async def test_a_dry_run_counts_what_is_due_and_changes_nothing(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    old, new = suite_key(settings), generate_key()
    await seed(db, box(old), account.account_id)
    before = await wrapped_values(db)

    report = await rotate_master(db, box(new, old), dry_run=True)

    assert report.dry_run
    assert {table: counts["rewrapped"] for table, counts in report.counts().items()} == {
        "content_keys": 2,
        "data_keys": 3,
        "connectors": 1,
    }
    assert await wrapped_values(db) == before
    assert await rotations(db) == []


@pytest.mark.asyncio
async def test_a_value_under_an_unknown_key_is_reported_and_left_as_it_is(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given: one connector sealed under a key the rotation is not given
    old, new, stranger = suite_key(settings), generate_key(), generate_key()
    connector_id, _ = await seed(db, box(old), account.account_id)
    async with db.unit_of_work() as session:
        connector = await session.get(Connector, connector_id)
        assert connector is not None
        connector.secret = box(stranger).seal(PASSWORD, context=f"connector:{connector_id}")
    before = await wrapped_values(db)

    report = await rotate_master(db, box(new, old))

    after = await wrapped_values(db)
    assert not report.ok
    assert report.tables[2].unreadable == [connector_id]
    assert report.counts()["connectors"] == {
        "rewrapped": 0,
        "current": 0,
        "changed": 0,
        "unreadable": 1,
    }
    assert after[connector_id] == before[connector_id]
    assert report.counts()["content_keys"]["rewrapped"] == 2
    (entry,) = await rotations(db)
    assert entry.detail["ok"] is False


@pytest.mark.asyncio
@pytest.mark.no_master_key
async def test_destroyed_keys_and_an_unkeyed_index_are_left_alone(db: Database) -> None:
    old, new = generate_key(), generate_key()
    await mark_unkeyed(db)
    async with content_ring(db, box(old)):
        pass
    async with db.unit_of_work() as session:
        spent = await session.get(ContentKey, min(await wrapped_values(db)))
        assert spent is not None
        spent.wrapped = None

    report = await rotate_master(db, box(new, old))

    assert report.ok
    assert report.counts()["content_keys"]["rewrapped"] == 1
    assert report.counts()["data_keys"] == {
        "rewrapped": 0,
        "current": 0,
        "changed": 0,
        "unreadable": 0,
    }
    values = await wrapped_values(db)
    assert values[spent.id] is None
    assert values["ik:platform"] == "unkeyed"


@pytest.mark.asyncio
async def test_rotation_without_a_master_key_is_refused(db: Database) -> None:
    from amnex.errors import MasterKeyMissing

    with pytest.raises(MasterKeyMissing):
        await rotate_master(db, SecretBox(None))


def test_unsubscribe_links_sent_before_a_rotation_keep_working_while_the_old_key_is_listed() -> (
    None
):
    old, new = generate_key(), generate_key()
    link = {"account_id": "acc_1", "address": "reader@example.com", "message_id": "msg_1"}

    def tokens(master_key: str, previous: str | None = None) -> UnsubscribeTokens:
        return UnsubscribeTokens.from_settings(
            Settings(
                master_key=SecretStr(master_key),
                master_key_file=None,
                unsubscribe_secret=None,
                previous_master_keys=None if previous is None else SecretStr(previous),
            )
        )

    sent_before = tokens(old).issue(**link)
    during = tokens(new, old)
    sent_after = during.issue(**link)

    claim = during.open(sent_before)
    assert claim is not None
    assert (claim.account_id, claim.address, claim.message_id) == (
        "acc_1",
        link["address"],
        "msg_1",
    )
    assert sent_after != sent_before
    assert tokens(new).open(sent_after) == claim
    assert tokens(new).open(sent_before) is None  # the old key removed: old links retire
    assert tokens(old).open(sent_after) is None
