"""Privacy: the lifecycle the keyrings share (content keys, address keys).

A process holds one keyring of each kind per database: a process that runs the API and a
worker (`amnex dev`) starts it twice and shares it, and the last `close` stops it. While it
runs, a task reloads the keys from the database every `refresh_s` (every second until they
have loaded once), so keys other processes create or destroy are seen here. Each kind's
`start` goes through `_start_or_join`; what a failed first load means is the kind's own
(`_first_load`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Self

from amnex.db.engine import Database

log = logging.getLogger(__name__)


class SharedKeyring(ABC):
    # What the keys are, for the task's name and the log ("content keys").
    keys_name: ClassVar[str]
    refresh_s: ClassVar[float] = 30.0

    def __init__(self, db: Database) -> None:
        self._db = db
        self._task: asyncio.Task[None] | None = None
        self._users = 1

    def join(self, db: Database) -> bool:
        """Join this installed ring when it serves the same database as `db`: count one more
        user (each user `close`s it once) and return True. False, and nothing counted, for
        another database."""
        if self._db.url != db.url:
            return False
        self._users += 1
        return True

    @classmethod
    async def _start_or_join(cls, db: Database, new: Callable[[], Self]) -> Self:
        """The installed ring of this kind if it joins (`join`), else a ring made by `new`,
        loaded once (`_first_load`), installed and kept fresh."""
        installed = cls._installed()
        if installed is not None and installed.join(db):
            return installed
        ring = new()
        await ring._first_load()
        ring._install()
        ring.keep_fresh()
        return ring

    def keep_fresh(self) -> None:
        """Start reloading the keys in the background."""
        self._task = asyncio.create_task(self._keep_fresh(), name=self.keys_name.replace(" ", "-"))

    async def close(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._uninstall()

    @classmethod
    @abstractmethod
    def _installed(cls) -> Self | None:
        """The installed ring of this kind, if any."""

    @abstractmethod
    def _install(self) -> None:
        """Become the installed ring of its kind."""

    @abstractmethod
    async def _first_load(self) -> None:
        """Load the keys at start: raise what must stop the process (a wrong master key);
        log and return when they can only load later (the database is away), as the
        background reload retries them."""

    @abstractmethod
    def _loaded(self) -> bool:
        """Whether the keys have loaded once."""

    @abstractmethod
    async def _reload(self) -> None:
        """Load the keys again (or for the first time)."""

    @abstractmethod
    def _uninstall(self) -> None:
        """Stop being the installed ring of its kind."""

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s if self._loaded() else 1.0)
            try:
                await self._reload()
            except Exception as exc:
                log.warning("reloading %s failed (%s)", self.keys_name, type(exc).__name__)
