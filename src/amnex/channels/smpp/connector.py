"""Channels: one SMPP carrier connection — several binds, reconnects, throttling, throughput.

Supervisors. Each of `binds` slots runs one loop: build an `SmppSession` (a session is one
connection and is never reused), `connect()`, wait until it closes, reconnect after a delay
drawn uniformly between reconnect_min_s and an exponential cap (reconnect_min_s * 2**(n+1),
at most reconnect_max_s; jitter from the injected rng so slots and processes do not
reconnect in step). The exponent resets after a bind that stayed up reconnect_max_s or
carried a successful submit, so a flapping SMSC is not hammered. Refused binds and
connection errors are logged (never the password) and retried; nothing stops a supervisor
but `close()` or `set_slots()` taking its slot away.

Slots. Without bind leases a connector holds every slot 0..binds-1. With them
(`carriers.leases`) the SMS channel calls `set_slots()` with the slots this worker holds: a
new slot starts a supervisor, a lost one is taken out of submitting at once and unbinds
(bounded by response_timeout_s) in the background; a slot held again waits for its previous
supervisor to finish, so one slot never has two binds open in one process.

Submitting. A submit waits out a connector-wide throttle pause, takes a token from the
throughput limiter, then goes to the bound session with the fewest outstanding submits
(round robin on ties). NotBound means nothing was sent, so another session is tried; with
none bound the submit waits up to response_timeout_s for a bind. ESME_RTHROTTLED and
ESME_RMSGQFUL pause every submit of the connector for throttle_backoff_s, doubling per
consecutive throttle (a throttle answering a PDU sent before the current pause began joins
that pause instead of doubling it), and the same PDU is sent again up to throttle_retries
times. Every other outcome becomes a `DeliveryError` through `errors.delivery_error`.

Throughput. `ThroughputLimiter` paces each process with a token bucket (burst: one chunk)
and, with Redis, also draws chunks of tokens from one fixed-window budget per connector
shared by every worker process (`limits`), so a high rate costs one Redis round trip per
chunk, not per message. Redis holds counters, not records: when it is unreachable the
limiter falls back to the local bucket alone rather than failing a send. Without a shared
budget (no Redis, or Redis down) a connector with bind leases paces at its share of the rate,
rate * held slots / binds, so the workers' total stays within the rate; without leases each
process paces at the whole rate.

Window metrics. `amnex_smpp_window_in_use` and `amnex_smpp_window_size` are not updated on
the submit path: a collector registered once reads the live connectors when a scrape asks
(from the metrics server's thread, hence snapshots of the session dict, and a lock around
the set of connectors). In use is each session's own count of submits awaiting their
response, so a submit that dies with its session leaves it at once.

Logs carry the connector id; never message text, the password or a full address
(`mask_address` where one must appear).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import ssl
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import redis.asyncio
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from prometheus_client import REGISTRY, Counter, Gauge, Metric
from prometheus_client.core import GaugeMetricFamily

from amnex.channels.base import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from amnex.channels.smpp import text as sms_text
from amnex.channels.smpp.config import SmppConnectorConfig
from amnex.channels.smpp.errors import delivery_error, raw_code
from amnex.channels.smpp.pdu import CommandStatus, PduError, SubmitSm, SubmitSmResp, Tag
from amnex.channels.smpp.session import (
    BindError,
    ConnectionLost,
    DeliverHandler,
    NotBound,
    ResponseTimeout,
    SessionError,
    SmppError,
    SmppSession,
)

__all__ = [
    "THROTTLE_BACKOFF_CAP_S",
    "SmppConnector",
    "SmppConnectorConfig",
    "SubmittedParts",
    "ThroughputLimiter",
    "mask_address",
    "reconnect_delay_s",
    "source_address_fields",
]

log = logging.getLogger(__name__)

THROTTLE_BACKOFF_CAP_S: Final = 30.0
_THROTTLE_STATUSES: Final = frozenset({CommandStatus.ESME_RTHROTTLED, CommandStatus.ESME_RMSGQFUL})
_SHORT_CODE_MAX_DIGITS: Final = 8
_MAX_PARTS: Final = 255  # both the UDH and sar_total_segments count parts in one octet
# Redis is asked again this long after it failed; meanwhile the local bucket alone paces.
_REDIS_RETRY_S: Final = 30.0
_REDIS_TIMEOUT_S: Final = 1.0

# -------------------------------------------------------------------------------------------
# Metrics (registered once, at import)

BINDS = Counter("amnex_smpp_binds_total", "Successful SMPP binds", ["connector"])
BIND_FAILURES = Counter(
    "amnex_smpp_bind_failures_total",
    "SMPP connection attempts that did not end bound (refused bind, connect error, timeout)",
    ["connector"],
)
DISCONNECTS = Counter(
    "amnex_smpp_disconnects_total", "Bound SMPP sessions that ended, for any reason", ["connector"]
)
SUBMITS = Counter(
    "amnex_smpp_submits_total",
    "submit_sm attempts by outcome: accepted, or the normalised error code",
    ["connector", "outcome"],
)
THROTTLE_PAUSES = Counter(
    "amnex_smpp_throttle_pauses_total",
    "Connector-wide pauses started by ESME_RTHROTTLED / ESME_RMSGQFUL",
    ["connector"],
)
BOUND_SESSIONS = Gauge("amnex_smpp_bound_sessions", "SMPP sessions currently bound", ["connector"])


class WindowCollector:
    """`amnex_smpp_window_in_use` and `amnex_smpp_window_size`, read at scrape time from the
    connectors started in this process (summed per connector id: a connector restarted with
    a new configuration briefly runs next to the one unbinding)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connectors: weakref.WeakSet[SmppConnector] = weakref.WeakSet()

    def add(self, connector: SmppConnector) -> None:
        with self._lock:
            self._connectors.add(connector)

    def discard(self, connector: SmppConnector) -> None:
        with self._lock:
            self._connectors.discard(connector)

    def describe(self) -> Iterator[Metric]:
        # Names only, so that the registry reserves them without calling collect().
        yield from _window_families()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            connectors = list(self._connectors)
        totals: dict[str, tuple[int, int]] = {}
        for connector in connectors:
            in_use, size = connector.window_use()
            seen = totals.get(connector.config.id, (0, 0))
            totals[connector.config.id] = (seen[0] + in_use, seen[1] + size)
        in_use_family, size_family = _window_families()
        for connector_id, (in_use, size) in sorted(totals.items()):
            in_use_family.add_metric([connector_id], in_use)
            size_family.add_metric([connector_id], size)
        yield in_use_family
        yield size_family


