"""A message a worker cannot send is left to one that can, and never costs it an attempt.

With bind leases a worker may hold none of a connector's binds. The claim passes such
messages over (`can_attempt`), and one claimed anyway is given back untried (`NotAttempted`):
queued, due at once, its attempt not counted, with a `queued` event that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from amnex.carriers.leases import BindLease, BindLeaseWorker
from amnex.channels import sms
from amnex.channels.base import NotAttempted, OutboundMessage, SubmitResult
from amnex.channels.sms import SmsChannel
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.dispatch import claim
from amnex.dispatch.worker import NOT_ATTEMPTED_HOLD_S, Dispatcher
from amnex.messages.models import Message
from amnex.privacy.crypto import SecretBox
from amnex.simulators.smsc import SmscSimulator
from amnex.webhooks.models import WebhookEndpoint, WebhookOutbox
from amnex.webhooks.sender import secret_context
from amnex.webhooks.signing import new_secret
from amnex.worker_process import WorkerParts, build_dispatcher
from support import (
    AccountHandle,
    StartSmsc,
    accept_emails,
    add_smpp_route,
    eventually,
    load_message,
    make_account,
    message_events,
    serve_api,
    wait_for_status,
    with_master_key,
)


async def outbox_rows(db: Database) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(WebhookOutbox)) or 0)


async def add_endpoint(db: Database, settings: Settings, account: AccountHandle) -> None:
    """An enabled webhook endpoint: from now on every message event lands in the outbox."""
    endpoint_id, now = new_id("whe"), utc_now()
    async with db.unit_of_work() as session:
        session.add(
            WebhookEndpoint(
                id=endpoint_id,
                account_id=account.account_id,
                url="https://hooks.example.com/amnex",
                event_types=None,
                enabled=True,
                secret=SecretBox.from_settings(settings).seal(
                    new_secret(), context=secret_context(endpoint_id)
                ),
                max_concurrency=4,
                created_at=now,
                updated_at=now,
            )
        )


def only(*allowed: str) -> claim.CanAttempt:
    return lambda _channel, _account_id, to: to in allowed


# -------------------------------------------------------------------------------------------
# The claim


async def test_the_claim_passes_over_what_this_worker_cannot_send_and_looks_past_it(
    db: Database, account: AccountHandle
) -> None:
    # Given three due messages this worker cannot send, ahead of two it can
    blocked = await accept_emails(db, account, "b1@example.com", "b2@example.com", "b3@example.com")
    sendable = await accept_emails(db, account, "s1@example.com", "s2@example.com")

    # When it claims two
    async with db.unit_of_work() as session:
        taken = await claim.claim_due_messages(
            session,
            owner="worker-a",
            limit=2,
            lease_s=30,
            now=utc_now(),
            can_attempt=only("s1@example.com", "s2@example.com"),
        )

    # Then it takes the two it can send, from behind the others
    assert sorted(c.outbound.id for c in taken) == sorted(sendable)
    assert [c.outbound.attempt for c in taken] == [1, 1]
    # And leaves the others exactly as they were: no lease, no attempt, no event
    for message_id in blocked:
        message = await load_message(db, message_id)
        assert (message.status, message.attempts, message.lease_owner) == ("queued", 0, None)
        assert [e.status for e in await message_events(db, message_id)] == ["queued"]


async def test_a_backlog_for_a_connector_held_elsewhere_is_not_even_read(
    db: Database, account: AccountHandle
) -> None:
    # Given more messages for a connector another worker holds than three claims would read,
    # ahead of one this worker can send
    blocked = await accept_emails(db, account, *(f"x{n}@example.com" for n in range(12)))
    async with db.unit_of_work() as session:
        await session.execute(
            update(Message).where(Message.id.in_(blocked)).values(connector_id="con_elsewhere")
        )
    (sendable,) = await accept_emails(db, account, "here@example.com")

    # When it claims two, leaving out that connector's messages
    async with db.unit_of_work() as session:
        taken = await claim.claim_due_messages(
            session,
            owner="worker-a",
            limit=2,
            lease_s=30,
            now=utc_now(),
            can_attempt=only("here@example.com"),
            exclude_connectors={"con_elsewhere"},
        )

    # Then it takes the one it can send at once, and the backlog stays as it was
    assert [c.outbound.id for c in taken] == [sendable]
    for message_id in blocked:
        message = await load_message(db, message_id)
        assert (message.status, message.attempts, message.lease_owner) == ("queued", 0, None)


async def test_an_expired_message_fails_even_on_a_worker_that_cannot_send_it(
    db: Database, account: AccountHandle
) -> None:
    (message_id,) = await accept_emails(db, account, "late@example.com", validity_period_s=1)
    later = utc_now() + timedelta(seconds=2)

    async with db.unit_of_work() as session:
        taken = await claim.claim_due_messages(
            session, owner="worker-a", limit=5, lease_s=30, now=later, can_attempt=only()
        )

    assert taken == []
    message = await load_message(db, message_id)
    assert (message.status, message.error_code) == ("failed", "expired")


async def test_the_claim_skips_the_messages_it_is_told_to(
    db: Database, account: AccountHandle
) -> None:
    held, other = await accept_emails(db, account, "held@example.com", "other@example.com")

    async with db.unit_of_work() as session:
        taken = await claim.claim_due_messages(
            session, owner="worker-a", limit=5, lease_s=30, now=utc_now(), skip_ids={held}
        )

    assert [c.outbound.id for c in taken] == [other]
    assert (await load_message(db, held)).status == "queued"


# -------------------------------------------------------------------------------------------
# Giving a message back


async def test_a_message_given_back_untried_is_due_at_once_with_no_attempt_and_says_why(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    await add_endpoint(db, settings, account)
    (message_id,) = await accept_emails(db, account, "back@example.com")
    async with db.unit_of_work() as session:
        (taken,) = await claim.claim_due_messages(
            session, owner="worker-a", limit=1, lease_s=30, now=utc_now()
        )
    events_before, outbox_before = len(await message_events(db, message_id)), await outbox_rows(db)

    # When worker A gives it back untried
    async with db.unit_of_work() as session:
        applied = await claim.record_not_attempted(
            session, message_id=message_id, owner="worker-a", reason="no_bind_here", now=utc_now()
        )

    # Then it is queued and due now, with no lease and no attempt counted
    assert applied is True
    message = await load_message(db, message_id)
    assert (message.status, message.attempts, message.lease_owner) == ("queued", 0, None)
    assert message.lease_until is None
    assert message.next_attempt_at is not None
    assert message.next_attempt_at <= utc_now()
    assert message.error_code is None
    # And the transition is in its history, with why, like any other (the webhook endpoint
    # is told of it as of every `queued` event)
    events = await message_events(db, message_id)
    assert len(events) == events_before + 1
    back = events[-1]
    assert (back.status, back.detail, back.error_code) == (
        "queued",
        {"reason": "no_bind_here"},
        None,
    )
    assert await outbox_rows(db) == outbox_before + 1
    # And the next worker's claim is the message's first attempt again
    async with db.unit_of_work() as session:
        (again,) = await claim.claim_due_messages(
            session, owner="worker-b", limit=1, lease_s=30, now=utc_now()
        )
    assert again.outbound.attempt == taken.outbound.attempt == 1


async def test_giving_back_a_lease_this_worker_lost_changes_nothing(
    db: Database, account: AccountHandle
) -> None:
    (message_id,) = await accept_emails(db, account, "lost@example.com")
    async with db.unit_of_work() as session:
        await claim.claim_due_messages(
            session, owner="worker-a", limit=1, lease_s=30, now=utc_now()
        )
        await session.execute(
            update(Message).where(Message.id == message_id).values(lease_owner="worker-b")
        )

    async with db.unit_of_work() as session:
        applied = await claim.record_not_attempted(
            session, message_id=message_id, owner="worker-a", reason="no_bind_here", now=utc_now()
        )

    assert applied is False
    message = await load_message(db, message_id)
    assert (message.status, message.attempts, message.lease_owner) == ("sending", 1, "worker-b")


class RefusesOnce:
    """An email channel whose first send finds it cannot try (as a worker whose bind moved
    between claim and send), then delivers."""

    name = "email"

    def __init__(self) -> None:
        self.calls: list[tuple[float, OutboundMessage]] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def can_attempt(self, account_id: str, to_addr: str) -> bool:
        return True

    async def send(self, message: OutboundMessage) -> SubmitResult:
        self.calls.append((asyncio.get_running_loop().time(), message))
        if len(self.calls) == 1:
            raise NotAttempted("no_bind_here", "no bind here")
        return SubmitResult("delivered", "q-" + message.id[-6:])


@contextlib.asynccontextmanager
async def dispatching(dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    task = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        dispatcher.stop()
        await task


async def test_the_dispatcher_gives_back_what_the_channel_did_not_try_and_holds_off(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    channel = RefusesOnce()
    (message_id,) = await accept_emails(db, account, "once@example.com")

    # When the only worker claims it, finds it cannot try it, and later claims it again
    dispatcher = build_dispatcher(settings, db, {"email": channel}, poll_interval_s=0.02)
    async with dispatching(dispatcher):
        message = await eventually(
            lambda: load_message(db, message_id), lambda m: m.status == "delivered", timeout_s=10
        )

    # Then the message was tried once and delivered: one attempt, no failure; its history
    # shows the claim given back and the next one, both at attempt 1
    assert message.attempts == 1
    assert message.error_code is None
    history = await message_events(db, message_id)
    assert [e.status for e in history] == ["queued", "sending", "queued", "sending", "delivered"]
    assert history[2].detail == {"reason": "no_bind_here"}
    assert [e.seq for e in history] == [1, 2, 3, 4, 5]
    assert [(e.detail or {}).get("attempt") for e in history if e.status == "sending"] == [1, 1]
    # And the worker left it alone for the hold-off rather than taking it straight back
    (first_at, _), (second_at, second) = channel.calls
    assert second_at - first_at >= NOT_ATTEMPTED_HOLD_S
    assert second.attempt == 1


# -------------------------------------------------------------------------------------------
# SMS with bind leases


@pytest.fixture
def sms_settings(settings: Settings) -> Settings:
    return with_master_key(
        settings, route_cache_ttl_s=0.2, bind_lease_ttl_s=4.0, bind_lease_renew_s=0.3
    )


@contextlib.asynccontextmanager
async def worker(settings: Settings, db: Database) -> AsyncIterator[WorkerParts]:
    parts = await WorkerParts.start(settings, db)
    dispatcher = build_dispatcher(settings, db, parts.channels, poll_interval_s=0.05)
    try:
        async with dispatching(dispatcher):
            yield parts
    finally:
        await parts.close()


def sms_of(parts: WorkerParts) -> SmsChannel:
    channel = parts.channels["sms"]
    assert isinstance(channel, SmsChannel)
    return channel


def bound(parts: WorkerParts, connector_id: str) -> int:
    connector = sms_of(parts).connectors.get(connector_id)
    return 0 if connector is None else connector.bound_sessions


async def test_a_worker_with_no_bind_takes_no_message_and_costs_none_an_attempt(
    sms_settings: Settings, db: Database, start_smsc: StartSmsc
) -> None:
    smsc: SmscSimulator = await start_smsc()
    # Given a one-bind connector and two workers: one of them holds no bind
    connector_id = await add_smpp_route(
        db, sms_settings, host=smsc.host, port=smsc.port, binds=1, response_timeout_s=1.0
    )
    account = await make_account(db, sms_number="+13125550177")
    async with worker(sms_settings, db) as first, worker(sms_settings, db) as second:
        await eventually(
            lambda: asyncio.sleep(0, bound(first, connector_id) + bound(second, connector_id)),
            lambda n: n == 1,
        )

        # When messages are sent
        async with serve_api(sms_settings, db) as api:
            ids = []
            for n in range(12):
                response = await api.client.post(
                    "/v1/messages",
                    headers=account.headers,
                    json={"channel": "sms", "to": f"+1415555{n:04d}", "body": f"hi {n}"},
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            for message_id in ids:
                await wait_for_status(api.client, account, message_id, {"sent", "delivered"})

        # Then each was taken once, by the worker with the bind, at its first attempt
        for message_id in ids:
            message = await load_message(db, message_id)
            assert (message.attempts, message.error_code) == (1, None)
            statuses = [e.status for e in await message_events(db, message_id)]
            assert statuses[:3] == ["queued", "sending", "sent"], statuses
    assert len(smsc.messages()) == 12


async def test_the_sms_channel_says_when_it_holds_no_bind_of_a_route(
    sms_settings: Settings, db: Database, start_smsc: StartSmsc
) -> None:
    smsc: SmscSimulator = await start_smsc()
    connector_id = await add_smpp_route(db, sms_settings, host=smsc.host, port=smsc.port, binds=1)
    # Given another live worker holds the connector's only slot
    until = utc_now() + timedelta(minutes=5)
    async with db.unit_of_work() as session:
        session.add(BindLeaseWorker(owner="elsewhere", expires_at=until))
        session.add(
            BindLease(
                connector_id=connector_id,
                slot=0,
                owner="elsewhere",
                expires_at=until,
                acquired_at=utc_now(),
            )
        )
    parts = await WorkerParts.start(sms_settings, db)
    try:
        channel = sms_of(parts)
        await parts.routes.refresh()
        account = await make_account(db)
        message = OutboundMessage(
            id="msg_untried",
            account_id=account.account_id,
            channel="sms",
            from_addr="+13125550178",
            to_addr="+14155550100",
            subject=None,
            body="hi",
            html=None,
            category="transactional",
            created_at=utc_now(),
            attempt=1,
        )

        # Then it asks not to be given the message, leaves the connector's messages out of
        # its claims, and refuses the message untried if it is given it
        assert channel.can_attempt(account.account_id, message.to_addr) is False
        assert channel.connectors_not_here() == {connector_id}
        with pytest.raises(NotAttempted) as refused:
            await channel.send(message)
        assert refused.value.code == "no_bind_here"
        assert smsc.messages() == []
    finally:
        await parts.close()


async def test_a_worker_whose_bind_is_down_still_tries_and_counts_the_attempt(
    sms_settings: Settings, db: Database, account: AccountHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the only worker holds the connector's slot, but its SMSC does not answer
    monkeypatch.setattr(sms, "BIND_WAIT_S", 0.2)
    connector_id = await add_smpp_route(db, sms_settings, host="127.0.0.1", port=1, binds=1)
    async with worker(sms_settings, db) as parts, serve_api(sms_settings, db) as api:
        await eventually(
            lambda: asyncio.sleep(0, sms_of(parts).connectors.get(connector_id)),
            lambda c: c is not None and bool(c.slots),
        )
        assert sms_of(parts).can_attempt(account.account_id, "+14155550101") is True

        # When a message is sent
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={"channel": "sms", "to": "+14155550101", "body": "hi"},
        )
        assert response.status_code == 201, response.text
        message_id = response.json()["id"]

        # Then it waits for the bind and is retried later as a connection failure, counted:
        # no other worker could have sent it, and a carrier that stays away must end in a
        # failure once retries run out
        message = await eventually(
            lambda: load_message(db, message_id), lambda m: m.error_code is not None, timeout_s=10
        )
    assert (message.status, message.error_code, message.attempts) == (
        "queued",
        "connection_unavailable",
        1,
    )
