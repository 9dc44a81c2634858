"""Real `amnex worker` processes: exactly-once delivery across workers, SIGKILL, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import func, select

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.models import Message, MessageEvent
from amnex.simulators.smtp_sink import SmtpSink
from support import AccountHandle, eventually, make_account, serve_api, wait_for_status


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    env.update(
        {
            "AMNEX_DATABASE_URL": settings.database_url,
            **(
                {"AMNEX_MASTER_KEY": settings.master_key.get_secret_value()}
                if settings.master_key
                else {}
            ),
            "AMNEX_SMTP_HOST": str(settings.smtp_host),
            "AMNEX_SMTP_PORT": str(settings.smtp_port),
            "AMNEX_SMTP_HELO_NAME": "worker.test",
            "AMNEX_POLL_INTERVAL_S": "0.05",
            "AMNEX_RETRY_BASE_S": "0.1",
            "AMNEX_RETRY_MAX_S": "0.5",
            **extra,
        }
    )
    return env


@contextmanager
def workers(
    settings: Settings, count: int = 1, **extra: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "amnex", "worker"],
            env=worker_env(settings, **extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()


async def send_email(api_client: httpx.AsyncClient, account: AccountHandle, to: str) -> str:
    response = await api_client.post(
        "/v1/messages",
        headers=account.headers,
        json={"channel": "email", "to": to, "subject": "Hello", "body": "Hi there"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def sending_events(db: Database, message_id: str) -> list[MessageEvent]:
    async with db.read_session() as session:
        rows = await session.scalars(
            select(MessageEvent)
            .where(MessageEvent.message_id == message_id, MessageEvent.status == "sending")
            .order_by(MessageEvent.seq)
        )
        return list(rows)


@pytest.mark.slow
@pytest.mark.postgres
async def test_three_workers_deliver_a_thousand_messages_exactly_once(
    settings: Settings, db: Database, sink: SmtpSink
) -> None:
    account = await make_account(db, rate_limit_per_s=100_000)
    async with serve_api(settings, db) as api:
        # Given three worker processes on PostgreSQL, each taking small batches
        with workers(settings, 3, AMNEX_CLAIM_BATCH_SIZE="20", AMNEX_WORKER_CONCURRENCY="20"):
            # When a thousand messages are accepted
            ids: list[str] = []
            for start in range(0, 1000, 50):
                ids += await asyncio.gather(
                    *(
                        send_email(api.client, account, f"user{n}.ok@example.com")
                        for n in range(start, start + 50)
                    )
                )

            # Then every one is delivered
            async def by_status() -> dict[tuple[str, str | None], int]:
                async with db.read_session() as session:
                    rows = await session.execute(
                        select(Message.status, Message.error_code, func.count()).group_by(
                            Message.status, Message.error_code
                        )
                    )
                return {(status, code): n for status, code, n in rows}

            await eventually(
                by_status,
                lambda c: c == {("delivered", None): 1000},
                timeout_s=120,
                interval_s=0.25,
            )

    # And exactly once: one SMTP transaction and one attempt per message
    assert len(set(ids)) == 1000
    assert all(sink.count_for(message_id) == 1 for message_id in ids)
    async with db.read_session() as session:
        attempts = set(await session.scalars(select(Message.attempts)))
        owners = {
            (e.detail or {}).get("worker")
            for e in await session.scalars(
                select(MessageEvent).where(MessageEvent.status == "sending")
            )
        }
    assert attempts == {1}
    assert len(owners) >= 2  # the work was shared


@pytest.mark.slow
async def test_a_worker_killed_mid_send_loses_nothing(
    settings: Settings, db: Database, sink: SmtpSink, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        # Given a worker with a short lease, in the middle of an SMTP transaction
        sink.hold("held@example.com")
        with workers(settings, 1, AMNEX_LEASE_S="2") as (first,):
            message_id = await send_email(api.client, account, "held@example.com")
            await asyncio.wait_for(sink.wait_until_held("held@example.com"), timeout=30)

            # When it is killed outright
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        # The carrier sees the connection drop before it answered: nothing was delivered.
        await asyncio.wait_for(sink.wait_until_no_connections(), timeout=10)
        sink.release("held@example.com")
        assert sink.count_for(message_id) == 0
        assert (await wait_for_status(api.client, account, message_id, {"sending"}))[
            "attempts"
        ] == 1

        # Then, once the lease expires, another worker delivers the message, once
        with workers(settings, 1, AMNEX_LEASE_S="2"):
            message = await wait_for_status(
                api.client, account, message_id, {"delivered"}, timeout_s=30
            )
    assert message["attempts"] == 2
    assert sink.count_for(message_id) == 1
    sending = await sending_events(db, message_id)
    assert len(sending) == 2
    assert (sending[1].detail or {}).get("reclaimed_from") == (sending[0].detail or {}).get(
        "worker"
    )


@pytest.mark.slow
async def test_sigterm_lets_the_send_in_flight_finish(
    settings: Settings, db: Database, sink: SmtpSink, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        sink.hold("slow@example.com")
        with workers(settings, 1, AMNEX_SHUTDOWN_GRACE_S="20") as (worker,):
            message_id = await send_email(api.client, account, "slow@example.com")
            await asyncio.wait_for(sink.wait_until_held("slow@example.com"), timeout=30)

            # When the worker is asked to stop while the carrier is still answering
            worker.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert worker.poll() is None  # it waits for the send in flight
            sink.release("slow@example.com")

            # Then it records the outcome and exits cleanly
            code = await asyncio.to_thread(worker.wait, 30)
        assert code == 0
        message = await wait_for_status(api.client, account, message_id, {"delivered"})
    assert message["attempts"] == 1
    assert sink.count_for(message_id) == 1
