"""Webhooks through the whole system: status changes, inbound messages and opt-outs reach a
real receiver on loopback in order, signed so the standardwebhooks library verifies them;
retries, superseding, disabling, redirects, unsafe destinations and a killed worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from standardwebhooks import Webhook

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.privacy.crypto import SecretBox
from amnex.privacy.retention import purge_once
from amnex.webhooks.models import (
    Notice,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from amnex.webhooks.sender import WebhookSender, secret_context
from amnex.webhooks.signing import new_secret
from receivers import Receiver
from support import (
    AccountHandle,
    StartSmsc,
    add_smpp_route,
    eventually,
    make_account,
    serve_api,
    serve_system,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Webhooks to a receiver on this machine over plain HTTP, as `amnex dev` allows."""
    return settings.model_copy(update={"webhook_allow_loopback": True, "dev_mode": True})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def senders() -> AsyncIterator[list[WebhookSender]]:
    """Senders a test drives round by round (closed at the end, before the receiver)."""
    made: list[WebhookSender] = []
    yield made
    for sender in made:
        await sender.aclose()


@pytest.fixture
def new_sender(
    db: Database, hook_settings: Settings, senders: list[WebhookSender], receiver: Receiver
) -> Callable[[], WebhookSender]:
    def make() -> WebhookSender:
        sender = WebhookSender(db, hook_settings, box=SecretBox.from_settings(hook_settings))
        senders.append(sender)
        return sender

    return make


async def add_endpoint(
    db: Database,
    settings: Settings,
    account: AccountHandle,
    url: str,
    event_types: list[str] | None = None,
) -> tuple[str, str]:
    """An enabled endpoint, stored as the API stores it; its id and secret."""
    endpoint_id, secret, now = new_id("whe"), new_secret(), utc_now()
    async with db.unit_of_work() as session:
        session.add(
            WebhookEndpoint(
                id=endpoint_id,
                account_id=account.account_id,
                url=url,
                event_types=event_types,
                enabled=True,
                secret=SecretBox.from_settings(settings).seal(
                    secret, context=secret_context(endpoint_id)
                ),
                max_concurrency=4,
                created_at=now,
                updated_at=now,
            )
        )
    return endpoint_id, secret


def verified(received: Any, secret: str) -> dict[str, Any]:
    """The payload, verified with the reference Standard Webhooks library."""
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


def email(to: str = "reader@example.com") -> dict[str, str]:
    return {"channel": "email", "to": to, "subject": "Code", "body": "Your code is 1234"}


SMS_NUMBER = "+13125550142"
RECIPIENT = "+14155550100"


async def types_received(receiver: Receiver) -> list[str]:
    return [json.loads(r.body)["type"] for r in receiver.requests]


async def test_an_sms_is_queued_sent_and_delivered_in_order_and_a_stop_is_an_opt_out(
    hook_settings: Settings, db: Database, receiver: Receiver, start_smsc: StartSmsc
) -> None:
    smsc = await start_smsc(receipt_delay_s=0.05)
    settings = hook_settings.model_copy(update={"route_cache_ttl_s": 0.2})
    account = await make_account(db, sms_number=SMS_NUMBER)
    await add_smpp_route(db, settings, host=smsc.host, port=smsc.port, response_timeout_s=1.0)
    _, secret = await add_endpoint(db, settings, account, receiver.url("/hooks"))
    async with serve_system(settings, db) as api:
        sent = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={"channel": "sms", "to": RECIPIENT, "body": "Your code is 1234"},
        )
        message_id = sent.json()["id"]
        await eventually(
            lambda: types_received(receiver),
            lambda t: "message.delivered" in t,
            timeout_s=20,
        )
        # When the recipient answers STOP
        await smsc.inject_mo(RECIPIENT, SMS_NUMBER, "STOP")
        await eventually(
            lambda: types_received(receiver),
            lambda t: "optout.created" in t and "message.inbound" in t,
            timeout_s=20,
        )

    payloads = [verified(r, secret) for r in receiver.requests]
    mine = [p for p in payloads if p["data"].get("id") == message_id]
    # Then queued, sent, delivered arrived in that order, each verified by the library
    assert [p["type"] for p in mine] == ["message.queued", "message.sent", "message.delivered"]
    assert [p["data"]["event"]["sequence"] for p in mine] == sorted(
        p["data"]["event"]["sequence"] for p in mine
    )
    assert set(mine[0]) == {"type", "timestamp", "data"}
    assert mine[-1]["data"]["status"] == "delivered"
    assert mine[-1]["data"]["to"] == RECIPIENT
    assert mine[-1]["data"]["segments"] == 1
    # ... and the STOP: the inbound message (a link to its text, not the text) and the opt-out
    (inbound,) = [p for p in payloads if p["type"] == "message.inbound"]
    (opt_out,) = [p for p in payloads if p["type"] == "optout.created"]
    assert inbound["data"]["from"] == RECIPIENT
    assert inbound["data"]["links"]["message"].startswith("/v1/messages/msg_")
    assert (opt_out["data"]["address"], opt_out["data"]["source"]) == (RECIPIENT, "keyword")
    # ... never the content, and each event its own webhook-id
    assert all(b"1234" not in r.body and b"STOP" not in r.body for r in receiver.requests)
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == len(receiver.requests)
    async with db.read_session() as session:
        attempts = list(await session.scalars(select(WebhookAttempt)))
    assert {(a.outcome, a.status_code) for a in attempts} == {("delivered", 200)}


