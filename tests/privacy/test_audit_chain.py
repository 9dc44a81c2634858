"""Privacy: the audit log is hash-chained per account and for the platform; tampering of any
kind is reported; personal fields live outside the chain and can be erased."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.engine import make_url

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.base import UTCDateTime
from amnex.db.engine import Database
from amnex.db.migrate import downgrade_database, upgrade_database
from amnex.errors import ValidationFailed
from amnex.privacy.audit import (
    GENESIS_HASH,
    PLATFORM_CHAIN,
    AuditChainReport,
    AuditEntry,
    AuditPersonal,
    audit_hash,
    delete_audit_personal,
    record_audit,
    record_disclosure,
    verify_audit_chain,
)
from support import AccountHandle, make_operator


async def verify(db: Database, chain: str) -> AuditChainReport:
    async with db.read_session() as session:
        return await verify_audit_chain(session, chain)


async def entries(db: Database, chain: str) -> list[AuditEntry]:
    async with db.read_session() as session:
        query = select(AuditEntry).where(AuditEntry.chain == chain).order_by(AuditEntry.seq)
        return list(await session.scalars(query))


async def read_five(db: Database, account_id: str) -> list[str]:
    """Five reads by an API key, each in its own transaction as the API writes them."""
    ids = []
    for i in range(5):
        async with db.unit_of_work() as session:
            entry = record_audit(
                session,
                actor="api_key:key_01KAAAAAAAAAAAAAAAAAAAAAAA",
                action="message.read",
                target_type="message",
                target_id=f"msg_{i}",
                account_id=account_id,
            )
        ids.append(entry.id)
    return ids


async def test_each_account_and_the_platform_have_a_chain_that_verifies(
    db: Database, account: AccountHandle
) -> None:
    # Given the account's creation (by make_account) and five reads on it
    await read_five(db, account.account_id)
    # And an operator action on the platform itself
    async with db.unit_of_work() as session:
        record_audit(
            session, actor="test", action="route.delete", target_type="route", target_id="rte_1"
        )

    # Then each chain numbers its entries 1, 2, 3, … and links each to the one before
    chain = await entries(db, account.account_id)
    assert [e.seq for e in chain] == list(range(1, len(chain) + 1))
    assert chain[0].action == "account.create"
    assert [e.action for e in chain[-5:]] == ["message.read"] * 5
    assert chain[0].prev_hash == GENESIS_HASH
    assert all(e.prev_hash == before.hash for before, e in pairwise(chain))
    # (the platform chain opens with the keys the keyring created when the process started)
    platform = await entries(db, PLATFORM_CHAIN)
    assert [(e.seq, e.action, e.target_id) for e in platform] == [
        (1, "data_key.create", "ik:platform"),
        (2, "data_key.create", "ak:platform"),
        (3, "route.delete", "rte_1"),
    ]
    report = await verify(db, account.account_id)
    assert report == AuditChainReport(True, len(chain), None, chain[-1].hash, None)
    assert (await verify(db, PLATFORM_CHAIN)).valid


async def test_a_chain_without_entries_is_valid_and_empty(db: Database) -> None:
    assert await verify(db, "acc_01KZZZZZZZZZZZZZZZZZZZZZZZ") == AuditChainReport(
        True, 0, None, None, None
    )


async def test_an_edited_entry_is_reported_as_the_first_broken(
    db: Database, account: AccountHandle
) -> None:
    ids = await read_five(db, account.account_id)
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_log SET target_id = 'msg_other' WHERE id = :id"), {"id": ids[2]}
        )

    report = await verify(db, account.account_id)

    assert not report.valid
    assert report.first_broken == ids[2]
    assert report.reason == f"{ids[2]}: its content does not match its hash"


async def test_an_edit_that_recomputes_its_hash_breaks_the_next_link(
    db: Database, account: AccountHandle
) -> None:
    ids = await read_five(db, account.account_id)
    async with db.read_session() as session:
        entry = await session.get(AuditEntry, ids[1])
    assert entry is not None
    forged = audit_hash(
        id=entry.id,
        chain=entry.chain,
        seq=entry.seq,
        prev_hash=entry.prev_hash,
        at=entry.at,
        actor_kind=entry.actor_kind,
        actor_id=entry.actor_id,
        action="message.list",
        target_type=entry.target_type,
        target_id=entry.target_id,
        account_id=entry.account_id,
        reason=None,
        legal_basis=None,
        detail={},
    )
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_log SET action = 'message.list', hash = :h WHERE id = :id"),
            {"h": forged, "id": ids[1]},
        )

    report = await verify(db, account.account_id)

    assert report.first_broken == ids[2]
    assert report.reason == f"{ids[2]}: prev_hash is not the hash of the entry before it"


async def test_a_removed_entry_is_reported_at_the_entry_after_it(
    db: Database, account: AccountHandle
) -> None:
    ids = await read_five(db, account.account_id)
    async with db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE id = :id"), {"id": ids[1]})

    report = await verify(db, account.account_id)

    assert report.first_broken == ids[2]
    assert report.reason is not None
    assert "is missing before it" in report.reason


async def test_entries_cut_from_the_end_are_caught_by_the_chain_head(
    db: Database, account: AccountHandle
) -> None:
    ids = await read_five(db, account.account_id)
    async with db.engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM audit_log WHERE id IN (:a, :b)"), {"a": ids[3], "b": ids[4]}
        )

    report = await verify(db, account.account_id)

    assert not report.valid
    assert report.first_broken is None
    assert report.reason is not None
    assert "removed from its end" in report.reason


async def test_an_inserted_entry_is_reported(db: Database, account: AccountHandle) -> None:
    ids = await read_five(db, account.account_id)
    chain = await entries(db, account.account_id)
    last = chain[-1]
    forged_row = {
        "id": "aud_forged",
        "chain": account.account_id,
        "seq": last.seq + 1,
        "at": utc_now(),
        "actor_kind": "test",
        "action": "message.read",
        "target_type": "message",
        "target_id": "msg_x",
        "prev_hash": last.hash,
    }
    insert = text(
        "INSERT INTO audit_log (id, chain, seq, at, actor_kind, action, target_type, target_id,"
        " detail, prev_hash, hash) VALUES (:id, :chain, :seq, :at, :actor_kind, :action,"
        " :target_type, :target_id, '{}', :prev_hash, :hash)"
    ).bindparams(bindparam("at", type_=UTCDateTime()))
    # Given a forged entry appended with a made-up hash
    async with db.unit_of_work() as session:
        await session.execute(insert, {**forged_row, "hash": "f" * 64})
    # Then it is the first broken entry
    report = await verify(db, account.account_id)
    assert report.first_broken == "aud_forged"
    assert ids[-1] == last.id

    # Given a forger who computes the hash right: the chain head still says where it ends
    right = audit_hash(
        id="aud_forged",
        chain=account.account_id,
        seq=last.seq + 1,
        prev_hash=last.hash,
        at=forged_row["at"],  # type: ignore[arg-type]
        actor_kind="test",
        actor_id=None,
        action="message.read",
        target_type="message",
        target_id="msg_x",
        account_id=None,
        reason=None,
        legal_basis=None,
        detail={},
    )
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_log SET hash = :h WHERE id = 'aud_forged'"), {"h": right}
        )
    report = await verify(db, account.account_id)
    assert not report.valid
    assert report.reason is not None
    assert "the chain head records" in report.reason


async def test_personal_fields_are_kept_apart_and_erasing_them_keeps_the_chain_valid(
    db: Database, account: AccountHandle
) -> None:
    # Given an operator who reads an account with an address filter
    await make_operator(db, name="Dana Ops")
    async with db.unit_of_work() as session:
        entry = record_audit(
            session,
            actor="operator:Dana Ops",
            action="opt_out.list",
            target_type="opt_out",
            target_id="*",
            account_id=account.account_id,
            detail={"count": 1, "address": "+13125550199"},
            personal=("address",),
            reason="ticket 12",
        )
    async with db.read_session() as session:
        stored = await session.get(AuditEntry, entry.id)
        personal = await session.get(AuditPersonal, entry.id)
        operator_id = await session.scalar(text("SELECT id FROM operators WHERE name = 'Dana Ops'"))
    # Then the chain hashes the operator's id, and the name and address are stored apart
    assert stored is not None
    assert personal is not None
    assert (stored.actor_kind, stored.actor_id) == ("operator", operator_id)
    assert stored.actor == "operator:Dana Ops"
    assert stored.detail == {"count": 1}
    assert stored.reason == "ticket 12"
    assert (personal.actor, personal.detail) == ("operator:Dana Ops", {"address": "+13125550199"})

    # When personal fields are changed behind Amnex's back, the chain does not notice: not hashed
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE audit_personal SET actor = 'operator:someone else'"))
    assert (await verify(db, account.account_id)).valid

    # When they are erased (retention, or a subject's erasure)
    async with db.unit_of_work() as session:
        erased = await delete_audit_personal(session, entry_ids=[entry.id])
    # Then the chain still verifies and the entry names the operator by id only
    assert erased == 1
    assert (await verify(db, account.account_id)).valid
    async with db.read_session() as session:
        after = await session.get(AuditEntry, entry.id, populate_existing=True)
        left = await session.scalar(select(func.count()).select_from(AuditPersonal))
    assert after is not None
    assert after.actor == f"operator:{operator_id}"
    assert left == 0


async def test_retention_erases_personal_fields_older_than_a_time(
    db: Database, account: AccountHandle
) -> None:
    async with db.unit_of_work() as session:
        old = record_audit(
            session,
            actor="cli:dana",
            action="account.read",
            target_type="account",
            target_id=account.account_id,
        )
        old.at = utc_now() - timedelta(days=400)
    async with db.unit_of_work() as session:
        new = record_audit(
            session,
            actor="cli:dana",
            action="account.read",
            target_type="account",
            target_id=account.account_id,
        )

    async with db.unit_of_work() as session:
        erased = await delete_audit_personal(session, before=utc_now() - timedelta(days=365))

    assert erased == 1
    async with db.read_session() as session:
        kept = list(await session.scalars(select(AuditPersonal.entry_id)))
    assert kept == [new.id]
    assert old.id != new.id
    assert (await verify(db, account.account_id)).valid


async def test_concurrent_appends_to_one_chain_keep_one_chain(
    db: Database, account: AccountHandle
) -> None:
    # Twenty transactions at once (on PostgreSQL truly concurrent, queued on the head row)
    async def append(i: int) -> None:
        async with db.unit_of_work() as session:
            record_audit(
                session,
                actor="api_key:key_01KAAAAAAAAAAAAAAAAAAAAAAA",
                action="message.read",
                target_type="message",
                target_id=f"msg_{i}",
                account_id=account.account_id,
            )

    before = len(await entries(db, account.account_id))
    await asyncio.gather(*(append(i) for i in range(20)))

    chain = await entries(db, account.account_id)
    assert [e.seq for e in chain] == list(range(1, before + 21))
    report = await verify(db, account.account_id)
    assert report.valid
    assert report.entries == before + 20


async def test_one_transaction_can_append_to_two_chains(
    db: Database, account: AccountHandle
) -> None:
    async with db.unit_of_work() as session:
        record_audit(session, actor="test", action="a.one", target_type="x", target_id="1")
        record_audit(
            session,
            actor="test",
            action="a.two",
            target_type="x",
            target_id="2",
            account_id=account.account_id,
        )
        record_audit(session, actor="test", action="a.three", target_type="x", target_id="3")

    platform = await entries(db, PLATFORM_CHAIN)
    assert [(e.seq, e.action) for e in platform][-2:] == [(3, "a.one"), (4, "a.three")]
    assert (await verify(db, PLATFORM_CHAIN)).valid
    assert (await verify(db, account.account_id)).valid


async def test_a_disclosure_needs_its_legal_basis_and_goes_to_the_platform_chain(
    db: Database, account: AccountHandle
) -> None:
    async with db.unit_of_work() as session:
        with pytest.raises(ValidationFailed, match="legal_basis"):
            record_disclosure(
                session,
                account_id=account.account_id,
                authority="Court",
                legal_basis="  ",
                description="d",
                actor="test",
            )
        entry = record_disclosure(
            session,
            account_id=account.account_id,
            authority="Cook County Circuit Court",
            legal_basis="Subpoena 2026-SC-0142",
            description="Messages to +13125550100",
            actor="test",
        )

    *_keys, stored = await entries(db, PLATFORM_CHAIN)
    assert stored.id == entry.id
    assert (stored.action, stored.account_id, stored.legal_basis) == (
        "disclosure",
        account.account_id,
        "Subpoena 2026-SC-0142",
    )
    assert stored.detail == {"authority": "Cook County Circuit Court"}
    assert (await verify(db, PLATFORM_CHAIN)).valid


# Upgrading a database that has audit rows from before the chain


LEGACY_ROWS = [
    ("aud_01", "operator:Dana Ops", "account.create", "account", "acc_01KAAAAAAAAAAAAAAAAAAAAAAA"),
    ("aud_02", "test", "connector.create", "connector", "con_1"),
    ("aud_03", "operator:Dana Ops", "account.read", "account", "acc_01KAAAAAAAAAAAAAAAAAAAAAAA"),
    ("aud_04", "cli:dana", "route.delete", "route", "rte_1"),
]


async def _fresh_database(database_url: str, tmp_path: Path) -> tuple[str, str | None]:
    """A new empty database of the suite's kind: (url, PostgreSQL admin url to drop it)."""
    if not database_url.startswith("postgres"):
        return f"sqlite+aiosqlite:///{tmp_path / 'upgrade.db'}", None
    url = make_url(database_url)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
    name = f"{url.database}_upgrade"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url.set(database=name).render_as_string(False), admin


