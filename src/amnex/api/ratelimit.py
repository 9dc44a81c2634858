"""API: per-key rate limiting with the `limits` library, in memory or shared through Redis,
and the accounts' sending caps (daily, and per destination prefix per minute).

Redis carries counters, not records: if it is unreachable the limiter lets requests through
rather than refusing service.

Redis outages. The first failure logs one warning; while Redis stays away requests are let
through without asking it, except one call per `probe_interval_s` that tries again, so an
outage neither floods the log nor makes every request wait for a connection attempt. The
first call that succeeds logs one info line, and limits are enforced from then on. The
client's sockets have timeouts: a connect or a read gives up after `REDIS_TIMEOUT_S`. A
command on a pooled connection that turns out dead is retried once on a new one (a restarted
Redis closed them all), and a connection idle for `REDIS_HEALTH_CHECK_S` is pinged before
use; so a Redis that stops answering stalls a request for up to about twice
`REDIS_TIMEOUT_S` (one try and one retry, or a health-check ping and the command), not
longer. Options in the Redis URL (`?socket_timeout=2`) override these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import redis.asyncio
import redis.exceptions
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from amnex.compliance.number_type import destination_prefix
from amnex.compliance.policy import AccountCompliance
from amnex.errors import DailyCapReached, VelocityLimited

log = logging.getLogger(__name__)

# While Redis is away, one call in this long tries it again.
REDIS_PROBE_INTERVAL_S: Final = 1.0
REDIS_TIMEOUT_S: Final = 1.0
REDIS_HEALTH_CHECK_S: Final = 30


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
    def __init__(
        self,
        redis_url: str | None,
        *,
        probe_interval_s: float = REDIS_PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._storage: Storage
        self._pool: redis.asyncio.ConnectionPool | None = None
        if redis_url:
            # redis-py (a chosen dependency) rather than the library's default client; the
            # pool is ours so that close() can release its connections.
            self._pool = redis.asyncio.ConnectionPool.from_url(
                redis_url,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                socket_timeout=REDIS_TIMEOUT_S,
                health_check_interval=REDIS_HEALTH_CHECK_S,
                # Connection errors only: a command that timed out may have counted.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            )
            self._storage = RedisStorage(
                "async+" + redis_url.split("://", 1)[0] + "://" + redis_url.split("://", 1)[1],
                implementation="redispy",
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed to redis-py
            )
        else:
            self._storage = MemoryStorage()
        self._items: dict[int, RateLimitItemPerSecond] = {}
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._down_since: float | None = None  # clock() of the failure that began an outage
        self._probe_at = 0.0

    @property
    def storage_down(self) -> bool:
        """Whether the last call to the store failed (requests are let through uncounted)."""
        return self._down_since is not None

    def _skip_store(self) -> bool:
        """While the store is down, True (do not ask it) except for one call per interval."""
        if self._down_since is None:
            return False
        now = self._clock()
        if now < self._probe_at:
            return True
        self._probe_at = now + self.probe_interval_s  # this call probes; the others wait
        return False

    def _store_failed(self, exc: Exception) -> None:
        now = self._clock()
        self._probe_at = now + self.probe_interval_s
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "rate limiter storage unavailable (%s); allowing requests uncounted until it "
                "is back (one attempt every %gs)",
                type(exc).__name__,
                self.probe_interval_s,
            )

    def _store_answered(self) -> None:
        if self._down_since is not None:
            log.info(
                "rate limiter storage is back after %.1fs; limits are enforced again",
                self._clock() - self._down_since,
            )
            self._down_since = None

    async def hit(self, key: str, per_s: int) -> RateDecision:
        item = self._items.get(per_s)
        if item is None:
            item = self._items[per_s] = RateLimitItemPerSecond(per_s)
        if self._skip_store():
            return RateDecision(True, per_s, per_s, 1)
        try:
            # The fixed-window strategy's own step (FixedWindowRateLimiter.hit), keeping the
            # count it returns: the window is one second, so what remains of it is at most
            # 1 s and the count alone gives every header — one storage call (one Redis round
            # trip) per request instead of two.
            count = await self._storage.incr(item.key_for("key", key), item.get_expiry())
        except Exception as exc:
            self._store_failed(exc)
            return RateDecision(True, per_s, per_s, 1)
        self._store_answered()
        return RateDecision(count <= per_s, per_s, max(0, per_s - count), 1)

    async def take(self, key: str, limit: int, expiry_s: int) -> bool:
        """Count one against `limit` on `key` (a fixed window named in the key); False, and
        nothing counted, when the limit is reached. An unreachable store allows (see above)."""
        if self._skip_store():
            return True
        try:
            count = await self._storage.incr(key, expiry_s)
            if count <= limit:
                self._store_answered()
                return True
            await self._storage.incr(key, expiry_s, amount=-1)
        except Exception as exc:
            self._store_failed(exc)
            return True
        self._store_answered()
        return False

    async def give_back(self, key: str, expiry_s: int) -> None:
        """Undo one `take` (the message it counted was not stored)."""
        if self._skip_store():
            return
        try:
            await self._storage.incr(key, expiry_s, amount=-1)
        except Exception as exc:
            self._store_failed(exc)
            return
        self._store_answered()

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
