"""Receipts: the periodic sweep — late matches, receipt timeouts, stale inbound parts.

Every step works in bounded chunks, one transaction per chunk, and is safe to run in
several workers at once (`SKIP LOCKED` on PostgreSQL; one writer at a time on SQLite).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.receipts.apply import (
    expire_inbound_parts,
    expire_receipt_waits,
    match_pending_receipts,
)

log = logging.getLogger(__name__)

CHUNK = 500
INBOUND_EVERY = 60


async def sweep_once(
    db: Database, settings: Settings, *, inbound: bool = True, after_id: int = 0
) -> dict[str, int]:
    """One pass of every step; returns what each did, and where the receipt scan stopped."""
    done = {"matched": 0, "expired_receipts": 0, "receipt_timeouts": 0, "inbound_flushed": 0}

    async def match(session: AsyncSession) -> tuple[int, int, int]:
        return await match_pending_receipts(
            session,
            now=utc_now(),
            ttl_s=settings.unmatched_receipt_ttl_s,
            limit=CHUNK,
            after_id=after_id,
        )

    async def time_out(session: AsyncSession) -> int:
        return await expire_receipt_waits(session, now=utc_now(), limit=CHUNK)

    matched, expired, done["cursor"] = await db.write(match)
    done["matched"], done["expired_receipts"] = matched, expired
    while True:
        timed_out = await db.write(time_out)
        done["receipt_timeouts"] += timed_out
        if timed_out < CHUNK:
            break
    if inbound:
        async with db.unit_of_work() as session:
            done["inbound_flushed"] = await expire_inbound_parts(
                session, now=utc_now(), ttl_s=settings.inbound_part_ttl_s
            )
    return done


async def sweep_forever(db: Database, settings: Settings, *, interval_s: float = 1.0) -> None:
    passes = cursor = 0
    while True:
        try:
            done = await sweep_once(
                db, settings, inbound=passes % INBOUND_EVERY == 0, after_id=cursor
            )
            cursor = done["cursor"]
            if done["receipt_timeouts"] or done["inbound_flushed"]:
                log.info("receipt sweep: %s", done)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("receipt sweep failed; retrying at the next interval")
        passes += 1
        await asyncio.sleep(interval_s)