async def test_an_upgraded_database_chains_its_existing_audit_rows(
    database_url: str, tmp_path: Path
) -> None:
    url, admin = await _fresh_database(database_url, tmp_path)
    db = Database(Settings(database_url=url))
    try:
        # Given a database at 0005 with audit rows written before the chain existed
        await upgrade_database(db, "0005")
        now = utc_now()
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO operators (id, name, token_hash, created_at)"
                    " VALUES ('op_01KAAAAAAAAAAAAAAAAAAAAAAA', 'Dana Ops', 'h', :at)"
                ).bindparams(bindparam("at", type_=UTCDateTime())),
                {"at": now},
            )
            for i, (id_, actor, action, target_type, target_id) in enumerate(LEGACY_ROWS):
                await conn.execute(
                    text(
                        "INSERT INTO audit_log (id, at, actor, action, target_type, target_id,"
                        " detail) VALUES (:id, :at, :actor, :action, :tt, :ti, '{}')"
                    ).bindparams(bindparam("at", type_=UTCDateTime())),
                    {
                        "id": id_,
                        "at": now + timedelta(seconds=i),
                        "actor": actor,
                        "action": action,
                        "tt": target_type,
                        "ti": target_id,
                    },
                )
        # When it is upgraded
        await upgrade_database(db)
        # Then every chain verifies, and new entries extend them
        account_chain = "acc_01KAAAAAAAAAAAAAAAAAAAAAAA"
        async with db.unit_of_work() as session:
            record_audit(
                session,
                actor="test",
                action="account.read",
                target_type="account",
                target_id=account_chain,
            )
        for chain, count in ((account_chain, 3), (PLATFORM_CHAIN, 2)):
            report = await verify(db, chain)
            assert (report.valid, report.entries) == (True, count), report
        async with db.read_session() as session:
            rows = await session.execute(
                select(AuditEntry.id, AuditEntry.actor, AuditEntry.actor_id).order_by(
                    AuditEntry.chain, AuditEntry.seq
                )
            )
            actors = {row.id: (row.actor, row.actor_id) for row in rows}
        assert actors["aud_01"] == ("operator:Dana Ops", "op_01KAAAAAAAAAAAAAAAAAAAAAAA")
        assert actors["aud_02"] == ("test", None)
        assert actors["aud_04"] == ("cli:dana", None)
        # And going back down restores the actors as they were
        await downgrade_database(db, "0005")
        async with db.engine.connect() as conn:
            legacy = await conn.scalar(text("SELECT actor FROM audit_log WHERE id = 'aud_01'"))
        assert legacy == "operator:Dana Ops"
    finally:
        await db.dispose()
        if admin is not None:
            conn = await asyncpg.connect(admin)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}"')
            finally:
                await conn.close()
