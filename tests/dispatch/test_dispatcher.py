"""The dispatcher against a real database: retries, failures, expiry, leases, shutdown.

The carrier is a scripted in-memory channel (the one transport seam); the database is real.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from amnex.accounts.service import KeyContext
from amnex.carriers.routing import RouteTable
from amnex.channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    SubmitResult,
    TemporaryDeliveryError,
)
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.dispatch import claim
from amnex.dispatch.worker import Dispatcher
from amnex.messages.accept import AcceptWriter
from amnex.messages.models import Message
from amnex.messages.schemas import SendMessageRequest
from amnex.messages.service import prepare_message
from amnex.worker_process import build_dispatcher
from support import AccountHandle, Capture, eventually
from support import load_message as load
from support import message_events as events

EMAIL_ONLY = RouteTable(static_channels=frozenset({"email"}))

Outcome = SubmitResult | Exception


class ScriptedChannel:
    """Answers each attempt for a recipient from a script; delivers once the script runs out."""

    name = "email"

    def __init__(self) -> None:
        self.scripts: dict[str, list[Outcome]] = defaultdict(list)
        self.calls: list[OutboundMessage] = []
        self.block: asyncio.Event | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, message: OutboundMessage) -> SubmitResult:
        self.calls.append(message)
        if self.block is not None:
            await self.block.wait()
        script = self.scripts[message.to_addr]
        outcome = script.pop(0) if script else SubmitResult("delivered", "q-" + message.id[-6:])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def key_context(account: AccountHandle) -> KeyContext:
    return KeyContext(
        key_id="key_test",
        account_id=account.account_id,
        scopes=frozenset({"send", "read"}),
        rate_limit_per_s=None,
        account_settings={},
        senders={"email": frozenset({"news@shop.example"})},
        default_senders={"email": "news@shop.example"},
    )


async def accept(db: Database, account: AccountHandle, to: str, **fields: Any) -> str:
    request = SendMessageRequest.model_validate(
        {"channel": "email", "to": to, "subject": "Hi", "body": "Hello", **fields}
    )
    prepared = prepare_message(key_context(account), request, now=utc_now(), routes=EMAIL_ONLY)
    writer = AcceptWriter(db, writers=1, batch_max=10, db_retry_s=1)
    await writer.start()
    try:
        await writer.submit(prepared)
    finally:
        await writer.close()
    return str(prepared.row["id"])


async def until_status(db: Database, message_id: str, status: str) -> Message:
    async def probe() -> Message:
        return await load(db, message_id)

    return await eventually(probe, lambda m: m.status == status, timeout_s=10)


@pytest.fixture
def channel() -> ScriptedChannel:
    return ScriptedChannel()


@pytest.fixture
async def running(
    settings: Settings, db: Database, channel: ScriptedChannel
) -> AsyncIterator[Dispatcher]:
    dispatcher = build_dispatcher(settings, db, {"email": channel}, poll_interval_s=0.02)
    task = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        dispatcher.stop()
        await task


async def test_a_temporary_error_is_retried_and_then_delivered(
    db: Database, account: AccountHandle, channel: ScriptedChannel, running: Dispatcher
) -> None:
    channel.scripts["a@example.com"] = [
        TemporaryDeliveryError("temporary_failure", "451 try later", raw_code="451")
    ]
    message_id = await accept(db, account, "a@example.com")

    message = await until_status(db, message_id, "delivered")

    assert message.attempts == 2
    assert message.error_code is None
    assert [e.status for e in await events(db, message_id)] == [
        "queued", "sending", "queued", "sending", "delivered",
    ]  # fmt: skip
    retry_event = (await events(db, message_id))[2]
    assert retry_event.error_code == "temporary_failure"
    assert retry_event.detail is not None
    assert retry_event.detail["provider_error_code"] == "451"


async def test_a_permanent_error_fails_at_once_with_the_carriers_code(
    db: Database, account: AccountHandle, channel: ScriptedChannel, running: Dispatcher
) -> None:
    channel.scripts["b@example.com"] = [
        PermanentDeliveryError("unknown_subscriber", "550 5.1.1 no such user", raw_code="550")
    ]
    message_id = await accept(db, account, "b@example.com")

    message = await until_status(db, message_id, "failed")

    assert message.attempts == 1
    assert (message.error_code, message.provider_error_code) == ("unknown_subscriber", "550")
    assert message.error_message == "550 5.1.1 no such user"
    assert message.failed_at is not None
    assert message.lease_owner is None
    assert message.next_attempt_at is None


async def test_retries_stop_at_the_maximum_age_with_the_last_error(
    settings: Settings, db: Database, account: AccountHandle, channel: ScriptedChannel
) -> None:
    channel.scripts["c@example.com"] = [
        TemporaryDeliveryError("connection_error", "refused") for _ in range(50)
    ]
    short = settings.model_copy(update={"max_retry_age_s": 0.3})
    dispatcher = build_dispatcher(short, db, {"email": channel}, poll_interval_s=0.02)
    task = asyncio.create_task(dispatcher.run())
    try:
        message_id = await accept(db, account, "c@example.com")
        message = await until_status(db, message_id, "failed")
    finally:
        dispatcher.stop()
        await task
    assert message.error_code == "connection_error"
    assert message.attempts >= 2
    assert "gave up after retrying" in (message.error_message or "")


async def test_a_message_whose_validity_ends_while_retrying_fails_as_expired(
    db: Database, account: AccountHandle, channel: ScriptedChannel, running: Dispatcher
) -> None:
    channel.scripts["d@example.com"] = [
        TemporaryDeliveryError("temporary_failure", "busy", retry_after_s=5)
    ]
    message_id = await accept(db, account, "d@example.com", validity_period_s=2)

    message = await until_status(db, message_id, "failed")

    assert message.error_code == "expired"


async def test_a_channel_bug_does_not_lose_the_message(
    db: Database, account: AccountHandle, channel: ScriptedChannel, running: Dispatcher
) -> None:
    channel.scripts["e@example.com"] = [RuntimeError("bug in a channel")]
    message_id = await accept(db, account, "e@example.com")

    message = await until_status(db, message_id, "delivered")

    assert message.attempts == 2
    assert (await events(db, message_id))[2].error_code == "internal_error"


async def test_a_scheduled_message_waits_for_its_time(
    db: Database, account: AccountHandle, channel: ScriptedChannel, running: Dispatcher
) -> None:
    send_at = utc_now() + timedelta(seconds=1.0)
    message_id = await accept(db, account, "f@example.com", send_at=send_at.isoformat())
    assert (await load(db, message_id)).status == "scheduled"

    message = await until_status(db, message_id, "delivered")

    assert message.sent_at is not None
    assert message.sent_at >= send_at
    assert [e.status for e in await events(db, message_id)] == [
        "scheduled", "queued", "sending", "delivered",
    ]  # fmt: skip


async def test_an_expired_lease_is_reclaimed_and_the_late_outcome_is_ignored(
    settings: Settings, db: Database, account: AccountHandle, channel: ScriptedChannel
) -> None:
    message_id = await accept(db, account, "g@example.com")
    # Given worker A claimed the message and then stalled past its lease
    async with db.unit_of_work() as session:
        taken = await claim.claim_due_messages(
            session, owner="worker-a", limit=10, lease_s=0.2, now=utc_now()
        )
    assert [c.outbound.id for c in taken] == [message_id]
    await asyncio.sleep(0.3)

    # When worker B runs
    dispatcher = build_dispatcher(settings, db, {"email": channel}, poll_interval_s=0.02)
    task = asyncio.create_task(dispatcher.run())
    try:
        message = await until_status(db, message_id, "delivered")
    finally:
        dispatcher.stop()
        await task

    # Then B delivered it, the events say it was reclaimed, and A's late report changes nothing
    assert message.attempts == 2
    sending = [e for e in await events(db, message_id) if e.status == "sending"]
    assert sending[1].detail is not None
    assert sending[1].detail["reclaimed_from"] == "worker-a"
    async with db.unit_of_work() as session:
        applied = await claim.record_failed(
            session,
            message_id=message_id,
            owner="worker-a",
            code="carrier_rejected",
            text="late",
            raw_code=None,
            now=utc_now(),
        )
    assert applied is False
    assert (await load(db, message_id)).status == "delivered"


async def test_shutdown_gives_unfinished_leases_back(
    settings: Settings, db: Database, account: AccountHandle, channel: ScriptedChannel
) -> None:
    channel.block = asyncio.Event()  # the carrier never answers
    quick = settings.model_copy(update={"shutdown_grace_s": 0.2})
    dispatcher = build_dispatcher(quick, db, {"email": channel}, poll_interval_s=0.02)
    task = asyncio.create_task(dispatcher.run())
    message_id = await accept(db, account, "h@example.com")
    await until_status(db, message_id, "sending")

    dispatcher.stop()
    await asyncio.wait_for(task, timeout=5)

    message = await load(db, message_id)
    assert message.status == "queued"
    assert message.lease_owner is None
    assert message.next_attempt_at is not None
    assert message.next_attempt_at <= utc_now()
    assert (await events(db, message_id))[-1].detail == {"reason": "worker shutdown"}


async def test_a_canceled_message_is_never_sent(
    settings: Settings, db: Database, account: AccountHandle, channel: ScriptedChannel
) -> None:
    from amnex.messages.service import cancel_message

    message_id = await accept(db, account, "i@example.com")
    async with db.unit_of_work() as session:
        await cancel_message(session, account.account_id, message_id, now=utc_now())
    dispatcher = build_dispatcher(settings, db, {"email": channel}, poll_interval_s=0.02)
    task = asyncio.create_task(dispatcher.run())
    await asyncio.sleep(0.2)
    dispatcher.stop()
    await task
    assert channel.calls == []
    assert (await load(db, message_id)).status == "canceled"


async def test_concurrent_claims_never_take_the_same_message(
    db: Database, account: AccountHandle
) -> None:
    ids = {await accept(db, account, f"j{i}@example.com") for i in range(40)}

    async def take(owner: str) -> set[str]:
        async with db.unit_of_work() as session:
            claimed = await claim.claim_due_messages(
                session, owner=owner, limit=25, lease_s=30, now=utc_now()
            )
            await asyncio.sleep(0.05)  # hold the row locks while the other claim runs
        return {c.outbound.id for c in claimed}

    first, second = await asyncio.gather(take("w1"), take("w2"))
    assert first.isdisjoint(second)
    assert first | second == ids


async def test_a_slow_send_keeps_its_lease_and_is_not_sent_twice(
    settings: Settings, db: Database, account: AccountHandle, channel: ScriptedChannel
) -> None:
    # Given a carrier that takes three lease periods to answer
    channel.block = asyncio.Event()
    # (a 1 s lease renewed every third of it: a renewal must be 0.6 s late to lose it, which
    # a loaded CI machine does reach with shorter leases)
    short = settings.model_copy(update={"lease_s": 1.0})
    first = build_dispatcher(short, db, {"email": channel}, poll_interval_s=0.02)
    second = build_dispatcher(short, db, {"email": channel}, poll_interval_s=0.02)
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        message_id = await accept(db, account, "slow@example.com")
        await until_status(db, message_id, "sending")
        await asyncio.sleep(3.0)
        # Then nobody reclaimed it meanwhile: one call, one sending event
        assert len(channel.calls) == 1
        channel.block.set()
        message = await until_status(db, message_id, "delivered")
    finally:
        first.stop()
        second.stop()
        await asyncio.gather(*tasks)
    assert message.attempts == 1
    assert [e.status for e in await events(db, message_id)].count("sending") == 1


async def test_log_lines_written_during_a_send_name_the_message_and_account(
    capture: Capture,
    settings: Settings,
    db: Database,
    account: AccountHandle,
    channel: ScriptedChannel,
) -> None:
    # Given a channel that logs while it sends, and the real logging pipeline writing JSON
    stream = capture(True)
    channel_log = logging.getLogger("amnex.channels.scripted")
    original = channel.send

    async def logging_send(message: OutboundMessage) -> SubmitResult:
        channel_log.info("handing over")
        return await original(message)

    channel.send = logging_send  # type: ignore[method-assign]
    first = await accept(db, account, "first@example.com")
    second = await accept(db, account, "second@example.com")

    # When a worker sends both at once
    dispatcher = build_dispatcher(settings, db, {"email": channel}, poll_interval_s=0.02)
    task = asyncio.create_task(dispatcher.run())
    try:
        await until_status(db, first, "delivered")
        await until_status(db, second, "delivered")
    finally:
        dispatcher.stop()
        await task

    # Then each send's line carries its own message id, and the worker's own lines none
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    sends = [line for line in lines if line["event"] == "handing over"]
    assert sorted(line["message_id"] for line in sends) == sorted([first, second])
    assert {line["account_id"] for line in sends} == {account.account_id}
    started = [line for line in lines if "started" in line["event"]]
    assert started
    assert all("message_id" not in line for line in started)


async def test_a_claim_that_came_back_short_is_followed_by_the_next_only_after_the_pause(
    settings: Settings, db: Database, account: AccountHandle, channel: ScriptedChannel
) -> None:
    # Given a worker with a 0.6 s pause after a short claim, woken only by hand (no polling)
    paused = settings.model_copy(update={"claim_coalesce_s": 0.6})
    dispatcher = build_dispatcher(paused, db, {"email": channel}, poll_interval_s=30)
    loop = asyncio.get_running_loop()
    sent_at: dict[str, float] = {}
    original = channel.send

    async def timed_send(message: OutboundMessage) -> SubmitResult:
        sent_at[message.id] = loop.time()
        return await original(message)

    channel.send = timed_send  # type: ignore[method-assign]
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0.8)  # its first (empty) claim and the pause after it are over

        # When a message is accepted after that quiet spell, it is claimed at once
        first = await accept(db, account, "first@example.com")
        woken_at = loop.time()
        dispatcher.wake()
        await until_status(db, first, "delivered")
        assert sent_at[first] - woken_at < 0.5

        # And one accepted right after waits out the pause that claim (one of 64) began
        second = await accept(db, account, "second@example.com")
        dispatcher.wake()
        await until_status(db, second, "delivered")
        assert sent_at[second] - sent_at[first] >= 0.55
    finally:
        dispatcher.stop()
        await task