async def test_an_endpoint_gets_only_the_types_it_asked_for(
    hook_settings: Settings, db: Database, account: AccountHandle, receiver: Receiver
) -> None:
    await add_endpoint(
        db, hook_settings, account, receiver.url("/only"), event_types=["message.delivered"]
    )
    async with serve_system(hook_settings, db) as api:
        await api.client.post("/v1/messages", headers=account.headers, json=email())
        await eventually(lambda: types_received(receiver), lambda t: len(t) == 1, timeout_s=20)
    # (an email goes queued → sending → delivered: only the last is asked for)
    assert await types_received(receiver) == ["message.delivered"]


async def test_an_opt_out_through_the_api_is_an_optout_created_event(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    _, secret = await add_endpoint(
        db, hook_settings, account, receiver.url("/optouts"), event_types=["optout.created"]
    )
    sender = new_sender()
    async with serve_api(hook_settings, db) as api:
        await api.client.post(
            "/v1/opt-outs",
            headers=account.headers,
            json={"channel": "sms", "address": "+14155550177"},
        )
    await sender.run_once()
    await sender.run_once()
    await sender.drain()
    (received,) = receiver.requests
    payload = verified(received, secret)
    assert payload["type"] == "optout.created"
    assert payload["data"]["address"] == "+14155550177"
    assert payload["data"]["channel"] == "sms"


async def _one_delivery(db: Database) -> WebhookDelivery:
    async with db.read_session() as session:
        (delivery,) = list(await session.scalars(select(WebhookDelivery)))
    return delivery


async def _send_one(db: Database, settings: Settings, account: AccountHandle) -> str:
    """One message accepted: its `message.queued` event is owed."""
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email())
    return str(sent.json()["id"])


async def test_a_500_is_retried_later_with_the_same_webhook_id_then_delivered(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    receiver.answer_with = 500
    await add_endpoint(db, hook_settings, account, receiver.url("/flaky"))
    await _send_one(db, hook_settings, account)
    sender = new_sender()
    await sender.run_once()
    await sender.drain()
    failed = await _one_delivery(db)
    # Then it is pending again, due later (backoff), with one attempt logged
    assert (failed.status, failed.attempts, failed.last_status_code) == ("pending", 1, 500)
    assert failed.next_attempt_at is not None
    assert failed.next_attempt_at > utc_now()
    # When the receiver recovers and the retry is due
    receiver.answer_with = 200
    async with db.unit_of_work() as session:
        await session.execute(update(WebhookDelivery).values(next_attempt_at=utc_now()))
    await sender.run_once()
    await sender.drain()
    done = await _one_delivery(db)
    assert (done.status, done.attempts) == ("delivered", 2)
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    async with db.read_session() as session:
        log = list(await session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)))
    assert [(a.attempt, a.outcome, a.status_code) for a in log] == [
        (1, "http_error", 500),
        (2, "delivered", 200),
    ]


@pytest.mark.parametrize(
    ("status", "outcome"), [(302, "redirect_refused"), (400, "http_error")], ids=["302", "400"]
)
async def test_a_redirect_or_a_400_fails_at_once_and_is_logged(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    status: int,
    outcome: str,
    new_sender: Callable[[], WebhookSender],
) -> None:
    path = "/redirect" if status == 302 else f"/status/{status}"
    await add_endpoint(db, hook_settings, account, receiver.url(path))
    await _send_one(db, hook_settings, account)
    sender = new_sender()
    await sender.run_once()
    await sender.drain()
    delivery = await _one_delivery(db)
    assert (delivery.status, delivery.last_outcome) == ("failed", outcome)
    assert receiver.paths() == [path]  # the redirect was not followed


async def test_a_410_disables_the_endpoint_with_a_notice(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    endpoint_id, _ = await add_endpoint(db, hook_settings, account, receiver.url("/status/410"))
    await _send_one(db, hook_settings, account)
    sender = new_sender()
    await sender.run_once()
    await sender.drain()
    async with db.read_session() as session:
        endpoint = await session.get_one(WebhookEndpoint, endpoint_id)
        notices = list(await session.scalars(select(Notice)))
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "gone")
    assert [(n.kind, n.detail["endpoint_id"]) for n in notices] == [  # type: ignore[index]
        ("webhook_endpoint.disabled", endpoint_id)
    ]


