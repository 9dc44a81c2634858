"""Carriers: bind leases — which worker holds which of a connector's SMPP bind slots.

Design note. A connector allows `binds` connections at its SMSC, for the whole platform. Each
slot (0 .. binds-1) is a row in `bind_leases` owned by one worker until `expires_at`; a worker
opens a bind only for the slots it holds, so M workers together open at most `binds` binds.

Every `renew_s` each worker's `BindLeaseKeeper` runs one transaction (`renew`): it announces
itself in `bind_lease_workers` (how workers that hold nothing yet are counted), renews the
slots it holds, gives back what it holds beyond its fair share, `ceil(binds / live workers)`,
and tries to take free or expired slots up to that share. Taking is one conditional upsert
(`INSERT … ON CONFLICT DO UPDATE … WHERE expires_at < now`): on both databases the second of
two racing workers finds the row taken and changes nothing, so a slot never has two owners.

A worker that cannot renew (the database is gone, the process stalls) stops using its slots
while their lease still runs (at the first failed renewal less than two renewals before it
ends, counted from the start of the last successful one), so a worker that takes a slot
after it expired never binds while the old bind is still open. This relies on the workers'
clocks agreeing to well under `renew_s` (NTP). On shutdown a worker deletes its rows after
unbinding, and others take the slots at their next renewal. A worker killed outright holds
its slots until they expire (`ttl_s`), unless it ran on the same machine and in the same PID
namespace as a worker that renews: an owner id carries its pid and a key of (boot id, PID
namespace), and a process that no longer exists there is known dead at once, so a worker
restarted after a crash (or `amnex dev` after Ctrl-C) binds without waiting. A reused pid
only makes the dead worker look alive: its slots then expire as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import String, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from amnex.carriers.models import Connector
from amnex.clock import utc_now
from amnex.db.base import Base
from amnex.db.engine import Database

log = logging.getLogger(__name__)


class BindLease(Base):
    """One bind slot of a connector, held by `owner` (a worker) until `expires_at`."""

    __tablename__ = "bind_leases"

    connector_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    slot: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(120))
    expires_at: Mapped[datetime]
    acquired_at: Mapped[datetime]


class BindLeaseWorker(Base):
    """A live worker taking part in the bind leases, counted for the fair share."""

    __tablename__ = "bind_lease_workers"

    owner: Mapped[str] = mapped_column(String(120), primary_key=True)
    expires_at: Mapped[datetime]


# -------------------------------------------------------------------------------------------
# Owner ids


@functools.cache
def _local_key() -> str | None:
    """This machine's boot and PID namespace, hashed; None where /proc cannot tell."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha256(f"{boot_id}/{pid_namespace}".encode()).hexdigest()[:12]


def lease_owner_id() -> str:
    """A new worker's owner id: host:pid:local key:random."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{_local_key() or '-'}:{secrets.token_hex(3)}"


def is_dead_local_owner(owner: str) -> bool:
    """True only when `owner` ran in this machine's PID namespace and its process is gone."""
    key = _local_key()
    parts = owner.rsplit(":", 3)
    if key is None or len(parts) != 4 or parts[2] != key or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process, say)
    return False


# -------------------------------------------------------------------------------------------
# Pure core


def fair_share(binds: int, live_workers: int) -> int:
    """The most slots of a `binds`-slot connector one of `live_workers` workers may hold."""
    return math.ceil(binds / max(1, live_workers))


@dataclass(frozen=True, slots=True)
class SlotPlan:
    release: tuple[int, ...]  # held slots to give back
    take: tuple[int, ...]  # free slots to try to take, in order


def plan_slots(
    binds: int, mine: Iterable[int], others: Iterable[int], live_workers: int
) -> SlotPlan:
    """What one worker does with one connector: keep its lowest slots up to its fair share,
    give back the rest (and slots beyond `binds`), try free slots for what is missing.

    `others` are the slots other workers hold unexpired; expired ones count as free.
    """
    share = fair_share(binds, live_workers)
    held = set(mine)
    taken = held | set(others)
    valid = sorted(s for s in held if s < binds)
    release = sorted(s for s in held if s >= binds) + valid[share:]
    missing = max(0, share - len(valid[:share]))
    free = [s for s in range(binds) if s not in taken]
    return SlotPlan(release=tuple(sorted(release)), take=tuple(free[:missing]))


