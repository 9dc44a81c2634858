"""Receipts: applying receipts and storing inbound SMS on a real database (SQLite and PostgreSQL).

Messages are accepted and claimed through the real paths, then submitted parts are recorded
and receipts applied as the worker does — in whatever order a carrier sends them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from amnex.accounts.service import KeyContext
from amnex.carriers.routing import RouteEntry, RouteTable
from amnex.channels.smpp import text as sms_text
from amnex.channels.smpp.pdu import CommandStatus, DeliverSm, Tag
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.dispatch import claim
from amnex.messages.accept import AcceptWriter
from amnex.messages.models import Message, MessageEvent, MessagePart
from amnex.messages.schemas import SendMessageRequest
from amnex.messages.service import prepare_message
from amnex.messages.status import Status
from amnex.receipts.apply import (
    ReceivedInbound,
    ReceivedReceipt,
    apply_receipts,
    expire_inbound_parts,
    match_pending_receipts,
    store_inbound,
)
from amnex.receipts.dlr import parse_receipt
from amnex.receipts.inbound import InboundFragment
from amnex.receipts.models import InboundPart, PendingReceipt
from amnex.receipts.sweeper import sweep_once
from amnex.receipts.writer import DeliveryWriter
from support import AccountHandle, make_account

OWNER = "worker-test"
CONNECTOR = "con_TEST"
NUMBER = "+13125550177"
ROUTES = RouteTable(
    routes=(RouteEntry("rte_1", "sms", None, None, "", (CONNECTOR,)),),
    enabled_connectors=frozenset({CONNECTOR}),
)


@pytest.fixture
async def sms_account(db: Database) -> AccountHandle:
    return await make_account(db, sms_number=NUMBER)


def ctx(account: AccountHandle) -> KeyContext:
    return KeyContext(
        key_id="key_test",
        account_id=account.account_id,
        scopes=frozenset({"send", "read"}),
        rate_limit_per_s=None,
        account_settings={},
        senders={"sms": frozenset({NUMBER})},
        default_senders={"sms": NUMBER},
    )


async def sent_message(
    db: Database, account: AccountHandle, provider_ids: list[str], **fields: Any
) -> str:
    """A message accepted, claimed, and recorded as sent with these part ids."""
    message_id = await claimed_message(db, account, **fields)
    await record_sent(db, message_id, provider_ids)
    return message_id


async def claimed_message(db: Database, account: AccountHandle, **fields: Any) -> str:
    """A message accepted and claimed by OWNER (status `sending`)."""
    request = SendMessageRequest.model_validate(
        {"channel": "sms", "to": "+14155550100", "body": "Hello", **fields}
    )
    prepared = prepare_message(ctx(account), request, now=utc_now(), routes=ROUTES)
    writer = AcceptWriter(db, writers=1, batch_max=10, db_retry_s=1)
    await writer.start()
    try:
        await writer.submit(prepared)
    finally:
        await writer.close()
    message_id = str(prepared.row["id"])
    async with db.unit_of_work() as session:
        claimed = await claim.claim_due_messages(
            session, owner=OWNER, limit=10, lease_s=30, now=utc_now()
        )
    assert [c.outbound.id for c in claimed] == [message_id]
    return message_id


async def record_sent(db: Database, message_id: str, provider_ids: list[str]) -> None:
    async with db.unit_of_work() as session:
        assert await claim.record_submitted(
            session,
            message_id=message_id,
            owner=OWNER,
            status=Status.SENT,
            provider_message_id=provider_ids[0],
            detail={},
            now=utc_now(),
            connector_id=CONNECTOR,
            parts=provider_ids,
            segments=len(provider_ids),
            encoding="GSM-7",
            receipt_wait_s=3600,
        )


def receipt(provider_id: str, stat: str, err: str = "000") -> ReceivedReceipt:
    text = f"id:{provider_id} sub:001 dlvrd:001 submit date:2611281405 done date:2611281406 "
    text += f"stat:{stat} err:{err} text:"
    return ReceivedReceipt.of(CONNECTOR, parse_receipt(text.encode()))


async def apply(db: Database, *items: ReceivedReceipt) -> None:
    async with db.unit_of_work() as session:
        await apply_receipts(session, list(items), now=utc_now())


async def load(db: Database, message_id: str) -> Message:
    async with db.read_session() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        return message


async def count(db: Database, model: type[Any]) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_delivered_receipt_makes_the_message_delivered(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["0000A1"])
    await apply(db, receipt("0000A1", "DELIVRD"))
    message = await load(db, message_id)
    assert message.status == "delivered"
    assert message.delivered_at is not None
    assert message.next_attempt_at is None


@pytest.mark.parametrize("reported", ["A1", "a1", "000a1", "0000A1"])
async def test_receipt_ids_match_across_leading_zeros_and_case(
    db: Database, sms_account: AccountHandle, reported: str
) -> None:
    message_id = await sent_message(db, sms_account, ["0000A1"])
    await apply(db, receipt(reported, "DELIVRD"))
    assert (await load(db, message_id)).status == "delivered"


async def test_a_connector_that_reports_hex_ids_in_decimal_is_matched(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["0000A1"])
    text = b"id:161 sub:001 dlvrd:001 submit date:2611281405 done date:2611281406 stat:DELIVRD"
    item = ReceivedReceipt.of(CONNECTOR, parse_receipt(text), "hex_in_receipt_decimal")
    await apply(db, item)
    assert (await load(db, message_id)).status == "delivered"


async def test_an_early_receipt_never_lands_on_another_message_by_a_base_guess(
    db: Database, sms_account: AccountHandle
) -> None:
    # Given message A sent as id 200 and already delivered
    first = await sent_message(db, sms_account, ["0000000200"])
    await apply(db, receipt("0000000200", "DELIVRD"))
    # When the receipt of id 512 (0x200) comes before its own submit is recorded
    await apply(db, receipt("0000000512", "UNDELIV", "001"))
    # Then it waits for its own message, and A is untouched
    second = await sent_message(db, sms_account, ["0000000512"])
    assert (await load(db, first)).status == "delivered"
    assert (await load(db, second)).status == "undelivered"


async def test_a_receipt_that_overtakes_its_submit_resp_is_kept_and_applied_later(
    db: Database, sms_account: AccountHandle
) -> None:
    # Given a message claimed but whose submit_sm_resp is not recorded yet
    request = SendMessageRequest.model_validate(
        {"channel": "sms", "to": "+14155550100", "body": "Hello"}
    )
    prepared = prepare_message(ctx(sms_account), request, now=utc_now(), routes=ROUTES)
    writer = AcceptWriter(db, writers=1, batch_max=10, db_retry_s=1)
    await writer.start()
    await writer.submit(prepared)
    await writer.close()
    message_id = str(prepared.row["id"])
    async with db.unit_of_work() as session:
        await claim.claim_due_messages(session, owner=OWNER, limit=10, lease_s=30, now=utc_now())

    # When its receipt arrives first
    await apply(db, receipt("77", "DELIVRD"))
    # Then it is stored, not dropped
    assert await count(db, PendingReceipt) == 1
    assert (await load(db, message_id)).status == "sending"

    # And when the submit is recorded, the stored receipt is applied at once
    await record_sent(db, message_id, ["77"])
    assert (await load(db, message_id)).status == "delivered"
    assert await count(db, PendingReceipt) == 0


async def test_a_multipart_message_is_delivered_only_when_every_part_is(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["p1", "p2", "p3"])
    await apply(db, receipt("p1", "DELIVRD"), receipt("p3", "DELIVRD"))
    assert (await load(db, message_id)).status == "sent"
    await apply(db, receipt("p2", "DELIVRD"))
    assert (await load(db, message_id)).status == "delivered"


@pytest.mark.parametrize("order", [("p1", "p2"), ("p2", "p1")])
async def test_one_failed_part_is_never_overwritten_by_another_part_delivered(
    db: Database, sms_account: AccountHandle, order: tuple[str, str]
) -> None:
    message_id = await sent_message(db, sms_account, ["p1", "p2"])
    outcomes = {"p1": receipt("p1", "UNDELIV", "001"), "p2": receipt("p2", "DELIVRD")}
    for provider_id in order:
        await apply(db, outcomes[provider_id])
    message = await load(db, message_id)
    assert message.status == "undelivered"
    assert message.error_code == "unknown_subscriber"
    assert message.provider_error_code == "001"
    assert message.error_message is not None
    assert "part 1 of 2" in message.error_message


async def test_a_duplicate_receipt_changes_nothing(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["dup1"])
    await apply(db, receipt("dup1", "UNDELIV", "001"))
    before = await load(db, message_id)
    await apply(db, receipt("dup1", "DELIVRD"), receipt("dup1", "UNDELIV", "001"))
    after = await load(db, message_id)
    assert (after.status, after.event_seq) == (before.status, before.event_seq)
    assert after.status == "undelivered"


async def test_intermediate_states_do_not_settle_the_message(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["enr"])
    await apply(db, receipt("enr", "ENROUTE"), receipt("enr", "ACCEPTD"))
    assert (await load(db, message_id)).status == "sent"
    await apply(db, receipt("enr", "DELIVRD"))
    assert (await load(db, message_id)).status == "delivered"


async def test_a_receipt_for_an_unknown_id_is_kept_then_expires(
    settings: Settings, db: Database, sms_account: AccountHandle
) -> None:
    await apply(db, receipt("never-sent", "DELIVRD"))
    assert await count(db, PendingReceipt) == 1
    # A later pass that still finds no part keeps it while the TTL lasts...
    async with db.unit_of_work() as session:
        matched, expired, _ = await match_pending_receipts(session, now=utc_now(), ttl_s=3600)
    assert (matched, expired) == (0, 0)
    # ...and drops it after.
    async with db.unit_of_work() as session:
        later = utc_now() + timedelta(hours=2)
        matched, expired, _ = await match_pending_receipts(session, now=later, ttl_s=3600)
    assert (matched, expired) == (0, 1)
    assert await count(db, PendingReceipt) == 0


async def test_the_sweeper_applies_a_stored_receipt_once_its_part_exists(
    settings: Settings, db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["swept"])
    # A receipt stored as pending (as if it had arrived before the part was recorded)
    async with db.unit_of_work() as session:
        session.add(
            PendingReceipt(
                connector_id=CONNECTOR,
                provider_message_id="swept",
                id_key="swept",
                state="DELIVRD",
                status="delivered",
                received_at=utc_now(),
            )
        )
    done = await sweep_once(db, settings)
    assert done["matched"] == 1
    assert (await load(db, message_id)).status == "delivered"


async def test_a_message_without_receipt_times_out_as_undelivered(
    settings: Settings, db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["quiet"], validity_period_s=1)
    message = await load(db, message_id)
    assert message.status == "sent"
    assert message.next_attempt_at is not None
    assert message.expires_at is not None
    assert message.next_attempt_at >= message.expires_at
    async with db.unit_of_work() as session:
        session.add(message)
        message.next_attempt_at = utc_now() - timedelta(seconds=1)
    done = await sweep_once(db, settings)
    assert done["receipt_timeouts"] == 1
    message = await load(db, message_id)
    assert (message.status, message.error_code) == ("undelivered", "receipt_timeout")
    # A receipt that comes after the timeout is recorded on its part, and changes nothing
    await apply(db, receipt("quiet", "DELIVRD"))
    assert (await load(db, message_id)).status == "undelivered"


# ---------------------------------------------------------------------------------------------
# Content destroyed at delivery (policy §5), in the write that makes the message delivered


async def stored_content(db: Database, message_id: str) -> tuple[Any, Any]:
    """(the row's raw body, its content_purged_at), as stored."""
    async with db.read_session() as session:
        row = (
            await session.execute(
                select(Message.__table__.c.body, Message.content_purged_at).where(
                    Message.id == message_id
                )
            )
        ).one()
    return row[0], row[1]


async def test_a_delivered_receipt_destroys_the_content_in_the_same_write(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["00C0DE"])
    assert (await stored_content(db, message_id))[0] is not None

    await apply(db, receipt("00C0DE", "DELIVRD"))

    # No purge has run: the content is gone the moment the message is delivered.
    body, purged_at = await stored_content(db, message_id)
    message = await load(db, message_id)
    assert (message.status, body, message.body) == ("delivered", None, None)
    assert purged_at is not None
    assert purged_at == message.delivered_at


async def test_an_account_that_keeps_content_keeps_it_past_delivery(db: Database) -> None:
    keeper = await make_account(db, sms_number=NUMBER, retention={"content_days": 7})
    message_id = await sent_message(db, keeper, ["00C0DF"])

    await apply(db, receipt("00C0DF", "DELIVRD"))

    message = await load(db, message_id)
    assert (message.status, message.body) == ("delivered", "Hello")
    assert message.content_purged_at is None  # the purge destroys it after the 7 days


async def test_a_failed_receipt_keeps_the_content_for_the_failed_window(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["00C0E0"])

    await apply(db, receipt("00C0E0", "UNDELIV", err="001"))

    message = await load(db, message_id)
    assert (message.status, message.body, message.content_purged_at) == (
        "undelivered",
        "Hello",
        None,
    )


async def test_a_message_delivered_at_submit_loses_its_content_in_that_write(
    db: Database, sms_account: AccountHandle
) -> None:
    # Channels whose acceptance is the delivery (the recipient's mail server took it) record
    # `delivered` straight from `sending`, with the other outcomes of the batch.
    message_id = await claimed_message(db, sms_account)
    async with db.unit_of_work() as session:
        assert await claim.record_submitted(
            session,
            message_id=message_id,
            owner=OWNER,
            status=Status.DELIVERED,
            provider_message_id="250-ok",
            detail={},
            now=utc_now(),
        )

    body, purged_at = await stored_content(db, message_id)
    assert (body, (await load(db, message_id)).status) == (None, "delivered")
    assert purged_at is not None


# ---------------------------------------------------------------------------------------------
# Inbound


def fragment(
    payload: bytes,
    *,
    reference: int | None = None,
    total: int = 1,
    sequence: int = 1,
    data_coding: int = 0,
    destination: str = NUMBER,
) -> ReceivedInbound:
    return ReceivedInbound(
        CONNECTOR,
        InboundFragment(
            source="+14155550123",
            destination=destination,
            payload=payload,
            data_coding=data_coding,
            reference=reference,
            total=total,
            sequence=sequence,
        ),
    )


async def inbound_messages(db: Database, account: AccountHandle) -> list[Message]:
    async with db.read_session() as session:
        return list(
            await session.scalars(
                select(Message).where(
                    Message.account_id == account.account_id, Message.direction == "inbound"
                )
            )
        )


async def store(db: Database, *items: ReceivedInbound) -> list[bool]:
    async with db.unit_of_work() as session:
        return await store_inbound(session, list(items), now=utc_now())


async def test_a_multipart_inbound_sms_is_reassembled_in_order_whatever_order_it_came(
    db: Database, sms_account: AccountHandle
) -> None:
    encoded = [sms_text.encode(p, "GSM-7") for p in ("Hello ", "there, ", "friend")]
    parts = [fragment(e, reference=9, total=3, sequence=i + 1) for i, e in enumerate(encoded)]
    assert await store(db, parts[2]) == [True]
    assert await store(db, parts[0], parts[2]) == [True, True]  # a duplicate part is harmless
    assert await inbound_messages(db, sms_account) == []
    assert await count(db, InboundPart) == 2
    await store(db, parts[1])
    [message] = await inbound_messages(db, sms_account)
    assert message.body == "Hello there, friend"
    assert message.segments == 3
    assert await count(db, InboundPart) == 0
    async with db.read_session() as session:
        events = list(await session.scalars(select(MessageEvent.status)))
    assert "delivered" in events


async def test_inbound_parts_whose_siblings_never_come_are_stored_as_incomplete(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, fragment(b"first half ", reference=3, total=2, sequence=1))
    async with db.unit_of_work() as session:
        flushed = await expire_inbound_parts(
            session, now=utc_now() + timedelta(days=2), ttl_s=86_400
        )
    assert flushed == 1
    [message] = await inbound_messages(db, sms_account)
    assert message.body == "first half "
    assert message.meta == {"incomplete": True}


async def test_an_inbound_sms_in_an_unknown_encoding_is_kept_as_hex(
    db: Database, sms_account: AccountHandle
) -> None:
    await store(db, fragment(b"\x01\x02\xff", data_coding=0x04))
    [message] = await inbound_messages(db, sms_account)
    assert message.body == "0102ff"
    assert message.encoding == "binary"
    assert message.meta is not None
    assert message.meta["body_format"] == "hex"


async def test_an_inbound_sms_to_an_unowned_number_is_not_stored(
    db: Database, sms_account: AccountHandle
) -> None:
    assert await store(db, fragment(b"hi", destination="+13125550000")) == [False]
    assert await inbound_messages(db, sms_account) == []


# ---------------------------------------------------------------------------------------------
# The writer's answers


async def test_the_writer_answers_ok_only_after_storing(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["w1"])
    writer = DeliveryWriter(db)
    writer.start()
    try:
        pdu = DeliverSm(
            source_addr="14155550100",
            destination_addr="13125550177",
            esm_class=0x04,
            short_message=b"id:w1 sub:001 dlvrd:001 submit date:2611281405 "
            b"done date:2611281406 stat:DELIVRD err:000 text:",
        )
        assert await writer.submit(CONNECTOR, pdu) == CommandStatus.ESME_ROK
        # Answered ROK means it is in the database already
        assert (await load(db, message_id)).status == "delivered"
        mo = DeliverSm(source_addr="14155550100", destination_addr="13125550177")
        mo.short_message = b"hi"
        assert await writer.submit(CONNECTOR, mo) == CommandStatus.ESME_ROK
        stray = DeliverSm(source_addr="14155550100", destination_addr="13125550000")
        stray.short_message = b"hi"
        assert await writer.submit(CONNECTOR, stray) == CommandStatus.ESME_RINVDSTADR
        unreadable = DeliverSm(source_addr="1", destination_addr="2", esm_class=0x04)
        unreadable.short_message = b"garbage"
        assert await writer.submit(CONNECTOR, unreadable) == CommandStatus.ESME_ROK
    finally:
        await writer.close()


async def test_the_writer_answers_a_temporary_error_when_the_database_is_away(
    settings: Settings, tmp_path: Any
) -> None:
    away = Database(
        settings.model_copy(
            update={"database_url": f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db"}
        )
    )
    writer = DeliveryWriter(away)
    writer.start()
    try:
        pdu = DeliverSm(source_addr="14155550100", destination_addr="13125550177", esm_class=4)
        pdu.tlvs[Tag.RECEIPTED_MESSAGE_ID] = b"abc\x00"
        pdu.tlvs[Tag.MESSAGE_STATE] = b"\x02"
        # The SMSC is told to send it again, never that we have it
        assert await writer.submit(CONNECTOR, pdu) == CommandStatus.ESME_RX_T_APPN
    finally:
        await writer.close()
        await away.dispose()


async def test_parts_keep_their_own_outcome(db: Database, sms_account: AccountHandle) -> None:
    message_id = await sent_message(db, sms_account, ["k1", "k2"])
    await apply(db, receipt("k2", "UNDELIV", "006"))
    async with db.read_session() as session:
        parts = list(
            await session.scalars(
                select(MessagePart)
                .where(MessagePart.message_id == message_id)
                .order_by(MessagePart.part)
            )
        )
    assert [(p.status, p.error_code) for p in parts] == [
        ("sent", None),
        ("undelivered", "absent_subscriber"),
    ]


async def test_a_number_registered_without_plus_still_receives_its_inbound(db: Database) -> None:
    # Numbers are stored in E.164 whichever way the operator typed them
    account = await make_account(db, sms_number="13125550176")
    assert await store(db, fragment(b"hi", destination="+13125550176")) == [True]
    [message] = await inbound_messages(db, account)
    assert message.to_addr == "+13125550176"


async def test_an_smsc_that_reuses_an_id_sends_the_new_receipt_to_the_new_message(
    db: Database, sms_account: AccountHandle
) -> None:
    # Given an old message delivered under id 1 (an SMSC whose counter started again)
    old = await sent_message(db, sms_account, ["0000000001"])
    await apply(db, receipt("0000000001", "DELIVRD"))
    # When id 1 comes back for a new message, and its receipt overtakes its submit_sm_resp
    await apply(db, receipt("0000000001", "UNDELIV", "001"))
    new = await sent_message(db, sms_account, ["0000000001"])
    # Then the receipt reaches the new message, and the old one is untouched
    assert (await load(db, old)).status == "delivered"
    assert (await load(db, new)).status == "undelivered"


async def test_a_long_vendor_error_text_does_not_stop_the_receipt(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await sent_message(db, sms_account, ["long1"])
    await apply(db, receipt("long1", "UNDELIV", "001 vendor-reason:" + "x" * 80))
    message = await load(db, message_id)
    assert message.status == "undelivered"
    assert message.provider_error_code is not None
    assert message.provider_error_code.startswith("001")
    assert len(message.provider_error_code) <= 40
