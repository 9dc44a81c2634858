"""API: resolving `Authorization: Bearer …` to an API key or an operator, with a short cache.

The accept path must not query the database per request (`shared/notes/accept-path.md`): a
resolved key is cached for `api_key_cache_ttl_s` (5 s by default), so a revocation made in
another process takes effect within that time; one made in this process clears the cache at
once. Unknown keys are cached too, so a flood of bad keys cannot flood the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from amnex.accounts.service import (
    API_KEY_PREFIX,
    OPERATOR_TOKEN_PREFIX,
    KeyContext,
    OperatorContext,
    hash_secret,
    load_key_context,
    load_operator_context,
    touch_api_key,
)
from amnex.db.engine import Database
from amnex.errors import AuthenticationFailed

log = logging.getLogger(__name__)

T = TypeVar("T")
_CACHE_MAX = 10_000
_TOUCH_EVERY_S = 60.0


class _TtlCache(Generic[T]):
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, T | None]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[T | None]] = {}

    def get(self, key: str) -> tuple[bool, T | None]:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key: str, value: T | None) -> None:
        self._items[key] = (time.monotonic() + self._ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > _CACHE_MAX:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
        self._loading.clear()

    async def get_or_load(
        self, key: str, load: Callable[[], Coroutine[Any, Any, T | None]]
    ) -> T | None:
        """The cached value, or one load shared by every caller that missed at the same time.

        Without the sharing, all requests in flight when an entry expires would query the
        database at once (a stampede every `ttl_s` under load).
        """
        found, value = self.get(key)
        if found:
            return value
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key, load))
            self._loading[key] = task
        # shield: a caller that gives up (client gone) must not cancel the others' load.
        return await asyncio.shield(task)

    async def _load(self, key: str, load: Callable[[], Coroutine[Any, Any, T | None]]) -> T | None:
        try:
            value = await load()
            self.put(key, value)
            return value
        finally:
            self._loading.pop(key, None)


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed("send `Authorization: Bearer <api key>`")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("the Authorization header must be `Bearer <api key>`")
    return token.strip()


class Authenticator:
    def __init__(self, db: Database, ttl_s: float) -> None:
        self._db = db
        self._keys: _TtlCache[KeyContext] = _TtlCache(ttl_s)
        self._operators: _TtlCache[OperatorContext] = _TtlCache(ttl_s)
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def api_key(self, authorization: str | None) -> KeyContext:
        token = bearer_token(authorization)
        if not token.startswith(API_KEY_PREFIX):
            raise AuthenticationFailed("not an Amnex API key")
        key_hash = hash_secret(token)

        async def load() -> KeyContext | None:
            async with self._db.read_session() as session:
                return await load_key_context(session, key_hash)

        ctx = await self._keys.get_or_load(key_hash, load)
        if ctx is None:
            raise AuthenticationFailed("the API key is unknown or revoked")
        self._touch(ctx.key_id)
        return ctx

    async def operator(self, authorization: str | None) -> OperatorContext:
        token = bearer_token(authorization)
        if not token.startswith(OPERATOR_TOKEN_PREFIX):
            raise AuthenticationFailed("not an operator token")
        token_hash = hash_secret(token)

        async def load() -> OperatorContext | None:
            async with self._db.read_session() as session:
                return await load_operator_context(session, token_hash)

        ctx = await self._operators.get_or_load(token_hash, load)
        if ctx is None:
            raise AuthenticationFailed("the operator token is unknown or revoked")
        return ctx

    def forget(self) -> None:
        """Drop every cached credential (after a revocation or a sender change here)."""
        self._keys.clear()
        self._operators.clear()

    def _touch(self, key_id: str) -> None:
        """Record `last_used_at` at most once a minute per key, off the request path."""
        now = time.monotonic()
        if now - self._touched.get(key_id, -_TOUCH_EVERY_S) < _TOUCH_EVERY_S:
            return
        self._touched[key_id] = now
        task = asyncio.create_task(self._write_touch(key_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_touch(self, key_id: str) -> None:
        try:
            async with self._db.unit_of_work() as session:
                await touch_api_key(session, key_id)
        except Exception as exc:  # last_used_at is advisory; never fail a request for it
            log.warning("could not record last_used_at: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