def _window_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            "amnex_smpp_window_in_use",
            "submit_sm awaiting their submit_sm_resp, over the connector's sessions",
            labels=["connector"],
        ),
        GaugeMetricFamily(
            "amnex_smpp_window_size",
            "submit_sm the connector may have outstanding: window per bind x bound sessions",
            labels=["connector"],
        ),
    )


WINDOWS = WindowCollector()
REGISTRY.register(WINDOWS)


# -------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class SubmittedParts:
    """What the SMSC accepted for one message: one provider id per part, in order."""

    provider_message_ids: tuple[str, ...]
    encoding: str
    segments: int


# -------------------------------------------------------------------------------------------
# Pure helpers


def reconnect_delay_s(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """The pause before reconnect number `attempt` (0 first): uniform in [min_s, cap].

    cap = min(max_s, min_s * 2**(attempt + 1)). The floor keeps a refusing SMSC from being
    hammered; the jitter above it (already on the first attempt) keeps the binds of many slots
    and processes from arriving in step after a drop that hit them all.
    """
    cap = min(max_s, min_s * 2.0 ** min(attempt + 1, 62))
    return rng.uniform(min_s, max(min_s, cap))


def source_address_fields(
    source: str, ton: int | None = None, npi: int | None = None
) -> tuple[str, int, int]:
    """source_addr, its TON and NPI: configured values win, else derived from the address.

    "+digits" or a long number -> international (1/1, "+" stripped); up to 8 digits -> short
    code (3/0); anything else is alphanumeric (5/0).
    """
    digits = source[1:] if source.startswith("+") else source
    if digits.isdigit() and digits.isascii():
        address = digits
        if source.startswith("+") or len(digits) > _SHORT_CODE_MAX_DIGITS:
            auto_ton, auto_npi = 1, 1
        else:
            auto_ton, auto_npi = 3, 0
    else:
        address = source
        auto_ton, auto_npi = 5, 0
    return (
        address,
        auto_ton if ton is None else ton,
        auto_npi if npi is None else npi,
    )


def mask_address(address: str) -> str:
    """An address fit for a log line: all but its last two characters hidden."""
    return "*" * max(0, len(address) - 2) + address[-2:]


def _strip_plus(address: str) -> str:
    return address[1:] if address.startswith("+") else address


# -------------------------------------------------------------------------------------------
# Throughput


class ThroughputLimiter:
    """At most `rate_per_s` acquisitions per second for one connector, across processes.

    `acquire()` sleeps until a token is free; it never raises because Redis is down.
    """

    def __init__(
        self,
        key: str,
        rate_per_s: float,
        *,
        redis_url: str | None = None,
    ) -> None:
        self.key = key
        self.rate_per_s = rate_per_s
        # This process's part of the rate when no shared budget paces it (`set_share`).
        self.share = 1.0
        # Tokens are drawn from Redis this many at a time, and the local bucket may burst
        # this much: at 1000/s that is one Redis round trip per 50 messages.
        self.chunk = max(1, int(rate_per_s / 20)) if rate_per_s > 0 else 1
        self._lock = asyncio.Lock()
        self._tokens = float(self.chunk)
        self._refilled_at: float | None = None
        self._credits = 0  # tokens drawn from the shared budget and not used yet
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._shared: tuple[FixedWindowRateLimiter, RateLimitItemPerSecond] | None = None
        self._redis_down_until = 0.0
        self._redis_down = False
        if redis_url and rate_per_s > 0:
            # As in amnex.api.ratelimit: redis-py with a pool we own, so close() can release
            # it; with timeouts, since a send must never hang on a counter.
            self._pool = redis.asyncio.ConnectionPool.from_url(
                redis_url,
                socket_timeout=_REDIS_TIMEOUT_S,
                socket_connect_timeout=_REDIS_TIMEOUT_S,
            )
            storage = RedisStorage(
                "async+" + redis_url.split("://", 1)[0] + "://" + redis_url.split("://", 1)[1],
                implementation="redispy",
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed to redis-py
            )
            # Windows are whole seconds; below 1/s the window grows so the amount stays >= 1.
            window_s = 1 if rate_per_s >= 1 else math.ceil(1 / rate_per_s)
            amount = max(1, math.floor(rate_per_s * window_s))
            self._shared = (
                FixedWindowRateLimiter(storage),
                RateLimitItemPerSecond(amount, window_s),
            )

    def set_share(self, share: float) -> None:
        """Pace at `share` (0 < share <= 1) of the rate while no shared budget is in use."""
        self.share = min(1.0, max(share, 1e-9))

    @property
    def shared(self) -> bool:
        """True while a Redis budget is in use (configured and not currently failing)."""
        return self._shared is not None and not self._redis_down

    async def acquire(self) -> None:
        if self.rate_per_s <= 0:
            return
        # The lock queues waiters in order, so the one sleeping is always the next to go.
        async with self._lock:
            await self._take_local()
            if self._shared is not None:
                await self._take_shared(*self._shared)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    async def _take_local(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            rate_per_s = self.rate_per_s if self.shared else self.rate_per_s * self.share
            if self._refilled_at is not None:
                elapsed = now - self._refilled_at
                self._tokens = min(float(self.chunk), self._tokens + elapsed * rate_per_s)
            self._refilled_at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / rate_per_s)

    async def _take_shared(
        self, limiter: FixedWindowRateLimiter, item: RateLimitItemPerSecond
    ) -> None:
        if self._credits > 0:
            self._credits -= 1
            return
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() < self._redis_down_until:
                return  # the local bucket alone paces until Redis is asked again
            try:
                async with asyncio.timeout(_REDIS_TIMEOUT_S * 2):
                    granted = await limiter.hit(
                        item, "amnex_smpp_throughput", self.key, cost=self.chunk
                    )
            except Exception as exc:
                self._redis_down_until = loop.time() + _REDIS_RETRY_S
                if not self._redis_down:
                    self._redis_down = True
                    log.warning(
                        "smpp connector %s: shared throughput budget unavailable (%s); "
                        "pacing this process alone",
                        self.key,
                        type(exc).__name__,
                    )
                return
            if self._redis_down:
                self._redis_down = False
                log.info("smpp connector %s: shared throughput budget is back", self.key)
            if granted:
                self._credits = self.chunk - 1
                return
            # The window is spent (other processes took it): wait about one chunk's time.
            await asyncio.sleep(min(1.0, self.chunk / self.rate_per_s))


# -------------------------------------------------------------------------------------------
# The connector


class SmppConnector:
    """A configured carrier connection: `start()`, `submit_text()` many times, `close()`."""

    def __init__(
        self,
        config: SmppConnectorConfig,
        *,
        on_deliver: DeliverHandler,
        redis_url: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._on_deliver = on_deliver
        self._rng = rng if rng is not None else random.Random()
        self._tls = _tls_context(config) if config.tls else None
        self._limiter = ThroughputLimiter(config.id, config.throughput_per_s, redis_url=redis_url)
        self._sessions: dict[int, SmppSession] = {}  # slot -> bound (or unbinding) session
        self._proven: set[SmppSession] = set()  # sessions that carried a successful submit
        self._tasks: dict[int, asyncio.Task[None]] = {}  # slot -> its supervisor
        self._slot_stops: dict[int, asyncio.Event] = {}  # set when the slot is taken away
        self._retiring: dict[int, asyncio.Task[None]] = {}  # slot -> supervisor unbinding
        self._started = False
        self._leased = False
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._closed = False
        self._round_robin = itertools.count()
        self._reference = itertools.count(self._rng.randrange(0x10000))
        self._pause_until = 0.0
        self._pause_started = -math.inf
        self._next_throttle_s = config.throttle_backoff_s
        self._last_throttle_s = config.throttle_backoff_s
        self._labels = {"connector": config.id}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, slots: Iterable[int] | None = None) -> None:
        """Start one supervisor per bind slot and return at once (binds happen in background).

        `slots` are the slots this process holds (bind leases); None means all of them.
        """
        if self._started or self._closed:
            raise RuntimeError("an SmppConnector is started once")
        self._started = True
        self._leased = slots is not None
        BOUND_SESSIONS.labels(**self._labels).set(0)
        WINDOWS.add(self)
        self.set_slots(range(self.config.binds) if slots is None else slots)

    @property
    def slots(self) -> frozenset[int]:
        """The slots this connector binds (or tries to)."""
        return frozenset(self._tasks)

    def set_slots(self, slots: Iterable[int]) -> None:
        """Bind exactly these slots: supervise new ones, stop using and unbind the others."""
        if self._closed or not self._started:
            return
        wanted = frozenset(s for s in slots if 0 <= s < self.config.binds)
        for slot in sorted(self._tasks.keys() - wanted):
            self._retire(slot)
        for slot in sorted(wanted - self._tasks.keys()):
            self._slot_stops[slot] = asyncio.Event()
            self._tasks[slot] = asyncio.create_task(
                self._supervise(slot, self._retiring.get(slot)),
                name=f"smpp-{self.config.id}-{slot}",
            )
        if self._leased:
            self._limiter.set_share(max(1, len(wanted)) / self.config.binds)

    def _retire(self, slot: int) -> None:
        task = self._tasks.pop(slot)
        self._slot_stops.pop(slot).set()
        if slot not in self._sessions:
            task.cancel()  # not bound: nothing to say goodbye to
        self._retiring[slot] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._retiring.get(slot) is done:
                del self._retiring[slot]

        task.add_done_callback(forget)
        self._bound_changed()  # its session no longer takes submits

    async def close(self) -> None:
        """Unbind every session (bounded by response_timeout_s) and stop reconnecting."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._notify()
        tasks = [*self._tasks.items(), *self._retiring.items()]
        # Slots without a bound session have nothing to say goodbye to: stop them now.
        for slot, task in tasks:
            if slot not in self._sessions:
                task.cancel()
        if tasks:
            waiting = [task for _, task in tasks]
            _, pending = await asyncio.wait(waiting, timeout=self.config.response_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        BOUND_SESSIONS.labels(**self._labels).set(0)
        WINDOWS.discard(self)
        await self._limiter.close()

    @property
    def is_up(self) -> bool:
        """At least one session is bound and may submit (transmitter or transceiver)."""
        return self.config.bind_type != "receiver" and self.bound_sessions > 0

    @property
    def bound_sessions(self) -> int:
        """Bound sessions that take submits (not those of slots being given back)."""
        return len(self._usable())

    def window_use(self) -> tuple[int, int]:
        """(submits awaiting their response, window per bind x bound sessions), now.

        Safe to call from another thread (the metrics server's): it reads a snapshot of the
        sessions and plain counters, never waits on the event loop. A session whose slot is
        being given back still counts what it has outstanding until it has unbound.
        """
        sessions = tuple(self._sessions.items())  # one C-level copy: no resize mid-iteration
        in_use = sum(session.outstanding for _, session in sessions)
        bound = sum(
            1 for slot, session in sessions if session.is_bound and slot not in self._retiring
        )
        return in_use, bound * self.config.window

    def _usable(self) -> list[SmppSession]:
        return [
            session
            for slot, session in self._sessions.items()
            if session.is_bound and slot not in self._retiring
        ]

    async def wait_up(self, timeout_s: float) -> bool:
        """Wait until `is_up`, at most `timeout_s`; return whether it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not self.is_up and not self._closing.is_set():
                    await self._changed.wait()
        return self.is_up

    # -- submitting ----------------------------------------------------------------------------

    async def submit_text(
        self,
        *,
        source: str,
        destination: str,
        text: str,
        smart_encoding: bool = False,
        validity_period: str = "",
    ) -> SubmittedParts:
        """Encode, split and submit one message, part after part; return the parts' ids.

        Raises ValueError for empty text, DeliveryError subclasses otherwise; a failure after
        part 1 carries ``detail["parts_submitted"]``, the ids the SMSC already accepted.
        """
        if not text:
            raise ValueError("text must not be empty")
        encoded = sms_text.prepare_text(
            text, smart_encoding=smart_encoding, allow_latin1=self.config.allow_latin1
        )
        total = encoded.segments
        if total > _MAX_PARTS:
            raise PermanentDeliveryError(
                "invalid_message", f"{total} parts; at most {_MAX_PARTS} can be joined"
            )
        config = self.config
        source_addr, source_ton, source_npi = source_address_fields(
            source, config.source_ton, config.source_npi
        )
        reference = next(self._reference)
        ids: list[str] = []
        for seq, body in enumerate(encoded.parts, start=1):
            pdu = SubmitSm(
                source_addr_ton=source_ton,
                source_addr_npi=source_npi,
                source_addr=source_addr,
                dest_addr_ton=config.dest_ton,
                dest_addr_npi=config.dest_npi,
                destination_addr=_strip_plus(destination),
                validity_period=validity_period,
                registered_delivery=1 if config.registered_delivery else 0,
                data_coding=encoded.data_coding,
                short_message=body,
            )
            if total > 1:
                if config.split == "udh":
                    pdu.esm_class |= 0x40
                    pdu.short_message = (
                        sms_text.concatenation_udh(reference % 0x100, total, seq) + body
                    )
                else:
                    pdu.tlvs[Tag.SAR_MSG_REF_NUM] = (reference % 0x10000).to_bytes(2, "big")
                    pdu.tlvs[Tag.SAR_TOTAL_SEGMENTS] = bytes((total,))
                    pdu.tlvs[Tag.SAR_SEGMENT_SEQNUM] = bytes((seq,))
            try:
                resp = await self.submit(pdu)
            except DeliveryError as exc:
                if ids:
                    exc.detail["parts_submitted"] = list(ids)
                raise
            ids.append(resp.message_id)
        return SubmittedParts(tuple(ids), encoded.encoding, total)

    async def submit(self, pdu: SubmitSm) -> SubmitSmResp:
        """Send one submit_sm, waiting out throttling and the throughput limit.

        Returns the ESME_ROK response; raises TemporaryDeliveryError or PermanentDeliveryError.
        """
        throttled = 0
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_throttle_pause()
            await self._limiter.acquire()
            sent_at = loop.time()
            session, resp = await self._submit_once(pdu)
            status = resp.command_status
            if status == CommandStatus.ESME_ROK:
                self._count("accepted")
                if not session.closed.is_set():
                    self._proven.add(session)  # the supervisor forgets it when the bind ends
                self._next_throttle_s = self.config.throttle_backoff_s
                return resp
            if status in _THROTTLE_STATUSES:
                self._count("throttled")
                pause_s = self._throttled(sent_at)
                if throttled >= self.config.throttle_retries:
                    raise TemporaryDeliveryError(
                        "throttled",
                        f"SMSC still throttling after {throttled} retries",
                        raw_code=raw_code(status),
                        retry_after_s=pause_s,
                    )
                throttled += 1
                continue
            error = delivery_error(status, f"submit_sm refused ({_status_name(status)})")
            self._count(error.code)
            raise error

    async def _submit_once(self, pdu: SubmitSm) -> tuple[SmppSession, SubmitSmResp]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.response_timeout_s
        tried: set[SmppSession] = set()
        while True:
            if self._closing.is_set():
                raise self._unavailable("connector is closed")
            session = self._pick(tried)
            if session is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._unavailable("no bound session")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()
                continue
            try:
                return session, await session.submit(pdu)
            except NotBound:
                tried.add(session)  # nothing was sent: another session may take it
            except ConnectionLost as exc:
                self._count("connection_lost")
                raise TemporaryDeliveryError(
                    "connection_lost", f"connection lost after sending: {exc}"
                ) from exc
            except ResponseTimeout as exc:
                self._count("submit_timeout")
                raise TemporaryDeliveryError(
                    "submit_timeout",
                    f"no submit_sm_resp within {self.config.response_timeout_s}s",
                ) from exc
            except SmppError as exc:
                raise self._smpp_error(exc) from exc
            except PduError as exc:
                # Our own codec refused the PDU before sending (too long an address, ...).
                error = delivery_error(exc.status, f"submit_sm cannot be encoded: {exc}")
                self._count(error.code)
                raise error from exc
            except SessionError as exc:
                self._count("carrier_error")
                raise TemporaryDeliveryError("carrier_error", f"session error: {exc}") from exc

    def _smpp_error(self, exc: SmppError) -> DeliveryError:
        error: DeliveryError
        if exc.detail == "generic_nack":
            error = delivery_error(exc.status, f"generic_nack ({_status_name(exc.status)})")
        else:
            # A malformed or unexpected response: its status is our decoder's, not the SMSC's
            # verdict, and the SMSC may have accepted the message. Retryable, flagged as such.
            log.warning("smpp connector %s: unusable submit_sm response: %s", self.config.id, exc)
            error = TemporaryDeliveryError(
                "carrier_error",
                f"unusable submit_sm response: {exc}",
                raw_code=raw_code(exc.status),
                malformed_response=True,
            )
        self._count(error.code)
        return error

    def _pick(self, exclude: set[SmppSession]) -> SmppSession | None:
        if self.config.bind_type == "receiver":
            return None
        candidates = [s for s in self._usable() if s not in exclude]
        if not candidates:
            return None
        # The least busy session; ties go round robin so idle binds share the load.
        start = next(self._round_robin) % len(candidates)
        best: SmppSession | None = None
        for i in range(len(candidates)):
            session = candidates[(start + i) % len(candidates)]
            if best is None or session.outstanding < best.outstanding:
                best = session
        return best

    def _unavailable(self, reason: str) -> TemporaryDeliveryError:
        self._count("connection_unavailable")
        return TemporaryDeliveryError(
            "connection_unavailable",
            f"SMPP connector {self.config.id}: {reason}",
            retry_after_s=self.config.reconnect_min_s,
        )

    # -- throttling ----------------------------------------------------------------------------

    async def _wait_throttle_pause(self) -> None:
        loop = asyncio.get_running_loop()
        # A loop, not one sleep: another throttle may extend the pause while we wait.
        while True:
            remaining = self._pause_until - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    def _throttled(self, sent_at: float) -> float:
        """Pause the connector for a throttle answering a PDU sent at `sent_at`; the pause."""
        loop = asyncio.get_running_loop()
        if sent_at < self._pause_started:
            # Sent before the current pause began: the SMSC is answering the same burst.
            return self._last_throttle_s
        now = loop.time()
        pause_s = self._next_throttle_s
        self._pause_started = now
        self._pause_until = max(self._pause_until, now + pause_s)
        self._last_throttle_s = pause_s
        self._next_throttle_s = min(THROTTLE_BACKOFF_CAP_S, pause_s * 2)
        THROTTLE_PAUSES.labels(**self._labels).inc()
        log.info("smpp connector %s: throttled by the SMSC, pausing %.2fs", self.config.id, pause_s)
        return pause_s

    # -- supervision ---------------------------------------------------------------------------

    def _new_session(self) -> SmppSession:
        config = self.config
        return SmppSession(
            config.host,
            config.port,
            system_id=config.system_id,
            password=config.password,
            system_type=config.system_type,
            bind=config.bind_type,
            window=config.window,
            response_timeout_s=config.response_timeout_s,
            enquire_link_interval_s=config.enquire_link_interval_s,
            on_deliver=self._on_deliver,
            tls=self._tls,
        )

    async def _supervise(self, slot: int, previous: asyncio.Task[None] | None = None) -> None:
        config = self.config
        stop = self._slot_stops[slot]
        if previous is not None:
            await asyncio.wait({previous})  # its unbind first (wait() never cancels it)
        attempt = 0
        while not self._closing.is_set() and not stop.is_set():
            try:
                if await self._hold_one_bind(slot, stop):
                    attempt = 0
            except Exception:
                # A bug must not end the slot for good; it is logged and the slot reconnects.
                log.exception("smpp connector %s: bind slot %d failed", config.id, slot)
            if self._closing.is_set() or stop.is_set():
                return
            delay_s = reconnect_delay_s(
                attempt, config.reconnect_min_s, config.reconnect_max_s, self._rng
            )
            attempt += 1
            await asyncio.sleep(delay_s)

    async def _hold_one_bind(self, slot: int, stop: asyncio.Event) -> bool:
        """Connect, bind and stay until the connection ends; True if it was a good bind."""
        config = self.config
        session = self._new_session()
        try:
            try:
                await session.connect()
            except BindError as exc:
                BIND_FAILURES.labels(**self._labels).inc()
                log.warning(
                    "smpp connector %s: bind %d refused as %s: %s",
                    config.id,
                    slot,
                    config.system_id,
                    _status_name(exc.status),
                )
                return False
            except (OSError, TimeoutError, SessionError, PduError) as exc:
                BIND_FAILURES.labels(**self._labels).inc()
                log.warning(
                    "smpp connector %s: bind %d to %s:%d failed: %s: %s",
                    config.id,
                    slot,
                    config.host,
                    config.port,
                    type(exc).__name__,
                    exc,
                )
                return False
            loop = asyncio.get_running_loop()
            bound_at = loop.time()
            self._sessions[slot] = session
            BINDS.labels(**self._labels).inc()
            self._bound_changed()
            log.info("smpp connector %s: bind %d up (%s)", config.id, slot, config.bind_type)
            try:
                await self._until_closed_or_closing(session, stop)
                if not session.closed.is_set():
                    await session.unbind()  # close() was called or the slot lost: goodbye
            finally:
                self._sessions.pop(slot, None)
                DISCONNECTS.labels(**self._labels).inc()
                self._bound_changed()
            up_s = loop.time() - bound_at
            if stop.is_set():
                log.info("smpp connector %s: bind %d closed (slot given up)", config.id, slot)
            elif not self._closing.is_set():
                log.warning("smpp connector %s: bind %d lost after %.1fs", config.id, slot, up_s)
            proven = session in self._proven
            return proven or up_s >= config.reconnect_max_s
        finally:
            self._proven.discard(session)
            if not session.closed.is_set():
                await session.close()

    async def _until_closed_or_closing(self, session: SmppSession, stop: asyncio.Event) -> None:
        waiters = {
            asyncio.ensure_future(session.closed.wait()),
            asyncio.ensure_future(self._closing.wait()),
            asyncio.ensure_future(stop.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _bound_changed(self) -> None:
        BOUND_SESSIONS.labels(**self._labels).set(self.bound_sessions)
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter once, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    def _count(self, outcome: str) -> None:
        SUBMITS.labels(connector=self.config.id, outcome=outcome).inc()


def _status_name(status: int) -> str:
    try:
        return CommandStatus(status).name
    except ValueError:
        return raw_code(status)


def _tls_context(config: SmppConnectorConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    if not config.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
