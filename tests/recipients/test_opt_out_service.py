"""Recipients: the suppression list — idempotent opt-outs, their history, account vs platform,
one channel vs all, and the gate's one-query look-up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection

from amnex.db.engine import Database
from amnex.errors import InvalidAddress, NotFound, ValidationFailed
from amnex.privacy.keys import blind_index, open_address
from amnex.recipients import service
from amnex.recipients.models import OptOut, OptOutEvent
from support import AccountHandle, make_account

NUMBER = "+13125550147"


async def add(
    db: Database,
    account_id: str | None,
    channel: str = "sms",
    address: str = NUMBER,
    source: str = "keyword",
    evidence: dict[str, Any] | None = None,
) -> tuple[OptOut, bool]:
    async with db.unit_of_work() as session:
        return await service.add_opt_out(
            session,
            account_id=account_id,
            channel=channel,
            address=address,
            source=source,
            evidence=evidence,
        )


async def suppressed(
    db: Database, account_id: str | None, channel: str, address: str = NUMBER
) -> OptOut | None:
    async with db.read_session() as session:
        return await service.is_suppressed(session, account_id, channel, address)


async def history(db: Database) -> list[tuple[str | None, str, str | None, str, str]]:
    async with db.read_session() as session:
        rows = await session.scalars(select(OptOutEvent).order_by(OptOutEvent.id))
        return [
            (e.account_id, e.channel, open_address(e.address), e.action, e.source) for e in rows
        ]


async def count_opt_outs(db: Database) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(OptOut)) or 0)


@contextmanager
def count_statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements run on the read engine inside the block."""
    seen: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.read_engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db.read_engine.sync_engine, "before_cursor_execute", record)


async def test_a_second_stop_creates_no_second_opt_out_and_no_second_event(
    db: Database, account: AccountHandle
) -> None:
    first, first_new = await add(db, account.account_id, evidence={"text": "STOP"})
    second, second_new = await add(db, account.account_id, evidence={"text": "stop"})

    assert (first_new, second_new) == (True, False)
    assert second.id == first.id
    assert first.id.startswith("opt_")
    assert second.evidence == {"text": "STOP"}  # the first opt-out's evidence is kept
    assert await count_opt_outs(db) == 1
    assert await history(db) == [(account.account_id, "sms", NUMBER, "created", "keyword")]


async def test_stops_arriving_at_once_create_one_opt_out(
    db: Database, account: AccountHandle
) -> None:
    results = await asyncio.gather(*(add(db, account.account_id) for _ in range(10)))

    assert sum(new for _, new in results) == 1
    assert len({o.id for o, _ in results}) == 1
    assert await count_opt_outs(db) == 1
    assert len(await history(db)) == 1


async def test_the_address_is_stored_normalised_and_a_bad_one_is_refused(
    db: Database, account: AccountHandle
) -> None:
    phone, _ = await add(db, account.account_id, address="+1 (312) 555-0147")
    email, _ = await add(db, account.account_id, channel="email", address="Alex@Example.COM")

    # Stored sealed, found by the blind index of the normalised form.
    assert phone.address is not None
    assert phone.address.startswith("amxa1:")
    assert open_address(phone.address) == NUMBER
    assert phone.address_index == blind_index(NUMBER)
    assert (
        open_address(email.address) == "alex@example.com"
    )  # case folded: Alex@ and alex@ are one mailbox
    with pytest.raises(InvalidAddress):
        await add(db, account.account_id, address="555")
    with pytest.raises(InvalidAddress):
        await add(db, account.account_id, channel="email", address="Alex <alex@example.com>")
    with pytest.raises(ValidationFailed):
        await add(db, account.account_id, channel="fax")
    with pytest.raises(ValidationFailed):
        await add(db, account.account_id, source="guess")


@pytest.mark.parametrize(
    ("owner", "channel", "asked_channel", "asked_by_other_account", "stops"),
    [
        pytest.param("account", "sms", "sms", False, True, id="own-sms-stops-sms"),
        pytest.param("account", "sms", "mms", False, False, id="own-sms-not-mms"),
        pytest.param("account", "all", "sms", False, True, id="own-all-stops-sms"),
        pytest.param("account", "all", "mms", False, True, id="own-all-stops-mms"),
        pytest.param("account", "sms", "sms", True, False, id="not-another-account"),
        pytest.param("platform", "sms", "sms", True, True, id="platform-stops-everyone"),
        pytest.param("platform", "sms", "mms", True, False, id="platform-sms-not-mms"),
        pytest.param("platform", "all", "mms", False, True, id="platform-all-stops-mms"),
    ],
)
async def test_who_and_which_channel_an_opt_out_stops(
    db: Database,
    account: AccountHandle,
    owner: str,
    channel: str,
    asked_channel: str,
    asked_by_other_account: bool,
    stops: bool,
) -> None:
    other = await make_account(db, name="Other")
    opt_out, _ = await add(db, account.account_id if owner == "account" else None, channel)
    asker = other.account_id if asked_by_other_account else account.account_id

    found = await suppressed(db, asker, asked_channel)

    assert (found.id if found else None) == (opt_out.id if stops else None)


