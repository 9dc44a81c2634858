"""Recipient facts: opt-outs (account or platform, one channel or all, SMS and MMS as one),
live marketing consent and first contact, for a batch in order — read through a session
(dispatch) and on the accept path's own driver connections, with the same answers."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url

from amnex.clock import utc_now
from amnex.compliance.gate import NO_FACTS, RecipientFacts
from amnex.db.engine import Database, sqlite_pragmas
from amnex.db.ids import new_id
from amnex.messages.models import Message
from amnex.privacy.keys import blind_index, seal_address
from amnex.recipients import service
from amnex.recipients.facts import FactsQuery, facts_asyncpg, facts_session, facts_sqlite
from support import AccountHandle, make_account

NUMBER = "+13125550171"
OTHER_NUMBER = "+13125550172"
EMAIL = "alex@example.com"
WEB_FORM: dict[str, Any] = {"ip": "203.0.113.7", "url": "https://shop.example/signup"}
TEXT = "Yes, send me offers by text. Reply STOP to stop."

ReadFacts = Callable[[Sequence[FactsQuery]], Awaitable[list[RecipientFacts]]]


def _read_sqlite(db: Database, asks: Sequence[FactsQuery]) -> list[RecipientFacts]:
    """As the bulk writer does: a plain sqlite3 connection, inside its own transaction."""
    path = make_url(db.url).database
    assert path is not None
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in sqlite_pragmas(db.settings):
            conn.execute(pragma)
        conn.execute("BEGIN IMMEDIATE")
        try:
            return facts_sqlite(conn, asks)
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.fixture(params=["session", "driver"])
def read_facts(request: pytest.FixtureRequest, db: Database) -> ReadFacts:
    """The facts for a batch, read through a session or on the accept path's driver
    connection (sqlite3 on SQLite, asyncpg on PostgreSQL)."""

    async def through_session(asks: Sequence[FactsQuery]) -> list[RecipientFacts]:
        async with db.read_session() as session:
            return await facts_session(session, asks)

    async def on_sqlite3(asks: Sequence[FactsQuery]) -> list[RecipientFacts]:
        return await asyncio.to_thread(_read_sqlite, db, asks)

    async def on_asyncpg(asks: Sequence[FactsQuery]) -> list[RecipientFacts]:
        async with db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            async with driver.transaction():
                return await facts_asyncpg(driver, asks)

    if request.param == "session":
        return through_session
    return on_sqlite3 if db.is_sqlite else on_asyncpg


async def opt_out(
    db: Database, account_id: str | None, channel: str = "sms", address: str = NUMBER
) -> None:
    async with db.unit_of_work() as session:
        await service.add_opt_out(
            session, account_id=account_id, channel=channel, address=address, source="api"
        )


async def consent(
    db: Database,
    account_id: str,
    action: str,
    *,
    channel: str = "sms",
    purpose: str = "marketing",
    address: str = NUMBER,
) -> None:
    async with db.unit_of_work() as session:
        await service.record_consent(
            session,
            account_id=account_id,
            channel=channel,
            address=address,
            purpose=purpose,
            action=action,
            source="web_form",
            text_shown=TEXT,
            evidence=WEB_FORM,
            occurred_at=utc_now() - timedelta(minutes=5),
            recorded_by="test",
        )


async def store_message(
    db: Database,
    account_id: str,
    *,
    to: str,
    from_: str = "+13125550100",
    channel: str = "sms",
    direction: str = "outbound",
) -> None:
    now = utc_now()
    person = to if direction == "outbound" else from_
    async with db.unit_of_work() as session:
        session.add(
            Message(
                id=new_id("msg"),
                account_id=account_id,
                channel=channel,
                direction=direction,
                from_addr=seal_address(account_id, from_) if person == from_ else from_,
                to_addr=seal_address(account_id, to) if person == to else to,
                peer_index=blind_index(person),
                category="marketing",
                status="delivered" if direction == "outbound" else "received",
                body="hello",
                created_at=now,
                updated_at=now,
            )
        )


def ask(
    account: AccountHandle,
    channel: str = "sms",
    address: str = NUMBER,
    *,
    consent: bool = False,
    first_contact: bool = False,
) -> FactsQuery:
    return FactsQuery(account.account_id, channel, blind_index(address), consent, first_contact)


async def one(read_facts: ReadFacts, query: FactsQuery) -> RecipientFacts:
    (facts,) = await read_facts([query])
    return facts


@pytest.fixture
async def other(db: Database) -> AccountHandle:
    return await make_account(db, name="Other Shop")


# --- opt-outs ------------------------------------------------------------------------------


async def test_no_opt_out_no_consent_asked_gives_no_facts(
    read_facts: ReadFacts, account: AccountHandle
) -> None:
    assert await one(read_facts, ask(account)) == NO_FACTS
    assert await read_facts([]) == []


async def test_an_account_opt_out_is_scoped_to_the_account(
    read_facts: ReadFacts, db: Database, account: AccountHandle
) -> None:
    await opt_out(db, account.account_id)
    assert (await one(read_facts, ask(account))).opted_out == "account"


async def test_a_platform_opt_out_applies_to_every_account(
    read_facts: ReadFacts, db: Database, account: AccountHandle, other: AccountHandle
) -> None:
    await opt_out(db, None)
    facts = await read_facts([ask(account), ask(other)])
    assert [f.opted_out for f in facts] == ["platform", "platform"]


async def test_the_accounts_own_opt_out_is_named_before_the_platforms(
    read_facts: ReadFacts, db: Database, account: AccountHandle, other: AccountHandle
) -> None:
    await opt_out(db, None, "sms")
    await opt_out(db, account.account_id, "all")
    facts = await read_facts([ask(account), ask(other)])
    assert [f.opted_out for f in facts] == ["account", "platform"]


async def test_another_accounts_opt_out_does_not_apply(
    read_facts: ReadFacts, db: Database, account: AccountHandle, other: AccountHandle
) -> None:
    await opt_out(db, other.account_id, "all")
    facts = await read_facts([ask(account), ask(other)])
    assert [f.opted_out for f in facts] == [None, "account"]


@pytest.mark.parametrize(
    ("opted_out_of", "asked", "scope"),
    [
        ("sms", "sms", "account"),
        ("sms", "mms", "account"),  # a text is a text
        ("mms", "sms", "account"),
        ("mms", "mms", "account"),
        ("all", "sms", "account"),
        ("all", "mms", "account"),
        ("sms", "email", None),
    ],
)
async def test_sms_and_mms_opt_outs_stop_each_other(
    read_facts: ReadFacts,
    db: Database,
    account: AccountHandle,
    opted_out_of: str,
    asked: str,
    scope: str | None,
) -> None:
    await opt_out(db, account.account_id, opted_out_of)
    assert (await one(read_facts, ask(account, asked))).opted_out == scope


@pytest.mark.parametrize(
    ("opted_out_of", "asked", "scope"),
    [
        ("email", "email", "account"),
        ("all", "email", "account"),
        ("email", "push", None),
    ],
)
async def test_an_email_address_opt_out(
    read_facts: ReadFacts,
    db: Database,
    account: AccountHandle,
    opted_out_of: str,
    asked: str,
    scope: str | None,
) -> None:
    # Stored normalised (the domain lower-cased), as a message's `to` is.
    await opt_out(db, account.account_id, opted_out_of, "alex@Example.COM")
    assert (await one(read_facts, ask(account, asked, EMAIL))).opted_out == scope
    assert (await one(read_facts, ask(account, asked, "sam@example.com"))).opted_out is None


async def test_an_opt_out_of_one_number_leaves_another_alone(
    read_facts: ReadFacts, db: Database, account: AccountHandle
) -> None:
    await opt_out(db, account.account_id, "all")
    await opt_out(db, None, "all")
    assert (await one(read_facts, ask(account, address=OTHER_NUMBER))).opted_out is None


# --- consent -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "consented"),
    [
        ([], False),
        (["granted"], True),
        (["revoked"], False),
        (["granted", "revoked"], False),
        (["revoked", "granted"], True),
        (["granted", "revoked", "granted"], True),
        (["granted", "granted", "revoked"], False),
    ],
)
async def test_the_newest_ledger_entry_decides_consent(
    read_facts: ReadFacts,
    db: Database,
    account: AccountHandle,
    actions: list[str],
    consented: bool,
) -> None:
    for action in actions:
        await consent(db, account.account_id, action)
    assert (await one(read_facts, ask(account, consent=True))).consented is consented


@pytest.mark.parametrize(
    ("channel", "purpose", "address"),
    [
        ("mms", "marketing", NUMBER),
        ("sms", "transactional", NUMBER),
        ("sms", "marketing", OTHER_NUMBER),
    ],
)
async def test_consent_of_another_channel_purpose_or_address_does_not_count(
    read_facts: ReadFacts,
    db: Database,
    account: AccountHandle,
    channel: str,
    purpose: str,
    address: str,
) -> None:
    await consent(
        db, account.account_id, "granted", channel=channel, purpose=purpose, address=address
    )
    assert (await one(read_facts, ask(account, consent=True))).consented is False


async def test_consent_is_the_accounts_own(
    read_facts: ReadFacts, db: Database, account: AccountHandle, other: AccountHandle
) -> None:
    await consent(db, other.account_id, "granted")
    facts = await read_facts([ask(account, consent=True), ask(other, consent=True)])
    assert [f.consented for f in facts] == [False, True]


async def test_a_newer_revocation_by_another_account_does_not_revoke(
    read_facts: ReadFacts, db: Database, account: AccountHandle, other: AccountHandle
) -> None:
    # Each account's ledger has its own sequence: the other's higher seq must not win.
    await consent(db, account.account_id, "granted")
    for _ in range(3):
        await consent(db, other.account_id, "granted")
    await consent(db, other.account_id, "revoked")
    facts = await read_facts([ask(account, consent=True), ask(other, consent=True)])
    assert [f.consented for f in facts] == [True, False]


async def test_consent_is_reported_only_when_asked(
    read_facts: ReadFacts, db: Database, account: AccountHandle
) -> None:
    await consent(db, account.account_id, "granted")
    assert (await one(read_facts, ask(account))).consented is False


async def test_an_email_consent(
    read_facts: ReadFacts, db: Database, account: AccountHandle
) -> None:
    await consent(db, account.account_id, "granted", channel="email", address=EMAIL)
    assert (await one(read_facts, ask(account, "email", EMAIL, consent=True))).consented is True
    assert (await one(read_facts, ask(account, "sms", NUMBER, consent=True))).consented is False


# --- first contact -------------------------------------------------------------------------


async def test_first_contact_until_an_outbound_sms_to_the_number_exists(
    read_facts: ReadFacts, db: Database, account: AccountHandle, other: AccountHandle
) -> None:
    # Given no message yet, a reply from the number, and another account's text to it
    first = ask(account, first_contact=True)
    assert (await one(read_facts, first)).first_contact is True
    await store_message(
        db, account.account_id, to="+13125550100", from_=NUMBER, direction="inbound"
    )
    await store_message(db, other.account_id, to=NUMBER)
    await store_message(db, account.account_id, to=OTHER_NUMBER)
    await store_message(
        db, account.account_id, to=EMAIL, channel="email", from_="news@shop.example"
    )
    # Then it is still the account's first contact with the number
    assert (await one(read_facts, first)).first_contact is True
    # When the account texts the number
    await store_message(db, account.account_id, to=NUMBER)
    # Then it no longer is; the other account has contacted it too
    facts = await read_facts([first, ask(other, first_contact=True)])
    assert [f.first_contact for f in facts] == [False, False]


async def test_an_outbound_mms_counts_as_contact(
    read_facts: ReadFacts, db: Database, account: AccountHandle
) -> None:
    await store_message(db, account.account_id, to=NUMBER, channel="mms")
    assert (await one(read_facts, ask(account, first_contact=True))).first_contact is False


async def test_first_contact_is_reported_only_when_asked(
    read_facts: ReadFacts, account: AccountHandle
) -> None:
    assert (await one(read_facts, ask(account))).first_contact is False


# --- batches -------------------------------------------------------------------------------


@contextmanager
def count_statements(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.read_engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db.read_engine.sync_engine, "before_cursor_execute", record)


async def test_a_batch_is_answered_in_order(
    read_facts: ReadFacts, db: Database, account: AccountHandle, other: AccountHandle
) -> None:
    # Given 60 numbers: every third opted out of the account, every fourth consented,
    # every fifth already texted
    numbers = [f"+1312555{3000 + i:04d}" for i in range(60)]
    for i, number in enumerate(numbers):
        # (consent first: a grant for a number already opted out is refused)
        if i % 4 == 0:
            await consent(db, account.account_id, "granted", address=number)
        if i % 3 == 0:
            await opt_out(db, account.account_id, address=number)
        if i % 5 == 0:
            await store_message(db, account.account_id, to=number)
    # When one batch asks about all of them, in a shuffled order, for two accounts
    order = [(i * 37) % 60 for i in range(60)]
    asks = [
        FactsQuery(
            (account if i % 2 else other).account_id,
            "sms",
            blind_index(numbers[i]),
            consent=True,
            first_contact=True,
        )
        for i in order
    ]
    facts = await read_facts(asks)
    # Then each answer is the one for its ask, at its place
    expected = [
        RecipientFacts(
            opted_out="account" if i % 2 and i % 3 == 0 else None,
            consented=bool(i % 2 and i % 4 == 0),
            first_contact=not (i % 2 and i % 5 == 0),
        )
        for i in order
    ]
    assert facts == expected


async def test_a_batch_takes_at_most_three_reads_through_a_session(
    db: Database, account: AccountHandle
) -> None:
    asks = [
        FactsQuery(account.account_id, "sms", blind_index(f"+1312555{3000 + i:04d}"), True, True)
        for i in range(50)
    ]
    with count_statements(db) as seen:
        async with db.read_session() as session:
            await facts_session(session, asks)
    assert len([s for s in seen if s.lstrip().upper().startswith("SELECT")]) == 3
