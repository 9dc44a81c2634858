"""Carriers: choosing the connectors for a message (pure), and a cached view of the routes.

A route matches a message when its channel is the message's, its `account_id` is empty or
the sender's account, its `country` is empty or the destination's region, and its `prefix`
(digits of the E.164 number, without `+`) is empty or begins the destination. Among matching
routes the most specific wins: an account's own route before a platform route, then the
longer prefix, then a country over none, then the higher `priority`. Its connectors are
tried in order; disabled connectors are skipped.

Email is routed without the table: it goes to the SMTP relay when one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import select

from amnex.carriers.models import Connector, Route
from amnex.compliance.addresses import phone_facts
from amnex.db.engine import Database
from amnex.errors import InvalidAddress

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    id: str
    channel: str
    account_id: str | None
    country: str | None
    prefix: str
    connector_ids: tuple[str, ...]
    priority: int = 0
    allow_landline: bool = False

    def specificity(self) -> tuple[int, int, int, int]:
        return (
            self.account_id is not None,
            len(self.prefix),
            self.country is not None,
            self.priority,
        )


def region_of(number: str) -> str | None:
    """The ISO region of an E.164 number, or None when it has none."""
    try:
        return phone_facts(number).region
    except InvalidAddress:
        return None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """An immutable snapshot of the routes; swapped whole when they change."""

    routes: tuple[RouteEntry, ...] = ()
    enabled_connectors: frozenset[str] = frozenset()
    static_channels: frozenset[str] = frozenset()
    _by_channel: dict[str, tuple[RouteEntry, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_channel: dict[str, list[RouteEntry]] = {}
        for route in sorted(self.routes, key=RouteEntry.specificity, reverse=True):
            by_channel.setdefault(route.channel, []).append(route)
        self._by_channel.update({k: tuple(v) for k, v in by_channel.items()})

    def best_route(self, channel: str, account_id: str, to: str) -> RouteEntry | None:
        digits = to.removeprefix("+")
        region: str | None = None
        for route in self._by_channel.get(channel, ()):
            if route.account_id is not None and route.account_id != account_id:
                continue
            if route.prefix and not digits.startswith(route.prefix):
                continue
            if route.country is not None:
                region = region or region_of(to)
                if route.country != region:
                    continue
            if any(cid in self.enabled_connectors for cid in route.connector_ids):
                return route
        return None

    def primary_connector(self, route: RouteEntry | None) -> str | None:
        """The connector a message on `route` goes to first: its first enabled one."""
        if route is None:
            return None
        return next((cid for cid in route.connector_ids if cid in self.enabled_connectors), None)

    def connectors_behind(self, channel: str, primary: str) -> frozenset[str]:
        """Every enabled connector of the routes whose first enabled connector is `primary`
        (`primary` included): where a message routed to `primary` at accept may go."""
        behind = {primary}
        for route in self._by_channel.get(channel, ()):
            if self.primary_connector(route) == primary:
                behind.update(c for c in route.connector_ids if c in self.enabled_connectors)
        return frozenset(behind)

    def connectors_for(self, channel: str, account_id: str, to: str) -> tuple[str, ...]:
        """The enabled connectors to try, in order; empty when nothing routes the message."""
        route = self.best_route(channel, account_id, to)
        if route is None:
            return ()
        return tuple(cid for cid in route.connector_ids if cid in self.enabled_connectors)

    def has_route(self, channel: str, account_id: str, to: str) -> bool:
        if channel in self.static_channels:
            return True
        return self.best_route(channel, account_id, to) is not None


async def load_route_table(db: Database, static_channels: frozenset[str]) -> RouteTable:
    async with db.read_engine.connect() as conn:
        routes = (await conn.execute(select(Route))).all()
        enabled = (
            await conn.execute(select(Connector.id).where(Connector.enabled.is_(True)))
        ).scalars()
        enabled_ids = frozenset(enabled)
    return RouteTable(
        routes=tuple(
            RouteEntry(
                id=r.id,
                channel=r.channel,
                account_id=r.account_id,
                country=r.country,
                prefix=r.prefix,
                connector_ids=tuple(r.connector_ids),
                priority=r.priority,
                allow_landline=r.allow_landline,
            )
            for r in routes
        ),
        enabled_connectors=enabled_ids,
        static_channels=static_channels,
    )


class RouteCache:
    """The current RouteTable of this process, reloaded every `ttl_s` in the background.

    A process that changes routes calls `refresh()` so its own next request sees the change;
    other processes see it within `ttl_s`. A failed reload keeps the previous table.
    """

    def __init__(self, db: Database, *, static_channels: frozenset[str], ttl_s: float) -> None:
        self._db = db
        self._static = static_channels
        self._ttl_s = ttl_s
        self._table = RouteTable(static_channels=static_channels)
        self._task: asyncio.Task[None] | None = None

    @property
    def current(self) -> RouteTable:
        return self._table

    async def refresh(self) -> RouteTable:
        self._table = await load_route_table(self._db, self._static)
        return self._table

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()
        self._task = asyncio.create_task(self._reload_forever(), name="route-cache")

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("reloading routes failed (%s); keeping the last", type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