# -------------------------------------------------------------------------------------------
# Storage (callers own the transaction)


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def try_take_slot(
    session: AsyncSession,
    *,
    connector_id: str,
    slot: int,
    owner: str,
    now: datetime,
    expires_at: datetime,
) -> bool:
    """Take a slot that is free or expired; False when another worker holds it."""
    table = BindLease.__table__
    statement = _insert(session)(table).values(
        connector_id=connector_id, slot=slot, owner=owner, expires_at=expires_at, acquired_at=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.connector_id, table.c.slot],
        set_={
            "owner": statement.excluded.owner,
            "expires_at": statement.excluded.expires_at,
            "acquired_at": statement.excluded.acquired_at,
        },
        where=table.c.expires_at < now,
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0) == 1


async def release_bind_leases(session: AsyncSession, owner: str) -> int:
    """Delete every slot `owner` holds and its presence (graceful shutdown)."""
    result = await session.execute(delete(BindLease).where(BindLease.owner == owner))
    await session.execute(delete(BindLeaseWorker).where(BindLeaseWorker.owner == owner))
    return int(getattr(result, "rowcount", 0) or 0)


async def held_slots(session: AsyncSession, owner: str, now: datetime) -> dict[str, frozenset[int]]:
    rows = await session.execute(
        select(BindLease.connector_id, BindLease.slot).where(
            BindLease.owner == owner, BindLease.expires_at > now
        )
    )
    held: dict[str, set[int]] = {}
    for connector_id, slot in rows:
        held.setdefault(connector_id, set()).add(slot)
    return {cid: frozenset(slots) for cid, slots in held.items()}


async def balance_bind_leases(
    session: AsyncSession,
    *,
    owner: str,
    now: datetime,
    ttl_s: float,
    is_dead: Callable[[str], bool] = is_dead_local_owner,
) -> dict[str, frozenset[int]]:
    """One renewal: forget dead owners, announce, renew, give back beyond the fair share,
    take free slots.

    Returns the slots `owner` holds afterwards, by connector.
    """
    known = set(await session.scalars(select(BindLeaseWorker.owner)))
    known |= set(await session.scalars(select(BindLease.owner).distinct()))
    dead = sorted(o for o in known if o != owner and is_dead(o))
    if dead:
        log.info("bind leases of %d stopped worker(s) on this machine released", len(dead))
        await session.execute(delete(BindLease).where(BindLease.owner.in_(dead)))
        await session.execute(delete(BindLeaseWorker).where(BindLeaseWorker.owner.in_(dead)))
    until = now + timedelta(seconds=ttl_s)
    presence = _insert(session)(BindLeaseWorker.__table__).values(owner=owner, expires_at=until)
    await session.execute(
        presence.on_conflict_do_update(
            index_elements=[BindLeaseWorker.owner], set_={"expires_at": until}
        )
    )
    await session.execute(delete(BindLeaseWorker).where(BindLeaseWorker.expires_at < now))
    await session.execute(
        update(BindLease).where(BindLease.owner == owner).values(expires_at=until)
    )
    live = len(
        list(
            await session.scalars(
                select(BindLeaseWorker.owner).where(BindLeaseWorker.expires_at > now)
            )
        )
    )
    connectors = (
        await session.execute(select(Connector.id, Connector.config).where(Connector.enabled))
    ).all()
    binds = {cid: int((config or {}).get("binds", 1)) for cid, config in connectors}
    mine: dict[str, set[int]] = {}
    others: dict[str, set[int]] = {}
    for lease in (
        await session.execute(
            select(BindLease.connector_id, BindLease.slot, BindLease.owner, BindLease.expires_at)
        )
    ).all():
        if lease.owner == owner:
            mine.setdefault(lease.connector_id, set()).add(lease.slot)
        elif lease.expires_at > now:
            others.setdefault(lease.connector_id, set()).add(lease.slot)
    for connector_id in sorted(binds.keys() | mine.keys()):
        plan = plan_slots(
            binds.get(connector_id, 0),
            mine.get(connector_id, ()),
            others.get(connector_id, ()),
            live,
        )
        if plan.release:
            await session.execute(
                delete(BindLease).where(
                    BindLease.connector_id == connector_id,
                    BindLease.owner == owner,
                    BindLease.slot.in_(plan.release),
                )
            )
        for slot in plan.take:
            await try_take_slot(
                session,
                connector_id=connector_id,
                slot=slot,
                owner=owner,
                now=now,
                expires_at=until,
            )
    return await held_slots(session, owner, now)