async def test_the_most_specific_opt_out_is_reported(db: Database, account: AccountHandle) -> None:
    await add(db, None, "all")
    await add(db, account.account_id, "all")
    own, _ = await add(db, account.account_id, "sms")

    found = await suppressed(db, account.account_id, "sms")
    platform_only = await suppressed(db, None, "sms")

    assert found is not None
    assert found.id == own.id
    assert platform_only is not None
    assert platform_only.account_id is None


async def test_the_suppression_check_is_one_query(db: Database, account: AccountHandle) -> None:
    await add(db, None, "all")
    await add(db, account.account_id, "sms")
    async with db.read_session() as session:
        await service.is_suppressed(session, account.account_id, "sms", "+13125550000")
        with count_statements(db) as statements:
            hit = await service.is_suppressed(session, account.account_id, "sms", NUMBER)
            miss = await service.is_suppressed(session, account.account_id, "sms", "+13125550001")

    assert hit is not None
    assert miss is None
    assert len(statements) == 2


async def test_removing_an_opt_out_records_one_deleted_event(
    db: Database, account: AccountHandle
) -> None:
    await add(db, account.account_id)

    async def remove() -> bool:
        async with db.unit_of_work() as session:
            return await service.remove_opt_out(
                session,
                account_id=account.account_id,
                channel="sms",
                address=NUMBER,
                source="keyword",
                evidence={"text": "START"},
            )

    outcomes = await asyncio.gather(remove(), remove())
    again = await remove()

    assert sorted(outcomes) == [False, True]
    assert again is False
    assert await suppressed(db, account.account_id, "sms") is None
    assert [row[3] for row in await history(db)] == ["created", "deleted"]


async def test_an_opt_in_lifts_the_channel_and_optionally_every_channel(
    db: Database, account: AccountHandle
) -> None:
    await add(db, account.account_id, "sms")
    await add(db, account.account_id, "all")

    async def remove(include_all: bool) -> bool:
        async with db.unit_of_work() as session:
            return await service.remove_opt_out(
                session,
                account_id=account.account_id,
                channel="sms",
                address=NUMBER,
                source="keyword",
                include_all_channels=include_all,
            )

    assert await remove(include_all=False) is True
    still = await suppressed(db, account.account_id, "sms")
    assert still is not None
    assert still.channel == "all"
    assert await remove(include_all=True) is True
    assert await suppressed(db, account.account_id, "sms") is None


async def test_an_account_cannot_lift_a_platform_opt_out(
    db: Database, account: AccountHandle
) -> None:
    platform, _ = await add(db, None, "sms", source="operator")

    async with db.unit_of_work() as session:
        removed = await service.remove_opt_out(
            session, account_id=account.account_id, channel="sms", address=NUMBER, source="api"
        )
    async with db.unit_of_work() as session:
        with pytest.raises(NotFound):
            await service.delete_opt_out(session, account.account_id, platform.id, source="api")

    assert removed is False
    assert await suppressed(db, account.account_id, "sms") is not None
    async with db.unit_of_work() as session:
        deleted = await service.delete_opt_out(session, None, platform.id, source="operator")
    assert deleted.id == platform.id
    assert await suppressed(db, account.account_id, "sms") is None
    assert await history(db) == [
        (None, "sms", NUMBER, "created", "operator"),
        (None, "sms", NUMBER, "deleted", "operator"),
    ]


async def test_an_opt_out_can_be_added_again_after_it_was_lifted(
    db: Database, account: AccountHandle
) -> None:
    first, _ = await add(db, account.account_id)
    async with db.unit_of_work() as session:
        await service.delete_opt_out(session, account.account_id, first.id, source="api")
    second, new = await add(db, account.account_id)

    assert new is True
    assert second.id != first.id
    assert [row[3] for row in await history(db)] == ["created", "deleted", "created"]


async def test_evidence_with_a_nul_character_is_stored(
    db: Database, account: AccountHandle
) -> None:
    opt_out, _ = await add(db, account.account_id, evidence={"text": "stop\x00now"})

    assert opt_out.evidence == {"text": "stop\ufffdnow"}
