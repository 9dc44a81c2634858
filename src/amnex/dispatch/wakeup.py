"""Dispatch: waking workers on PostgreSQL with LISTEN/NOTIFY.

The accept writer's statement notifies `amnex_dispatch` (`pg_notify`); PostgreSQL delivers
it only when that statement commits. The listener keeps one dedicated asyncpg connection and
reconnects with backoff if it drops; while it is down the dispatcher's poll timer still
finds due work, so a lost notification delays a message, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from amnex.messages.accept import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


def asyncpg_dsn(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PgListener:
    def __init__(self, database_url: str, on_notify: Callable[[], None]) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._on_notify = on_notify
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, *_args: Any) -> None:
        self._on_notify()

    async def _run(self) -> None:
        delay_s = 0.5
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
                continue
            delay_s = 0.5
            closed = asyncio.Event()
            conn.add_termination_listener(lambda _c, ev=closed: ev.set())
            try:
                await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                self._on_notify()  # catch up on anything committed while we were away
                await closed.wait()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