# -------------------------------------------------------------------------------------------
# The keeper


class BindLeaseKeeper:
    """This worker's bind leases: renewed every `renew_s`, read by the SMS channel.

    `held(connector_id)` is what the worker may bind now; `version` changes whenever that
    changes, and `wait_changed(version)` waits for the next change.
    """

    def __init__(self, db: Database, *, owner: str, ttl_s: float, renew_s: float) -> None:
        if renew_s <= 0 or ttl_s < 2 * renew_s:
            raise ValueError("bind leases need renew_s > 0 and ttl_s >= 2 * renew_s")
        self._db = db
        self.owner = owner
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self._held: dict[str, frozenset[int]] = {}
        # Connectors of which another live worker holds a slot, at the last renewal.
        self.held_elsewhere: frozenset[str] = frozenset()
        self._valid_until = -math.inf  # loop time: held slots are usable until then
        self.version = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def held(self, connector_id: str) -> frozenset[int]:
        return self._held.get(connector_id, frozenset())

    @property
    def all_held(self) -> Mapping[str, frozenset[int]]:
        return dict(self._held)

    async def wait_changed(self, version: int) -> None:
        """Return once `version` is no longer the current one."""
        while self.version == version:
            await self._changed.wait()

    async def start(self) -> None:
        """Take this worker's first slots now, then renew in the background."""
        await self.renew()
        self._task = asyncio.create_task(self._renew_forever(), name="bind-leases")

    async def renew(self) -> None:
        """One renewal; on failure, drop the slots whose lease may end before the next one."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.renew_s):
                async with self._db.unit_of_work() as session:
                    now = utc_now()
                    held = await balance_bind_leases(
                        session, owner=self.owner, now=now, ttl_s=self.ttl_s
                    )
                    elsewhere = frozenset(
                        await session.scalars(
                            select(BindLease.connector_id)
                            .where(BindLease.owner != self.owner, BindLease.expires_at > now)
                            .distinct()
                        )
                    )
        except Exception as exc:
            log.warning("renewing bind leases failed (%s)", type(exc).__name__)
            # The next check may come two renewals from now (the sleep, then a renewal that
            # times out): a lease that could end before then is given up now.
            if self._held and loop.time() + 2 * self.renew_s >= self._valid_until:
                log.warning("bind leases not renewed in time: closing this worker's binds")
                self._set({})
            return
        # The lease ends ttl_s after the write; counted from before it, to be early, not late.
        self._valid_until = started + self.ttl_s
        self.held_elsewhere = elsewhere
        self._set(held)

    async def close(self) -> None:
        """Stop renewing and give every slot back (call after the binds are closed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._set({})
        try:
            async with self._db.unit_of_work() as session:
                released = await release_bind_leases(session, self.owner)
        except Exception as exc:
            log.warning("bind leases not released (%s); they expire", type(exc).__name__)
            return
        if released:
            log.info("released %d bind leases", released)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_s)
            await self.renew()

    def _set(self, held: dict[str, frozenset[int]]) -> None:
        if held == self._held:
            return
        self._held = held
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
