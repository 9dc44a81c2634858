"""Dispatch: recording send outcomes in groups — one transaction for many messages.

Design note. A send's outcome (`record_submitted`, `record_failed`, `record_retry`) used to
be one transaction each; at thousands of messages per second the commits, not the work,
were the limit (on SQLite every commit is an fsync). Outcomes are now queued and a single
loop writes everything queued so far in one transaction (group commit); each caller awaits
its own outcome's commit, so nothing is acknowledged before it is durable.

Failure. If the database is away the whole group is retried with backoff (the leases keep
the messages ours meanwhile). If one outcome's recorder raises anything else, the group is
rolled back and its outcomes are recorded one by one, so one bad outcome cannot hold the
others back; that one is retried a few times and then logged and given up (its lease will
expire and another attempt will be made).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.clock import utc_now
from amnex.db.engine import Database, is_transient_db_error
from amnex.dispatch import claim
from amnex.metrics import count_batch

log = logging.getLogger(__name__)

Recorder = Callable[..., Awaitable[bool]]
GROUP_MAX = 500
MAX_SOLO_ATTEMPTS = 5


@dataclass(slots=True)
class _Outcome:
    recorder: Recorder
    kwargs: dict[str, Any]
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class OutcomeWriter:
    def __init__(self, db: Database, *, owner: str) -> None:
        self._db = db
        self._owner = owner
        self._queue: asyncio.Queue[_Outcome | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outcome-writer")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (for up to `timeout_s`), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def record(self, recorder: Recorder, **kwargs: Any) -> bool:
        """Queue an outcome and wait until it is committed; True if it applied.

        Shielded: a send task canceled at shutdown still has its outcome written.
        """
        outcome = _Outcome(recorder, kwargs)
        self._queue.put_nowait(outcome)
        return await asyncio.shield(outcome.done)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            group: list[_Outcome] = []
            first = await self._queue.get()
            if first is None:
                stopping = True
            else:
                group.append(first)
            while len(group) < GROUP_MAX and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                else:
                    group.append(item)
            if group:
                await self._write_group(group)

    async def _write_group(self, group: list[_Outcome]) -> None:
        delay_s = 0.1
        while True:
            try:
                results = await self._apply(group)
            except DBAPIError as exc:
                if not is_transient_db_error(exc):
                    break
                log.warning("recording %d outcomes failed (%s); retrying", len(group), exc.orig)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
                continue
            except Exception:
                break
            for outcome, applied in zip(group, results, strict=True):
                if not outcome.done.done():
                    outcome.done.set_result(applied)
            return
        # Something in the group is not a database outage: record each on its own.
        for outcome in group:
            await self._write_solo(outcome)

    async def _apply(self, group: list[_Outcome]) -> list[bool]:
        owner = self._owner
        pending = [(o.recorder, o.kwargs) for o in group]

        async def work(session: AsyncSession) -> list[bool]:
            return await apply_outcomes(session, pending, owner=owner, now=utc_now())

        started = time.perf_counter()
        results = await self._db.write(work)
        count_batch("outcome", len(group), time.perf_counter() - started)
        return results

    async def _write_solo(self, outcome: _Outcome) -> None:
        delay_s = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                (applied,) = await self._apply([outcome])
            except Exception as exc:
                transient = isinstance(exc, DBAPIError) and is_transient_db_error(exc)
                if transient or attempt < MAX_SOLO_ATTEMPTS:
                    log.warning("recording an outcome failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 5.0)
                    continue
                log.exception("giving up recording an outcome; its lease will expire")
                if not outcome.done.done():
                    outcome.done.set_result(False)
                return
            if not outcome.done.done():
                outcome.done.set_result(applied)
            return


async def apply_outcomes(
    session: AsyncSession,
    outcomes: Sequence[tuple[Recorder, dict[str, Any]]],
    *,
    owner: str,
    now: datetime,
) -> list[bool]:
    """Record one group of outcomes in the caller's transaction; whether each applied."""
    # Accepted sends, the bulk of any group, are written together in a few statements (their
    # rows locked in id order); failures and retries one by one, in the order they came.
    # With any of those, every row of the group is locked first, in id order: the order
    # every transaction locking several message rows uses, so none waits for another in a
    # circle (receipts lock in id order too; lease renewal never waits).
    results: dict[int, bool] = {}
    submitted = [(i, kw) for i, (rec, kw) in enumerate(outcomes) if rec is claim.record_submitted]
    if len(outcomes) > 1 and len(submitted) < len(outcomes):
        await claim.lock_messages(session, [kw["message_id"] for _, kw in outcomes])
    if submitted:
        many = [claim.Submitted(**kw) for _, kw in submitted]
        applied = await claim.record_submitted_many(session, many, owner=owner, now=now)
        results.update(zip((i for i, _ in submitted), applied, strict=True))
    for i, (recorder, kwargs) in enumerate(outcomes):
        if i not in results:
            results[i] = await recorder(session, owner=owner, now=now, **kwargs)
    return [results[i] for i in range(len(outcomes))]
