"""Recipients: the consent ledger — evidence required, a hash chain that exposes tampering,
one chain under concurrent grants, live consent, and grants that conflict with an opt-out."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import select, text

from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.errors import (
    ConsentConflictsWithOptOut,
    ConsentEvidenceMissing,
    InvalidAddress,
    ValidationFailed,
)
from amnex.recipients import service
from amnex.recipients.models import ConsentEntry, OptOutEvent
from support import AccountHandle, make_account

NUMBER = "+13125550148"
WEB_FORM: dict[str, Any] = {
    "ip": "203.0.113.7",
    "url": "https://shop.example/signup",
    "user_agent": "Mozilla/5.0",
}
TEXT = "Yes, send me offers by text. Msg & data rates may apply. Reply STOP to stop."


async def record(
    db: Database,
    account_id: str,
    *,
    action: str = "granted",
    purpose: str = "marketing",
    source: str = "web_form",
    channel: str = "sms",
    address: str = NUMBER,
    text_shown: str | None = TEXT,
    evidence: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    override_opt_out: bool = False,
) -> ConsentEntry:
    async with db.unit_of_work() as session:
        return await service.record_consent(
            session,
            account_id=account_id,
            channel=channel,
            address=address,
            purpose=purpose,
            action=action,
            source=source,
            text_shown=text_shown,
            evidence=WEB_FORM if evidence is None else evidence,
            occurred_at=occurred_at or utc_now() - timedelta(minutes=5),
            recorded_by="test",
            override_opt_out=override_opt_out,
        )


async def verify(db: Database, account_id: str) -> service.ChainReport:
    async with db.read_session() as session:
        return await service.verify_chain(session, account_id, chunk=3)


async def live(db: Database, account_id: str, purpose: str = "marketing") -> str | None:
    """The id of the live consent, if any."""
    async with db.read_session() as session:
        entry = await service.live_consent(session, account_id, "sms", NUMBER, purpose)
    return entry.id if entry else None


async def test_entries_form_a_hash_chain_that_verifies(
    db: Database, account: AccountHandle
) -> None:
    entries = [await record(db, account.account_id) for _ in range(7)]

    report = await verify(db, account.account_id)

    assert report == service.ChainReport(
        valid=True, entries=7, first_broken=None, head_hash=entries[-1].hash
    )
    assert [e.seq for e in entries] == list(range(1, 8))
    assert entries[0].prev_hash == service.GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in pairwise(entries))
    assert all(e.id.startswith("cns_") for e in entries)


async def test_an_account_without_entries_has_a_valid_empty_chain(
    db: Database, account: AccountHandle
) -> None:
    assert await verify(db, account.account_id) == service.ChainReport(
        valid=True, entries=0, first_broken=None, head_hash=None
    )


async def test_each_account_has_its_own_chain(db: Database, account: AccountHandle) -> None:
    other = await make_account(db, name="Other")
    mine = await record(db, account.account_id)
    theirs = await record(db, other.account_id)

    assert (mine.seq, theirs.seq) == (1, 1)
    assert theirs.prev_hash == service.GENESIS_HASH
    assert (await verify(db, account.account_id)).valid
    assert (await verify(db, other.account_id)).valid


@pytest.mark.parametrize(
    ("column", "value"),
    [
        pytest.param("text_shown", "'Yes, send me anything.'", id="text-shown"),
        pytest.param("action", "'revoked'", id="action"),
        pytest.param("address", "'+13125550199'", id="address"),
        pytest.param("address_index", "'another-index'", id="address-index"),
        pytest.param("evidence", "'{}'", id="evidence"),
        pytest.param("occurred_at", "recorded_at", id="occurred-at"),
    ],
)
async def test_a_row_edited_in_the_database_is_reported_as_the_first_broken(
    db: Database, account: AccountHandle, column: str, value: str
) -> None:
    entries = [await record(db, account.account_id) for _ in range(5)]
    async with db.engine.begin() as conn:
        await conn.execute(
            text(f"UPDATE consent_entries SET {column} = {value} WHERE id = :id"),  # noqa: S608
            {"id": entries[2].id},
        )

    report = await verify(db, account.account_id)

    assert report.valid is False
    assert report.first_broken == entries[2].id
    assert report.entries == 5
    assert report.reason is not None
    assert "hash" in report.reason


async def test_an_edit_that_recomputes_the_hash_breaks_the_next_link(
    db: Database, account: AccountHandle
) -> None:
    entries = [await record(db, account.account_id) for _ in range(4)]
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE consent_entries SET hash = :forged WHERE id = :id"),
            {"forged": "f" * 64, "id": entries[1].id},
        )

    report = await verify(db, account.account_id)

    assert report.first_broken == entries[1].id  # its content no longer matches
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE consent_entries SET text_shown = 'x' WHERE id = :id"),
            {"id": entries[1].id},
        )
    async with db.unit_of_work() as session:
        row = await session.get(ConsentEntry, entries[1].id)
        assert row is not None
        forged = service.consent_hash(row)
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE consent_entries SET hash = :forged WHERE id = :id"),
            {"forged": forged, "id": entries[1].id},
        )

    relinked = await verify(db, account.account_id)

    assert relinked.first_broken == entries[2].id
    assert relinked.reason is not None
    assert "prev_hash" in relinked.reason


async def test_a_removed_entry_is_detected_in_the_middle_and_at_the_end(
    db: Database, account: AccountHandle
) -> None:
    entries = [await record(db, account.account_id) for _ in range(5)]
    async with db.engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM consent_entries WHERE id = :id"), {"id": entries[4].id}
        )

    truncated = await verify(db, account.account_id)

    assert truncated.valid is False
    assert truncated.first_broken is None
    assert truncated.reason is not None
    assert "removed from its end" in truncated.reason
    async with db.engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM consent_entries WHERE id = :id"), {"id": entries[1].id}
        )

    holed = await verify(db, account.account_id)

    assert holed.valid is False
    assert holed.first_broken == entries[2].id
    assert holed.entries == 3


async def test_twenty_grants_at_once_extend_one_chain(db: Database, account: AccountHandle) -> None:
    entries = await asyncio.gather(
        *(record(db, account.account_id, address=f"+1312555{1000 + i:04d}") for i in range(20))
    )

    report = await verify(db, account.account_id)

    assert report.valid, report
    assert report.entries == 20
    assert sorted(e.seq for e in entries) == list(range(1, 21))
    assert len({e.prev_hash for e in entries}) == 20


@pytest.mark.postgres
async def test_grants_at_once_on_several_accounts_keep_every_chain_whole(
    db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other")
    await asyncio.gather(*(record(db, acc) for acc in [account.account_id, other.account_id] * 10))

    for account_id in (account.account_id, other.account_id):
        report = await verify(db, account_id)
        assert (report.valid, report.entries) == (True, 10)


async def test_the_newest_entry_decides_live_consent(db: Database, account: AccountHandle) -> None:
    assert await live(db, account.account_id) is None

    grant = await record(db, account.account_id)
    assert await live(db, account.account_id) == grant.id
    assert await live(db, account.account_id, purpose="transactional") is None

    await record(db, account.account_id, action="revoked", source="keyword", text_shown=None,
                 evidence={"text": "STOP"})  # fmt: skip
    assert await live(db, account.account_id) is None

    again = await record(db, account.account_id, source="keyword", evidence={"text": "YES"})
    assert await live(db, account.account_id) == again.id


@pytest.mark.parametrize(
    ("source", "text_shown", "evidence", "field"),
    [
        pytest.param("web_form", None, WEB_FORM, "text_shown", id="no-text"),
        pytest.param("web_form", "  ", WEB_FORM, "text_shown", id="blank-text"),
        pytest.param("web_form", TEXT, {"url": WEB_FORM["url"]}, "evidence.ip", id="no-ip"),
        pytest.param("web_form", TEXT, {"ip": WEB_FORM["ip"]}, "evidence.url", id="no-url"),
        pytest.param("web_form", TEXT, {**WEB_FORM, "ip": ""}, "evidence.ip", id="empty-ip"),
        pytest.param("keyword", TEXT, {}, "evidence.text", id="keyword-no-text"),
        pytest.param("paper", TEXT, {}, "evidence.document", id="paper-no-document"),
        pytest.param("verbal", TEXT, {}, "evidence.agent", id="verbal-no-agent"),
    ],
)
async def test_a_grant_without_its_evidence_is_refused_naming_the_field(
    db: Database,
    account: AccountHandle,
    source: str,
    text_shown: str | None,
    evidence: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(ConsentEvidenceMissing) as refused:
        await record(
            db, account.account_id, source=source, text_shown=text_shown, evidence=evidence
        )

    assert refused.value.extra["field"] == field
    assert field in refused.value.detail
    assert (await verify(db, account.account_id)).entries == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"evidence": {**WEB_FORM, "ip": "999.1.1.1"}}, "evidence.ip", id="bad-ip"),
        pytest.param({"evidence": {**WEB_FORM, "url": "javascript:x"}}, "evidence.url", id="url"),
        pytest.param({"evidence": {**WEB_FORM, "score": 0.5}}, "evidence.score", id="float"),
        pytest.param({"evidence": {**WEB_FORM, "n": {"a": 1}}}, "evidence.n", id="nested"),
        pytest.param({"evidence": {**WEB_FORM, "n": 2**60}}, "evidence.n", id="huge-int"),
        pytest.param({"occurred_at": utc_now() + timedelta(hours=1)}, "occurred_at", id="future"),
        pytest.param({"occurred_at": datetime(2026, 1, 1)}, "occurred_at", id="naive"),  # noqa: DTZ001
        pytest.param({"purpose": "research"}, "purpose", id="purpose"),
        pytest.param({"source": "telepathy"}, "source", id="source"),
        pytest.param({"channel": "all"}, "channel", id="channel-all"),
        pytest.param({"text_shown": "x" * 10_001}, "text_shown", id="long-text"),
    ],
)
async def test_a_malformed_consent_is_refused(
    db: Database, account: AccountHandle, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await record(db, account.account_id, **change)

    assert not isinstance(refused.value, ConsentEvidenceMissing)
    assert refused.value.extra["field"] == field


async def test_a_revocation_needs_no_evidence_and_a_bad_address_is_refused(
    db: Database, account: AccountHandle
) -> None:
    revoked = await record(
        db, account.account_id, action="revoked", source="api", text_shown=None, evidence={}
    )

    assert revoked.action == "revoked"
    with pytest.raises(InvalidAddress):
        await record(db, account.account_id, address="not-a-number")


async def test_occurred_at_a_minute_ahead_is_accepted_as_clock_skew(
    db: Database, account: AccountHandle
) -> None:
    entry = await record(db, account.account_id, occurred_at=utc_now() + timedelta(seconds=30))

    assert entry.occurred_at.tzinfo is not None


async def opt_out(db: Database, account_id: str | None, channel: str = "sms") -> None:
    async with db.unit_of_work() as session:
        await service.add_opt_out(
            session, account_id=account_id, channel=channel, address=NUMBER, source="keyword"
        )


async def test_a_grant_for_an_opted_out_address_conflicts(
    db: Database, account: AccountHandle
) -> None:
    await opt_out(db, account.account_id)

    with pytest.raises(ConsentConflictsWithOptOut) as refused:
        await record(db, account.account_id)

    assert "override_opt_out" in refused.value.detail
    assert refused.value.extra["opt_out_id"].startswith("opt_")
    assert (await verify(db, account.account_id)).entries == 0
    # A revocation is no conflict.
    await record(db, account.account_id, action="revoked", text_shown=None, evidence={})


async def test_a_fresh_opt_in_overrides_the_opt_out_and_lifts_it(
    db: Database, account: AccountHandle
) -> None:
    await opt_out(db, account.account_id)

    entry = await record(db, account.account_id, occurred_at=utc_now(), override_opt_out=True)

    async with db.read_session() as session:
        assert await service.is_suppressed(session, account.account_id, "sms", NUMBER) is None
        events = list(await session.scalars(select(OptOutEvent).order_by(OptOutEvent.id)))
    assert [(e.action, e.source, e.evidence) for e in events] == [
        ("created", "keyword", None),
        ("deleted", "consent", {"consent_id": entry.id}),
    ]
    assert await live(db, account.account_id) == entry.id


@pytest.mark.parametrize(
    ("owner", "channel", "source", "occurred", "words"),
    [
        pytest.param("account", "sms", "paper", "after", "keyword or web_form", id="paper"),
        pytest.param("account", "sms", "api", "after", "keyword or web_form", id="api"),
        pytest.param("account", "sms", "web_form", "before", "after the opt-out", id="older"),
        pytest.param("platform", "sms", "web_form", "after", "platform-wide", id="platform"),
        pytest.param("account", "all", "web_form", "after", "every channel", id="all-channels"),
    ],
)
async def test_an_override_that_is_not_a_fresh_opt_in_still_conflicts(
    db: Database,
    account: AccountHandle,
    owner: str,
    channel: str,
    source: str,
    occurred: str,
    words: str,
) -> None:
    before = utc_now() - timedelta(minutes=1)
    await opt_out(db, account.account_id if owner == "account" else None, channel)
    evidence = {
        "web_form": WEB_FORM,
        "paper": {"document": "box 12"},
        "api": {},
    }[source]

    with pytest.raises(ConsentConflictsWithOptOut) as refused:
        await record(
            db,
            account.account_id,
            source=source,
            evidence=evidence,
            occurred_at=before if occurred == "before" else utc_now(),
            override_opt_out=True,
        )

    assert words in refused.value.detail
    async with db.read_session() as session:
        assert await service.is_suppressed(session, account.account_id, "sms", NUMBER)
