"""Receipts: what a recipient's reply does, in the transaction that stores it.

STOP (and "please stop texting me") suppresses the sender for the account that owns the
number, confirmed once; START lifts it, confirmed once; HELP is answered every time.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from amnex.channels.smpp import text as sms_text
from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.dispatch import claim
from amnex.messages.models import Message, MessageEvent
from amnex.privacy.keys import open_address
from amnex.receipts.apply import ReceivedInbound, store_inbound
from amnex.receipts.inbound import InboundFragment
from amnex.recipients.models import OptOut, OptOutEvent
from support import AccountHandle, make_account

CONNECTOR = "con_REPLIES"
NUMBER = "+13125550171"  # the account's number the recipient writes to
RECIPIENT = "+14155550123"
OPT_OUT_CONFIRMATION = (
    "Shop Example: You have been unsubscribed and will receive no more messages. "
    "Reply START to resubscribe."
)
OPT_IN_CONFIRMATION = (
    "Shop Example: You are subscribed again. Msg frequency varies. Msg&data rates may apply. "
    "Reply HELP for help, STOP to opt out."
)


@pytest.fixture
async def sms_account(db: Database) -> AccountHandle:
    return await make_account(db, sms_number=NUMBER)


def reply(
    text: str,
    *,
    source: str = RECIPIENT,
    destination: str = NUMBER,
    payload: bytes | None = None,
    data_coding: int = 0,
    reference: int | None = None,
    total: int = 1,
    sequence: int = 1,
) -> ReceivedInbound:
    if payload is None:
        encoding = sms_text.choose_encoding(text)
        payload = sms_text.encode(text, encoding)
        data_coding = sms_text.DATA_CODING[encoding]
    return ReceivedInbound(
        CONNECTOR,
        InboundFragment(
            source=source,
            destination=destination,
            payload=payload,
            data_coding=data_coding,
            reference=reference,
            total=total,
            sequence=sequence,
        ),
    )


async def store(db: Database, *items: ReceivedInbound) -> list[bool]:
    async with db.unit_of_work() as session:
        return await store_inbound(session, list(items), now=utc_now())


async def inbound(db: Database, account: AccountHandle) -> list[Message]:
    async with db.read_session() as session:
        return list(
            await session.scalars(
                select(Message)
                .where(Message.account_id == account.account_id, Message.direction == "inbound")
                .order_by(Message.created_at, Message.id)
            )
        )


async def last_inbound(db: Database, account: AccountHandle) -> Message:
    messages = await inbound(db, account)
    assert messages
    return messages[-1]


async def replies(db: Database, account: AccountHandle) -> list[Message]:
    """What Amnex queued back to recipients, oldest first."""
    async with db.read_session() as session:
        return list(
            await session.scalars(
                select(Message)
                .where(Message.account_id == account.account_id, Message.direction == "outbound")
                .order_by(Message.created_at, Message.id)
            )
        )


async def opt_outs(db: Database) -> list[OptOut]:
    async with db.read_session() as session:
        return list(await session.scalars(select(OptOut).order_by(OptOut.id)))


async def opt_out_events(db: Database) -> list[OptOutEvent]:
    async with db.read_session() as session:
        return list(await session.scalars(select(OptOutEvent).order_by(OptOutEvent.at)))


def origins(messages: list[Message]) -> list[str | None]:
    return [m.origin for m in messages]


async def test_stop_suppresses_the_sender_and_is_confirmed_once(
    db: Database, sms_account: AccountHandle
) -> None:
    # Given an account that owns NUMBER
    # When a recipient replies STOP to it
    assert await store(db, reply("STOP")) == [True]

    # Then the sender is on the account's suppression list for SMS, with the reply as evidence
    stop = await last_inbound(db, sms_account)
    [opt_out] = await opt_outs(db)
    assert (opt_out.account_id, opt_out.channel, open_address(opt_out.address), opt_out.source) == (
        sms_account.account_id, "sms", RECIPIENT, "keyword",
    )  # fmt: skip
    assert opt_out.evidence is not None
    assert opt_out.evidence["text"] == "STOP"
    assert opt_out.evidence["inbound_message_id"] == stop.id
    [event] = await opt_out_events(db)
    assert (event.action, event.source, event.opt_out_id) == ("created", "keyword", opt_out.id)
    assert event.evidence == opt_out.evidence

    # and one SMS goes back, from the number they wrote to, with the default confirmation
    [confirmation] = await replies(db, sms_account)
    assert confirmation.origin == "opt_out_reply"
    assert (confirmation.channel, confirmation.from_addr, open_address(confirmation.to_addr)) == (
        "sms", NUMBER, RECIPIENT,
    )  # fmt: skip
    assert confirmation.body == OPT_OUT_CONFIRMATION
    assert (confirmation.status, confirmation.category) == ("queued", "transactional")
    assert confirmation.next_attempt_at is not None
    assert confirmation.meta == {"in_reply_to": stop.id}
    async with db.read_session() as session:
        statuses = list(
            await session.scalars(
                select(MessageEvent.status).where(MessageEvent.message_id == confirmation.id)
            )
        )
    assert statuses == ["queued"]
    assert stop.meta == {"reply_intent": "opt_out"}


async def test_the_confirmation_is_claimed_although_its_recipient_just_opted_out(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, reply("STOP"))
    [confirmation] = await replies(db, sms_account)

    async with db.unit_of_work() as session:
        claimed = await claim.claim_due_messages(
            session, owner="w", limit=10, lease_s=30, now=utc_now() + timedelta(seconds=1)
        )

    assert [c.outbound.id for c in claimed] == [confirmation.id]


async def test_a_second_stop_changes_nothing_and_sends_nothing(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, reply("STOP"))
    await store(db, reply("stop"))

    assert len(await opt_outs(db)) == 1
    assert [e.action for e in await opt_out_events(db)] == ["created"]
    assert origins(await replies(db, sms_account)) == ["opt_out_reply"]
    assert [m.meta for m in await inbound(db, sms_account)] == [
        {"reply_intent": "opt_out"}, {"reply_intent": "opt_out"},
    ]  # fmt: skip


async def test_two_stops_in_one_batch_are_confirmed_once(
    db: Database, sms_account: AccountHandle
) -> None:
    assert await store(db, reply("STOP"), reply("Stop!")) == [True, True]

    assert len(await opt_outs(db)) == 1
    assert origins(await replies(db, sms_account)) == ["opt_out_reply"]


async def test_a_free_text_request_to_stop_is_an_opt_out(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, reply("Stop texting me please"))

    [opt_out] = await opt_outs(db)
    assert (opt_out.channel, open_address(opt_out.address), opt_out.source) == (
        "sms", RECIPIENT, "free_text_reply",
    )  # fmt: skip
    assert opt_out.evidence is not None
    assert opt_out.evidence["text"] == "Stop texting me please"
    [confirmation] = await replies(db, sms_account)
    assert (confirmation.origin, confirmation.body) == ("opt_out_reply", OPT_OUT_CONFIRMATION)
    assert (await last_inbound(db, sms_account)).meta == {"reply_intent": "opt_out"}


@pytest.mark.parametrize(
    "text", ["don't stop the updates", "I'll stop by tomorrow", "Thanks!", "Yes please, 3pm"]
)
async def test_a_reply_that_asks_for_nothing_is_only_stored(
    db: Database, sms_account: AccountHandle, text: str
) -> None:
    await store(db, reply(text))

    [message] = await inbound(db, sms_account)
    assert message.body == text
    assert message.meta is None
    assert await opt_outs(db) == []
    assert await opt_out_events(db) == []
    assert await replies(db, sms_account) == []


async def test_start_after_stop_lifts_the_opt_out_and_is_confirmed_once(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, reply("STOP"))

    await store(db, reply("START"))

    assert await opt_outs(db) == []
    assert [(e.action, e.source) for e in await opt_out_events(db)] == [
        ("created", "keyword"), ("deleted", "keyword"),
    ]  # fmt: skip
    sent = await replies(db, sms_account)
    assert origins(sent) == ["opt_out_reply", "opt_in_reply"]
    assert (sent[1].from_addr, open_address(sent[1].to_addr), sent[1].body) == (
        NUMBER, RECIPIENT, OPT_IN_CONFIRMATION,
    )  # fmt: skip
    assert (await last_inbound(db, sms_account)).meta == {"reply_intent": "opt_in"}

    # A second START has nothing left to lift
    await store(db, reply("start"))
    assert origins(await replies(db, sms_account)) == ["opt_out_reply", "opt_in_reply"]


async def test_start_lifts_a_stopall_and_stop_after_start_is_confirmed_again(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, reply("STOPALL"))
    await store(db, reply("UNSTOP"))
    assert await opt_outs(db) == []

    await store(db, reply("STOP"))

    assert [o.channel for o in await opt_outs(db)] == ["sms"]
    assert origins(await replies(db, sms_account)) == [
        "opt_out_reply", "opt_in_reply", "opt_out_reply",
    ]  # fmt: skip


async def test_start_without_an_opt_out_sends_nothing(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, reply("START"))

    assert await replies(db, sms_account) == []
    assert await opt_out_events(db) == []
    assert (await last_inbound(db, sms_account)).meta == {"reply_intent": "opt_in"}


async def test_help_is_answered_every_time_with_the_accounts_contact(db: Database) -> None:
    account = await make_account(
        db, sms_number=NUMBER, compliance={"help_contact": "support@shop.example"}
    )

    await store(db, reply("HELP"))
    await store(db, reply("help"))
    await store(db, reply("STOP"))
    await store(db, reply("Help"))  # opted out or not

    sent = await replies(db, account)
    assert origins(sent) == ["help_reply", "help_reply", "opt_out_reply", "help_reply"]
    for message in (sent[0], sent[1], sent[3]):
        assert message.body == (
            "Shop Example: For help contact support@shop.example. Msg&data rates may apply. "
            "Reply STOP to opt out."
        )
        assert (message.from_addr, open_address(message.to_addr)) == (NUMBER, RECIPIENT)
    assert [m.meta for m in await inbound(db, account)] == [
        {"reply_intent": "help"}, {"reply_intent": "help"},
        {"reply_intent": "opt_out"}, {"reply_intent": "help"},
    ]  # fmt: skip


async def test_help_without_a_contact_setting_gives_the_accounts_own_contact(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, reply("HELP"))

    (sent,) = await replies(db, sms_account)
    # make_account's contact email; an account without any contact gets no "contact ." gap
    assert sent.body == (
        "Shop Example: For help contact pat@shop.example. Msg&data rates may apply. "
        "Reply STOP to opt out."
    )


async def test_stopall_opts_out_of_every_channel(db: Database, sms_account: AccountHandle) -> None:
    await store(db, reply("STOPALL"))

    [opt_out] = await opt_outs(db)
    assert (opt_out.account_id, opt_out.channel, open_address(opt_out.address), opt_out.source) == (
        sms_account.account_id, "all", RECIPIENT, "keyword",
    )  # fmt: skip
    assert origins(await replies(db, sms_account)) == ["opt_out_reply"]


async def test_an_accounts_own_keywords_and_texts_are_used(db: Database) -> None:
    account = await make_account(
        db,
        sms_number=NUMBER,
        compliance={
            "brand_name": "Acme Deals",
            "opt_out_keywords": ["enough"],
            "help_keywords": ["support"],
            "help_contact": "acme.example/help",
            "opt_out_reply": "{brand}: no more texts. Text START to come back.",
            "opt_in_reply": "{brand}: welcome back!",
        },
    )

    await store(db, reply("Enough"))
    await store(db, reply("START"))
    await store(db, reply("Support"))

    [opt_out_event, opt_in_event] = await opt_out_events(db)
    assert (opt_out_event.action, opt_out_event.source) == ("created", "keyword")
    assert opt_out_event.evidence is not None
    assert opt_out_event.evidence["matched"] == "ENOUGH"
    assert opt_in_event.action == "deleted"
    sent = await replies(db, account)
    assert [(m.origin, m.body) for m in sent] == [
        ("opt_out_reply", "Acme Deals: no more texts. Text START to come back."),
        ("opt_in_reply", "Acme Deals: welcome back!"),
        ("help_reply", "Acme Deals: For help contact acme.example/help. Msg&data rates may "
                       "apply. Reply STOP to opt out."),
    ]  # fmt: skip


async def test_the_reply_goes_to_the_account_that_owns_the_number(db: Database) -> None:
    owner = await make_account(db, sms_number=NUMBER)
    other = await make_account(db, sms_number="+13125550172")

    await store(db, reply("STOP"))

    [opt_out] = await opt_outs(db)
    assert opt_out.account_id == owner.account_id
    assert origins(await replies(db, owner)) == ["opt_out_reply"]
    assert await replies(db, other) == []


async def test_a_stop_in_several_parts_acts_once_the_message_is_whole(
    db: Database, sms_account: AccountHandle
) -> None:
    first = reply("", payload=b"Stop texting ", reference=7, total=2, sequence=1)
    second = reply("", payload=b"me please", reference=7, total=2, sequence=2)

    await store(db, first)
    assert await opt_outs(db) == []
    await store(db, second)

    [opt_out] = await opt_outs(db)
    assert (opt_out.source, open_address(opt_out.address)) == ("free_text_reply", RECIPIENT)
    assert origins(await replies(db, sms_account)) == ["opt_out_reply"]


async def test_an_undecodable_reply_is_not_classified(db: Database) -> None:
    # The account's own keyword "cafe" is also what the bytes CA FE look like as hex.
    account = await make_account(db, sms_number=NUMBER, compliance={"opt_out_keywords": ["cafe"]})

    await store(db, reply("", payload=b"\xca\xfe", data_coding=0x04))

    [message] = await inbound(db, account)
    assert message.body == "cafe"
    assert message.meta is not None
    assert message.meta["body_format"] == "hex"
    assert "reply_intent" not in message.meta
    assert await opt_outs(db) == []
    assert await replies(db, account) == []

    # The same word as text is the account's keyword
    await store(db, reply("CAFE"))
    assert [o.source for o in await opt_outs(db)] == ["keyword"]


async def test_a_reply_from_a_number_amnex_cannot_send_to_is_stored_and_nothing_applied(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, reply("STOP", source="12345"))

    [message] = await inbound(db, sms_account)
    assert open_address(message.from_addr) == "12345"
    assert await opt_outs(db) == []
    assert await replies(db, sms_account) == []
