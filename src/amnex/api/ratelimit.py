"""API: per-key rate limiting with the `limits` library, in memory or shared through Redis.

Redis carries counters, not records: if it is unreachable the limiter lets requests through
(and logs) rather than refusing service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


class RateLimiter:
    def __init__(self, redis_url: str | None) -> None:
        self._storage: Storage
        self._pool: redis.asyncio.ConnectionPool | None = None
        if redis_url:
            # redis-py (a chosen dependency) rather than the library's default client; the
            # pool is ours so that close() can release its connections.
            self._pool = redis.asyncio.ConnectionPool.from_url(redis_url)
            self._storage = RedisStorage(
                "async+" + redis_url.split("://", 1)[0] + "://" + redis_url.split("://", 1)[1],
                implementation="redispy",
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed to redis-py
            )
        else:
            self._storage = MemoryStorage()
        self._items: dict[int, RateLimitItemPerSecond] = {}

    async def hit(self, key: str, per_s: int) -> RateDecision:
        item = self._items.get(per_s)
        if item is None:
            item = self._items[per_s] = RateLimitItemPerSecond(per_s)
        try:
            # The fixed-window strategy's own step (FixedWindowRateLimiter.hit), keeping the
            # count it returns: the window is one second, so what remains of it is at most
            # 1 s and the count alone gives every header — one storage call (one Redis round
            # trip) per request instead of two.
            count = await self._storage.incr(item.key_for("key", key), item.get_expiry())
        except Exception as exc:
            log.warning("rate limiter storage unavailable (%s); allowing", type(exc).__name__)
            return RateDecision(True, per_s, per_s, 1)
        return RateDecision(count <= per_s, per_s, max(0, per_s - count), 1)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    async def check_storage(self) -> bool:
        try:
            return bool(await self._storage.check())
        except Exception:
            return False