async def test_a_day_of_failures_disables_the_endpoint_and_cancels_what_it_was_owed(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    receiver.answer_with = 503
    endpoint_id, _ = await add_endpoint(db, hook_settings, account, receiver.url("/down"))
    async with db.unit_of_work() as session:
        await session.execute(
            update(WebhookEndpoint).values(failing_since=utc_now() - timedelta(hours=25))
        )
    await _send_one(db, hook_settings, account)
    sender = new_sender()
    await sender.run_once()
    await sender.drain()
    async with db.read_session() as session:
        endpoint = await session.get_one(WebhookEndpoint, endpoint_id)
        delivery = (await session.scalars(select(WebhookDelivery))).one()
        notice = (await session.scalars(select(Notice))).one()
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "failing")
    assert delivery.status == "canceled"
    assert "failed for a day" in notice.title


async def test_an_endpoint_resolving_to_a_private_address_is_never_contacted(
    settings: Settings,
    db: Database,
    account: AccountHandle,
    new_sender: Callable[[], WebhookSender],
) -> None:
    # (stored directly: the API refuses such a URL when the endpoint is created)
    await add_endpoint(db, settings, account, "https://10.0.0.1/hooks")
    await _send_one(db, settings, account)
    sender = new_sender()
    await sender.run_once()
    await sender.drain()
    delivery = await _one_delivery(db)
    assert (delivery.status, delivery.last_outcome) == ("failed", "unsafe_destination")


