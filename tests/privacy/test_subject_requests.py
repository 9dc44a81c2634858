"""Privacy: data-subject requests (policy §9) — access and portability exports, erasure (with
messages in flight), restriction, deadlines and their extension, and the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import zipfile
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.errors import Conflict, ValidationFailed
from amnex.messages.models import Message, MessageEvent
from amnex.messages.service import address_columns
from amnex.privacy import requests as dsr
from amnex.privacy.audit import AuditEntry, AuditPersonal, verify_audit_chain
from amnex.privacy.keys import blind_index, open_address
from amnex.privacy.records import build_records
from amnex.privacy.subjects import ERASED
from amnex.recipients import service as recipients
from amnex.recipients.models import ConsentEntry, OptOut, OptOutEvent
from amnex.webhooks.models import WebhookDelivery, WebhookEvent
from amnex.worker_process import purge_forever
from support import AccountHandle, eventually, make_account

SUBJECT = "+13125550149"
OTHER = "+13125550177"
ACTOR = dsr.Actor(audit="api_key:key_test", pseudonym="api_key:key_test")


async def add_message(
    db: Database,
    account_id: str,
    *,
    to: str = SUBJECT,
    status: str = "delivered",
    direction: str = "outbound",
    sender: str = "+13125550100",
) -> str:
    """A stored SMS with one event; inbound messages come from `to`."""
    now = utc_now()
    message_id = new_id("msg")
    from_addr, to_addr = (sender, to) if direction == "outbound" else (to, sender)
    async with db.unit_of_work() as session:
        session.add(
            Message(
                id=message_id,
                account_id=account_id,
                channel="sms",
                direction=direction,
                **address_columns(
                    account_id, direction=direction, from_addr=from_addr, to_addr=to_addr
                ),
                category="transactional",
                status=status,
                segments=1,
                meta={"order": "A-1"},
                created_at=now,
                updated_at=now,
                event_seq=1,
            )
        )
        await session.flush()
        session.add(
            MessageEvent(message_id=message_id, account_id=account_id, seq=1, status=status, at=now)
        )
    return message_id


async def file(
    db: Database,
    settings: Settings,
    account_id: str | None,
    type_: str,
    address: str = SUBJECT,
) -> dsr.SubjectRequest:
    async with db.unit_of_work() as session:
        records = await build_records(session, settings, None)
        return await dsr.file_subject_request(
            session,
            account_id=account_id,
            type_=type_,
            address=address,
            note=None,
            actor=ACTOR,
            records=records,
        )


async def export_of(db: Database, request_id: str) -> zipfile.ZipFile:
    async with db.unit_of_work() as session:
        request = await dsr.get_subject_request_or_raise(
            session, request_id, None, any_account=True
        )
        data = await dsr.get_export_or_raise(session, request, ACTOR)
    return zipfile.ZipFile(io.BytesIO(data))


def table(archive: zipfile.ZipFile, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    rows = json.loads(archive.read(f"{name}.json"))
    header = next(csv.reader(io.StringIO(archive.read(f"{name}.csv").decode())))
    return rows, header


async def test_an_access_export_holds_the_subjects_records_in_the_documented_schema(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given a recipient the account wrote to and heard from, who opted out and consented
    sent = await add_message(db, account.account_id)
    heard = await add_message(db, account.account_id, direction="inbound")
    await add_message(db, account.account_id, to=OTHER)
    async with db.unit_of_work() as session:
        await recipients.record_consent(
            session,
            account_id=account.account_id,
            channel="sms",
            address=SUBJECT,
            purpose="transactional",
            action="granted",
            source="api",
            occurred_at=utc_now(),
            recorded_by="test",
            text_shown="Order updates by SMS",
        )
        await recipients.add_opt_out(
            session, account_id=account.account_id, channel="sms", address=SUBJECT, source="api"
        )
        # ... and a webhook told the account the message was delivered
        session.add(
            WebhookEvent(
                id="evt_sent",
                account_id=account.account_id,
                type="message.delivered",
                subject_id=sent,
                seq=2,
                data={"id": sent},
                created_at=utc_now(),
            )
        )
        await session.flush()
        session.add(
            WebhookDelivery(
                id="whd_sent",
                event_id="evt_sent",
                account_id=account.account_id,
                endpoint_id="whe_1",
                subject_id=sent,
                seq=2,
                status="delivered",
                attempts=1,
                last_outcome="delivered",
                last_status_code=200,
                created_at=utc_now(),
                updated_at=utc_now(),
            )
        )

    # When the account files an access request for them
    request = await file(db, settings, account.account_id, "access", "+1 (312) 555-0149")
    archive = await export_of(db, request.id)

    # Then it completes with a ZIP of JSON and CSV, metadata only, and the records of processing
    assert request.status == "completed"
    assert sorted(archive.namelist()) == [
        "consents.csv",
        "consents.json",
        "manifest.json",
        "messages.csv",
        "messages.json",
        "opt_outs.csv",
        "opt_outs.json",
        "webhook_deliveries.csv",
        "webhook_deliveries.json",
    ]
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["schema_version"] == dsr.EXPORT_SCHEMA_VERSION
    assert manifest["subject"] == {"kind": "phone", "address": SUBJECT}
    assert manifest["counts"] == {
        "messages": 2,
        "opt_outs": 1,
        "consents": 1,
        "webhook_deliveries": 1,
    }
    (delivery,) = json.loads(archive.read("webhook_deliveries.json"))
    assert (delivery["type"], delivery["about"], delivery["status"]) == (
        "message.delivered",
        sent,
        "delivered",
    )
    assert manifest["records_of_processing"]["purposes"]
    assert "right_to_complain" in manifest["records_of_processing"]
    messages, header = table(archive, "messages")
    assert header == manifest["files"]["messages"]
    assert [m["id"] for m in messages] == [sent, heard]
    assert [m["direction"] for m in messages] == ["outbound", "inbound"]
    assert all("body" not in m for m in messages)
    opt_outs, _ = table(archive, "opt_outs")
    consents, _ = table(archive, "consents")
    assert [o["address"] for o in opt_outs] == [SUBJECT]
    assert [c["text_shown"] for c in consents] == ["Order updates by SMS"]
    every_file = b"".join(archive.read(name) for name in archive.namelist())
    assert OTHER.encode() not in every_file
    assert request.result is not None
    assert request.result["counts"] == manifest["counts"]
    assert request.result["export_bytes"] > 0
    assert request.address is None
    assert request.address_masked != SUBJECT


async def test_a_request_for_an_unknown_address_completes_with_an_empty_export(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    request = await file(db, settings, account.account_id, "portability", "Nobody@Example.com")
    archive = await export_of(db, request.id)

    assert request.status == "completed"
    assert json.loads(archive.read("manifest.json"))["subject"] == {
        "kind": "email",
        "address": "nobody@example.com",
    }
    for name in ("messages", "opt_outs", "consents"):
        rows, header = table(archive, name)
        assert rows == []
        assert header


async def test_erasure_anonymises_messages_keeps_the_opt_out_marker_and_reports_what_it_removed(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given a recipient with two messages, a consent, and a later opt-out with its evidence
    sent = await add_message(db, account.account_id)
    heard = await add_message(db, account.account_id, direction="inbound")
    other = await add_message(db, account.account_id, to=OTHER)
    async with db.unit_of_work() as session:
        await recipients.record_consent(
            session,
            account_id=account.account_id,
            channel="sms",
            address=SUBJECT,
            purpose="transactional",
            action="granted",
            source="api",
            occurred_at=utc_now(),
            recorded_by="test",
            text_shown="Order updates",
        )
        await recipients.add_opt_out(
            session,
            account_id=account.account_id,
            channel="sms",
            address=SUBJECT,
            source="free_text_reply",
            evidence={"text": "stop texting me"},
        )

    # When the account files an erasure request
    request = await file(db, settings, account.account_id, "erasure")

    # Then the messages stay only as billing lines, without the address or anything personal
    assert request.status == "completed"
    async with db.read_session() as session:
        rows = {m.id: m for m in await session.scalars(select(Message))}
        events = list(await session.scalars(select(MessageEvent.message_id)))
        markers = list(await session.scalars(select(OptOut)))
        history = list(await session.scalars(select(OptOutEvent)))
        chain = await recipients.verify_chain(session, account.account_id)
        consents = list(await session.scalars(select(ConsentEntry)))
    assert rows[sent].to_addr == ERASED
    assert rows[heard].from_addr == ERASED
    assert rows[sent].meta is None
    assert rows[sent].segments == 1
    assert open_address(rows[other].to_addr) == OTHER
    assert rows[sent].peer_index is None
    assert events == [other]
    # the opt-out stays as the suppression marker, its evidence emptied; its history goes
    # (only its blind index: the sealed address goes too)
    assert [(m.address_index, m.address, m.evidence) for m in markers] == [
        (blind_index(SUBJECT), None, None)
    ]
    assert history == []
    # the consent ledger still verifies: its entries are kept without their personal fields
    assert chain.valid
    assert [(c.address, c.address_index, c.evidence, c.personal_salt) for c in consents] == [
        (None, None, None, None)
    ]
    assert request.result is not None
    assert request.result["removed"] == {
        "message_events": 2,
        "message_parts": 0,
        "opt_out_events": 1,
        "inbound_parts": 0,
        "webhook_events": 0,
    }
    assert request.result["anonymised"] == {"messages": 2, "consent_entries": 1}
    assert request.result["retained"]["opt_outs"]["rows"] == 1
    assert request.result["retained"]["consent_entries"]["rows"] == 1
    assert request.address is None


async def test_erasure_cancels_queued_messages_and_waits_for_one_being_sent(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given one message queued and one being sent to the subject
    queued = await add_message(db, account.account_id, status="queued")
    sending = await add_message(db, account.account_id, status="sending")

    # When an erasure is filed
    request = await file(db, settings, account.account_id, "erasure")

    # Then the queued message is canceled, and the request waits for the one in flight
    assert request.status == "in_progress"
    assert request.result == {"canceled_messages": 1, "waiting_for_messages": 1}
    async with db.read_session() as session:
        statuses = {
            m.id: (m.status, open_address(m.to_addr))
            for m in await session.scalars(select(Message))
        }
    assert statuses[queued] == ("canceled", SUBJECT)
    assert statuses[sending] == ("sending", SUBJECT)

    # When the message is delivered and the request runs again
    async with db.unit_of_work() as session:
        (await session.get_one(Message, sending)).status = "delivered"
    async with db.unit_of_work() as session:
        records = await build_records(session, settings, None)
        done = await dsr.process_open_requests(session, ACTOR, records)
        again = await dsr.get_subject_request_or_raise(session, request.id, account.account_id)

    # Then it completes, and both messages are erased
    assert done == 1
    assert again.status == "completed"
    assert again.result is not None
    assert again.result["anonymised"] == {"messages": 2, "consent_entries": 0}
    assert again.result["canceled_messages"] == 1
    async with db.read_session() as session:
        assert set(await session.scalars(select(Message.to_addr))) == {ERASED}


async def test_the_worker_finishes_a_waiting_erasure_after_its_purge(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    sending = await add_message(db, account.account_id, status="sending")
    request = await file(db, settings, account.account_id, "erasure")
    async with db.unit_of_work() as session:
        (await session.get_one(Message, sending)).status = "delivered"

    chore = asyncio.create_task(
        purge_forever(db, settings.model_copy(update={"purge_interval_s": 0.05}))
    )

    async def status() -> str:
        async with db.read_session() as session:
            found = await dsr.get_subject_request_or_raise(session, request.id, account.account_id)
            return found.status

    try:
        assert await eventually(status, lambda s: s == "completed") == "completed"
    finally:
        chore.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await chore


@pytest.mark.parametrize("type_", ["restriction", "objection"])
async def test_restriction_records_an_all_channel_opt_out_the_gate_honours(
    settings: Settings, db: Database, account: AccountHandle, type_: str
) -> None:
    request = await file(db, settings, account.account_id, type_)

    async with db.read_session() as session:
        email = await recipients.is_suppressed(session, account.account_id, "sms", SUBJECT)
        other = await recipients.is_suppressed(session, account.account_id, "sms", OTHER)
    assert request.status == "completed"
    assert email is not None
    assert (email.channel, email.source) == ("all", "subject_request")
    assert email.evidence == {"request_id": request.id}
    assert other is None


async def test_the_due_date_is_a_month_and_extends_once_by_at_most_two_months(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    await add_message(db, account.account_id, status="sending")
    request = await file(db, settings, account.account_id, "erasure")
    assert request.due_at - request.received_at == timedelta(days=30)

    async with db.unit_of_work() as session:
        found = await dsr.get_subject_request_or_raise(session, request.id, account.account_id)
        with pytest.raises(ValidationFailed):
            await dsr.extend_subject_request(session, found, days=62, reason="x", actor=ACTOR)
        await dsr.extend_subject_request(
            session, found, days=61, reason="complex request", actor=ACTOR
        )
        with pytest.raises(Conflict):
            await dsr.extend_subject_request(session, found, days=1, reason="x", actor=ACTOR)
        extended_until, reason = found.extended_until, found.extension_reason

    assert extended_until == request.due_at + timedelta(days=61)
    assert reason == "complex request"


async def test_every_step_is_audited_with_the_address_kept_apart_from_the_chain(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    access = await file(db, settings, account.account_id, "access")
    erasure = await file(db, settings, account.account_id, "erasure")

    async with db.read_session() as session:
        entries = list(
            await session.execute(
                select(AuditEntry.target_id, AuditEntry.action, AuditPersonal.detail)
                .outerjoin(AuditPersonal, AuditPersonal.entry_id == AuditEntry.id)
                .where(AuditEntry.target_type == "subject_request")
                .order_by(AuditEntry.seq)
            )
        )
        hashed = list(await session.scalars(select(AuditEntry.detail)))
        report = await verify_audit_chain(session, account.account_id)
        events = await dsr.request_events(session, access.id)

    assert [(t, a) for t, a, _ in entries] == [
        (access.id, "subject_request.received"),
        (access.id, "subject_request.in_progress"),
        (access.id, "subject_request.completed"),
        (erasure.id, "subject_request.received"),
        (erasure.id, "subject_request.in_progress"),
        (erasure.id, "subject_request.completed"),
    ]
    # the access request's trail keeps the address apart; the erasure's lost it with the rest
    assert entries[0][2] == {"address": SUBJECT}
    assert all(personal is None for t, _, personal in entries if t == erasure.id)
    assert SUBJECT not in json.dumps(hashed)
    assert report.valid
    assert [e.action for e in events] == ["received", "in_progress", "completed"]


async def test_an_operator_request_without_an_account_covers_every_account(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other Shop")
    await add_message(db, account.account_id)
    await add_message(db, other.account_id)

    mine = await file(db, settings, account.account_id, "access")
    platform = await file(db, settings, None, "access")

    assert (
        json.loads((await export_of(db, mine.id)).read("manifest.json"))["counts"]["messages"] == 1
    )
    assert (
        json.loads((await export_of(db, platform.id)).read("manifest.json"))["counts"]["messages"]
        == 2
    )
