"""Privacy: the lifecycle the keyrings share (content keys, address keys).

A process holds one keyring of each kind per database: a process that runs the API and a
worker (`amnex dev`) starts it twice and shares it, and the last `close` stops it. While it
runs, a task reloads the keys from the database every `refresh_s` (every second until they
have loaded once), so keys other processes create or destroy are seen here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from typing import ClassVar

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

    def shares(self, db: Database) -> bool:
        """True when this installed ring serves `db`: it is then shared (counted) instead of
        started again."""
        if self._db.url != db.url:
            return False
        self._users += 1
        return True

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
