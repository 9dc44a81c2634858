"""API: per-key rate limiting with the `limits` library, in memory or shared through Redis,
and the accounts' sending caps (daily, and per destination prefix per minute).

Redis carries counters, not records: if it is unreachable the limiter lets requests through
(and logs) rather than refusing service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis.asyncio
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage

from amnex.compliance.number_type import destination_prefix
from amnex.compliance.policy import AccountCompliance
from amnex.errors import DailyCapReached, VelocityLimited

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

    async def take(self, key: str, limit: int, expiry_s: int) -> bool:
        """Count one against `limit` on `key` (a fixed window named in the key); False, and
        nothing counted, when the limit is reached. An unreachable store allows (see above)."""
        try:
            count = await self._storage.incr(key, expiry_s)
            if count <= limit:
                return True
            await self._storage.incr(key, expiry_s, amount=-1)
        except Exception as exc:
            log.warning("rate limiter storage unavailable (%s); allowing", type(exc).__name__)
            return True
        return False

    async def give_back(self, key: str, expiry_s: int) -> None:
        """Undo one `take` (the message it counted was not stored)."""
        try:
            await self._storage.incr(key, expiry_s, amount=-1)
        except Exception as exc:
            log.warning("rate limiter storage unavailable (%s)", type(exc).__name__)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    async def check_storage(self) -> bool:
        try:
            return bool(await self._storage.check())
        except Exception:
            return False


DAY_S = 86_400
_DAILY_EXPIRY_S = 2 * DAY_S
_MINUTE_EXPIRY_S = 120


async def take_sending_quota(
    limiter: RateLimiter,
    account: AccountCompliance,
    *,
    channel: str,
    to: str,
    now: datetime,
) -> list[tuple[str, int]]:
    """Count one message against the account's daily cap and per-prefix velocity (the gate's
    rule 7); raise DailyCapReached or VelocityLimited, counting nothing, when one is reached.

    Returns what was counted, for `give_back` if the message is then not stored.
    """
    settings = account.settings
    taken: list[tuple[str, int]] = []
    if settings.daily_cap:
        key = f"amnex:daily:{account.account_id}:{now:%Y%m%d}"
        if not await limiter.take(key, settings.daily_cap, _DAILY_EXPIRY_S):
            midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            raise DailyCapReached(
                f"the account may send {settings.daily_cap} messages per UTC day; "
                "the cap resets at midnight UTC",
                retry_after_s=max(1, int((midnight - now).total_seconds())),
            )
        taken.append((key, _DAILY_EXPIRY_S))
    per_minute = settings.prefix_velocity_per_minute
    if per_minute and channel in ("sms", "mms"):
        prefix = destination_prefix(to)
        key = f"amnex:velocity:{account.account_id}:{prefix}:{int(now.timestamp()) // 60}"
        if not await limiter.take(key, per_minute, _MINUTE_EXPIRY_S):
            await give_back(limiter, taken)
            raise VelocityLimited(
                f"at most {per_minute} messages per minute to numbers starting {prefix}",
                retry_after_s=max(1, 60 - now.second),
            )
        taken.append((key, _MINUTE_EXPIRY_S))
    return taken


async def give_back(limiter: RateLimiter, taken: list[tuple[str, int]]) -> None:
    for key, expiry_s in taken:
        await limiter.give_back(key, expiry_s)