async def test_a_delivery_a_killed_worker_held_is_sent_again_with_the_same_webhook_id(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    _, secret = await add_endpoint(db, hook_settings, account, receiver.url("/again"))
    await _send_one(db, hook_settings, account)
    sender = new_sender()
    async with db.unit_of_work() as session:
        from amnex.webhooks.outbox import drain_outbox

        await drain_outbox(session, now=utc_now())
        # A worker claimed it and died before recording anything: its lease ran out
        await session.execute(
            update(WebhookDelivery).values(
                status="delivering", lease_until=utc_now() - timedelta(seconds=1)
            )
        )
        event_id = (await session.scalars(select(WebhookEvent.id))).one()
    await sender.run_once()
    await sender.drain()
    (received,) = receiver.requests
    assert received.headers["webhook-id"] == event_id
    assert verified(received, secret)["type"] == "message.queued"
    assert (await _one_delivery(db)).status == "delivered"


async def owe(
    db: Database,
    account: AccountHandle,
    endpoint_id: str,
    message_id: str,
    seq: int,
    type_: str,
    due: datetime,
    attempts: int = 0,
) -> None:
    """An event of `message_id` owed to the endpoint, due at `due`, tried `attempts` times."""
    now = utc_now()
    async with db.unit_of_work() as session:
        event = WebhookEvent(
            id=new_id("evt"),
            account_id=account.account_id,
            type=type_,
            subject_id=message_id,
            seq=seq,
            data={"id": message_id},
            created_at=now,
        )
        session.add(event)
        await session.flush()
        session.add(
            WebhookDelivery(
                id=new_id("whd"),
                event_id=event.id,
                account_id=account.account_id,
                endpoint_id=endpoint_id,
                subject_id=message_id,
                seq=seq,
                status="pending",
                attempts=attempts,
                next_attempt_at=due,
                first_attempt_at=now if attempts else None,
                created_at=now,
                updated_at=now,
            )
        )


async def test_an_older_event_that_failed_is_superseded_by_a_newer_one(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    endpoint_id, _ = await add_endpoint(db, hook_settings, account, receiver.url("/ok"))
    now = utc_now()
    # The older one failed three times and is due later than the newer one
    await owe(db, account, endpoint_id, "msg_1", 2, "message.sent", now + timedelta(hours=1), 3)
    await owe(db, account, endpoint_id, "msg_1", 4, "message.delivered", now)
    sender = new_sender()
    await sender.run_once()
    await sender.drain()
    async with db.read_session() as session:
        rows = {d.seq: d.status for d in await session.scalars(select(WebhookDelivery))}
    assert rows == {2: "superseded", 4: "delivered"}
    assert [json.loads(r.body)["type"] for r in receiver.requests] == ["message.delivered"]


async def test_a_newer_event_waits_while_an_older_one_has_not_been_tried(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    endpoint_id, _ = await add_endpoint(db, hook_settings, account, receiver.url("/ok"))
    now = utc_now()
    # The newer one is due first, yet goes second
    later = now + timedelta(milliseconds=1)
    await owe(db, account, endpoint_id, "msg_2", 1, "message.queued", later)
    await owe(db, account, endpoint_id, "msg_2", 2, "message.sent", now)
    sender = new_sender()
    for _ in range(4):
        await sender.run_once()
        await sender.drain()
    assert [json.loads(r.body)["type"] for r in receiver.requests] == [
        "message.queued",
        "message.sent",
    ]


async def test_the_delivery_log_is_kept_for_its_retention_then_purged(
    hook_settings: Settings, db: Database, account: AccountHandle
) -> None:
    old, now = utc_now() - timedelta(days=31), utc_now()
    async with db.unit_of_work() as session:
        for name, at, status in (("done", old, "delivered"), ("owed", old, "pending")):
            session.add(
                WebhookEvent(
                    id=f"evt_{name}",
                    account_id=account.account_id,
                    type="message.delivered",
                    subject_id=f"msg_{name}",
                    seq=1,
                    data={"id": f"msg_{name}"},
                    created_at=at,
                )
            )
            await session.flush()
            session.add(
                WebhookDelivery(
                    id=f"whd_{name}",
                    event_id=f"evt_{name}",
                    account_id=account.account_id,
                    subject_id=f"msg_{name}",
                    seq=1,
                    status=status,
                    attempts=1,
                    next_attempt_at=now if status == "pending" else None,
                    created_at=at,
                    updated_at=at,
                )
            )
            session.add(
                WebhookAttempt(
                    delivery_id=f"whd_{name}",
                    event_id=f"evt_{name}",
                    account_id=account.account_id,
                    at=at,
                    attempt=1,
                    outcome="delivered" if status == "delivered" else "http_error",
                    status_code=200 if status == "delivered" else 503,
                    latency_ms=12,
                )
            )

    dry = await purge_once(db, hook_settings, dry_run=True)
    done = await purge_once(db, hook_settings)

    # two attempts, and the one event nothing is owed for any more
    assert dry.counts["webhook_log"] == 3
    assert done.counts["webhook_log"] == 3
    async with db.read_session() as session:
        events = list(await session.scalars(select(WebhookEvent.id)))
        attempts = list(await session.scalars(select(WebhookAttempt.id)))
    # The log is gone; the event still owed stays until it is delivered or given up
    assert events == ["evt_owed"]
    assert attempts == []


async def test_a_status_callback_gets_the_messages_events_signed_with_the_accounts_secret(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    # The account's endpoint wants nothing of messages; the message names its own callback
    _, secret = await add_endpoint(
        db, hook_settings, account, receiver.url("/endpoint"), event_types=["optout.created"]
    )
    async with serve_api(hook_settings, db) as api:
        await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={**email(), "status_callback": receiver.url("/callback")},
        )
    sender = new_sender()
    await sender.run_once()
    await sender.drain()
    (received,) = receiver.requests
    assert received.path == "/callback"
    assert verified(received, secret)["type"] == "message.queued"


async def test_a_receiver_that_hangs_is_cut_at_the_deadline_and_retried_later(
    db: Database,
    hook_settings: Settings,
    account: AccountHandle,
    receiver: Receiver,
    senders: list[WebhookSender],
) -> None:
    settings = hook_settings.model_copy(update={"webhook_timeout_s": 0.3})
    await add_endpoint(db, settings, account, receiver.url("/hang"))
    await _send_one(db, settings, account)
    sender = WebhookSender(db, settings, box=SecretBox.from_settings(settings))
    senders.append(sender)
    await sender.run_once()
    await sender.drain(timeout_s=5)
    delivery = await _one_delivery(db)
    assert (delivery.status, delivery.last_outcome, delivery.attempts) == ("pending", "timeout", 1)
    async with db.read_session() as session:
        (attempt,) = list(await session.scalars(select(WebhookAttempt)))
    assert attempt.latency_ms < 2000


async def test_during_a_rotation_both_secrets_sign_each_delivery(
    hook_settings: Settings,
    db: Database,
    account: AccountHandle,
    receiver: Receiver,
    new_sender: Callable[[], WebhookSender],
) -> None:
    endpoint_id, new = await add_endpoint(db, hook_settings, account, receiver.url("/rotating"))
    old = new_secret()
    async with db.unit_of_work() as session:
        await session.execute(
            update(WebhookEndpoint).values(
                previous_secret=SecretBox.from_settings(hook_settings).seal(
                    old, context=secret_context(endpoint_id)
                ),
                previous_secret_expires_at=utc_now() + timedelta(hours=1),
            )
        )
    await _send_one(db, hook_settings, account)
    sender = new_sender()
    await sender.run_once()
    await sender.drain()
    (received,) = receiver.requests
    # A receiver still on the old secret and one already on the new both verify it
    assert verified(received, old) == verified(received, new)
    assert len(received.headers["webhook-signature"].split(" ")) == 2
