"""Webhooks: the sender in `amnex worker` — claim what is due, sign it, POST it, record it.

Design note.

- **Claiming.** Each round drains the outbox (`webhooks.outbox`), then claims due deliveries
  (`pending`, or `delivering` under an expired lease — its worker died) with `FOR UPDATE SKIP
  LOCKED` and a lease, so any number of workers share them and a delivery a killed worker
  held is sent again after its lease, with the same `webhook-id` (at least once).
- **Order per message.** A message's events go to an endpoint in their order: a delivery
  waits while an older one for the same endpoint and message is still owed. An older one
  that has already failed at least once does not hold the newer back: it is `superseded`
  (the newer event carries the message's current state), so a late `sent` never arrives after
  `delivered` and nothing waits a day behind a failing older event.
- **Sending.** The body is `{"type", "timestamp", "data"}`, signed per Standard Webhooks with
  every live secret of the endpoint (two during a rotation's overlap); signatures cover id,
  timestamp and body, never the URL. Per-endpoint concurrency is bounded by its
  `max_concurrency`, the worker's by `webhook_concurrency`. The HTTP side
  (`webhooks.client`) pins the vetted address (SSRF guard), follows no redirect and keeps no
  response body.
- **Outcomes.** 2xx: `delivered`. 408, 429, 5xx, timeouts and network errors: retried with
  exponential backoff and full jitter (`webhooks.retry`), `Retry-After` honoured, for 24 hours
  from the first attempt, then `failed`. Other 4xx, a redirect, an unsafe destination:
  `failed` at once; a 410 also disables the endpoint. An endpoint whose deliveries have only
  failed for a day is disabled. Either way the account gets a notice (`GET /v1/notices`).
  Every attempt is a row of the delivery log (`webhook_attempts`): outcome, response code,
  latency — never a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.privacy.crypto import SecretBox
from amnex.webhooks import retry
from amnex.webhooks.client import AttemptResult, WebhookHttpClient
from amnex.webhooks.models import (
    Notice,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from amnex.webhooks.outbox import drain_outbox
from amnex.webhooks.signing import sign
from amnex.webhooks.ssrf import AddressPolicy

log = logging.getLogger(__name__)

# A claimed delivery's lease: a few attempts' deadlines and a margin. A worker that dies
# holding one delays it this long; a live worker never holds one longer than a deadline.
LEASE_MARGIN_S = 30.0
IDLE_S = 0.2
FINAL = ("delivered", "failed", "superseded", "canceled")


def policy_of(settings: Settings) -> AddressPolicy:
    return AddressPolicy.from_settings(
        allow_loopback=settings.webhook_allow_loopback,
        allow_private=settings.webhook_allow_private,
        allowed_networks=settings.webhook_allowed_networks,
    )


def secret_context(endpoint_id: str) -> str:
    return f"webhook:{endpoint_id}"


def live_secrets(box: SecretBox, endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous one during the overlap."""
    secrets = [box.open(endpoint.secret, context=secret_context(endpoint.id))]
    if (
        endpoint.previous_secret is not None
        and endpoint.previous_secret_expires_at is not None
        and endpoint.previous_secret_expires_at > now
    ):
        secrets.append(box.open(endpoint.previous_secret, context=secret_context(endpoint.id)))
    return secrets


def envelope(event: WebhookEvent) -> bytes:
    body = {
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": event.data,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class _Job:
    delivery_id: str
    event_id: str
    endpoint_id: str | None
    url: str
    attempt: int
    first_attempt_at: datetime | None
    body: bytes
    secrets: tuple[str, ...]
    max_concurrency: int


class WebhookSender:
    """Delivers webhooks until `stop()`; one per worker."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        box: SecretBox,
        client: WebhookHttpClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._box = box
        self._client = client or WebhookHttpClient()
        self._rng = rng or random.Random()
        self._policy = policy_of(settings)
        self._require_https = not settings.dev_mode
        self._lease_s = 3 * settings.webhook_timeout_s + LEASE_MARGIN_S
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._per_endpoint: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        try:
            while True:
                busy = False
                try:
                    busy = await self.run_once()
                except Exception as exc:
                    log.warning("webhook round failed (%s); retried", type(exc).__name__)
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), IDLE_S)
                    self._wake.clear()
        finally:
            await self.aclose()

    async def run_once(self) -> bool:
        """One round: drain the outbox, claim what is due, start sending it; whether there
        was anything to do."""
        now = utc_now()
        async with self._db.unit_of_work() as session:
            drained = await drain_outbox(session, now=now)
        free = self._settings.webhook_concurrency - len(self._tasks)
        jobs = await self._claim(free, now) if free > 0 else []
        for job in jobs:
            task = asyncio.create_task(self._send(job), name=f"webhook-{job.delivery_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return bool(drained or jobs)

    async def aclose(self) -> None:
        """Stop what is in flight (its leases run out; it is sent again) and close the pool."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the deliveries in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    # --- claiming ------------------------------------------------------------------------

    async def _claim(self, limit: int, now: datetime) -> list[_Job]:
        async with self._db.unit_of_work() as session:
            due = list(
                await session.scalars(
                    select(WebhookDelivery)
                    .where(
                        or_(
                            and_(
                                WebhookDelivery.status == "pending",
                                WebhookDelivery.next_attempt_at <= now,
                            ),
                            and_(
                                WebhookDelivery.status == "delivering",
                                WebhookDelivery.lease_until <= now,
                            ),
                        )
                    )
                    .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.seq)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            if not due:
                return []
            jobs: list[_Job] = []
            endpoints = {
                e.id: e
                for e in await session.scalars(
                    select(WebhookEndpoint).where(
                        WebhookEndpoint.id.in_({d.endpoint_id for d in due if d.endpoint_id})
                    )
                )
            }
            events = {
                e.id: e
                for e in await session.scalars(
                    select(WebhookEvent).where(WebhookEvent.id.in_({d.event_id for d in due}))
                )
            }
            for delivery in due:
                endpoint = endpoints.get(delivery.endpoint_id or "")
                if delivery.endpoint_id is not None and (endpoint is None or not endpoint.enabled):
                    delivery.status, delivery.updated_at = "canceled", now
                    continue
                if delivery.seq and await self._held_back(session, delivery, now):
                    continue
                event = events[delivery.event_id]
                delivery.status = "delivering"
                delivery.lease_until = now + timedelta(seconds=self._lease_s)
                delivery.updated_at = now
                if endpoint is not None:
                    url, secrets, concurrency = (
                        endpoint.url,
                        tuple(live_secrets(self._box, endpoint, now)),
                        endpoint.max_concurrency,
                    )
                else:
                    url, secrets, concurrency = (
                        str(delivery.callback_url),
                        tuple(await self._callback_secrets(session, delivery.account_id, now)),
                        4,
                    )
                jobs.append(
                    _Job(
                        delivery_id=delivery.id,
                        event_id=event.id,
                        endpoint_id=delivery.endpoint_id,
                        url=url,
                        attempt=delivery.attempts + 1,
                        first_attempt_at=delivery.first_attempt_at,
                        body=envelope(event),
                        secrets=secrets,
                        max_concurrency=concurrency,
                    )
                )
            return jobs

    async def _held_back(self, session: Any, delivery: WebhookDelivery, now: datetime) -> bool:
        """Whether an older delivery of the same message to the same receiver is still owed;
        older ones that already failed once are superseded instead (see the design note)."""
        same_receiver = (
            WebhookDelivery.endpoint_id == delivery.endpoint_id
            if delivery.endpoint_id is not None
            else WebhookDelivery.callback_url == delivery.callback_url
        )
        older = list(
            await session.scalars(
                select(WebhookDelivery).where(
                    same_receiver,
                    WebhookDelivery.subject_id == delivery.subject_id,
                    WebhookDelivery.seq < delivery.seq,
                    WebhookDelivery.status.not_in(FINAL),
                )
            )
        )
        held = False
        for other in older:
            if other.attempts > 0 and other.status == "pending":
                other.status, other.updated_at, other.next_attempt_at = "superseded", now, None
            else:
                held = True
        return held

    async def _callback_secrets(self, session: Any, account_id: str, now: datetime) -> list[str]:
        """A `status_callback` is signed with the secrets of the account's enabled endpoints
        (a receiver verifies with any of them); for an account without one it goes unsigned."""
        found: list[str] = []
        for endpoint in await session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.account_id == account_id, WebhookEndpoint.enabled.is_(True))
            .order_by(WebhookEndpoint.id)
        ):
            found.extend(live_secrets(self._box, endpoint, now))
        return found

    # --- sending -------------------------------------------------------------------------

    def _endpoint_slots(self, job: _Job) -> asyncio.Semaphore:
        key = job.endpoint_id or job.url
        slots = self._per_endpoint.get(key)
        if slots is None:
            slots = self._per_endpoint[key] = asyncio.Semaphore(job.max_concurrency)
        return slots

    async def _send(self, job: _Job) -> None:
        try:
            async with self._slots, self._endpoint_slots(job):
                now = utc_now()
                timestamp = int(now.timestamp())
                headers = (
                    sign(job.event_id, timestamp, job.body, job.secrets)
                    if job.secrets
                    # A status_callback of an account without an endpoint: nothing to sign
                    # with (docs/webhooks.md says so).
                    else {"webhook-id": job.event_id, "webhook-timestamp": str(timestamp)}
                )
                headers["content-type"] = "application/json"
                result = await self._client.deliver(
                    job.url,
                    job.body,
                    headers,
                    policy=self._policy,
                    require_https=self._require_https,
                    timeout_s=self._settings.webhook_timeout_s,
                )
            await self._record(job, result, utc_now())
        except Exception as exc:
            # The lease runs out and the delivery is taken again: nothing is lost.
            log.warning("webhook %s not recorded (%s)", job.delivery_id, type(exc).__name__)

    async def _record(self, job: _Job, result: AttemptResult, now: datetime) -> None:
        async with self._db.unit_of_work() as session:
            delivery = await session.get(WebhookDelivery, job.delivery_id, with_for_update=True)
            if delivery is None or delivery.status != "delivering":
                return
            first = delivery.first_attempt_at or now
            delivery.attempts = job.attempt
            delivery.first_attempt_at = first
            delivery.last_attempt_at = now
            delivery.last_outcome = str(result.outcome)
            delivery.last_status_code = result.status_code
            delivery.lease_until = None
            delivery.updated_at = now
            if result.ok:
                delivery.status, delivery.next_attempt_at = "delivered", None
            elif result.retryable:
                when = retry.next_attempt_at(
                    attempt=job.attempt,
                    first_attempt_at=first,
                    now=now,
                    rng=self._rng,
                    retry_after_s=result.retry_after_s,
                )
                delivery.status = "pending" if when is not None else "failed"
                delivery.next_attempt_at = when
            else:
                delivery.status, delivery.next_attempt_at = "failed", None
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    event_id=delivery.event_id,
                    account_id=delivery.account_id,
                    endpoint_id=delivery.endpoint_id,
                    at=now,
                    attempt=job.attempt,
                    outcome=str(result.outcome),
                    status_code=result.status_code,
                    latency_ms=int(result.latency_ms),
                    detail=(result.detail or result.reason or None)
                    and str(result.detail or result.reason)[:200],
                )
            )
            if delivery.endpoint_id is not None:
                await self._endpoint_health(session, delivery.endpoint_id, result, now)

    async def _endpoint_health(
        self, session: Any, endpoint_id: str, result: AttemptResult, now: datetime
    ) -> None:
        endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
        if endpoint is None:
            return
        if result.ok:
            endpoint.failing_since = None
            return
        if endpoint.failing_since is None:
            endpoint.failing_since = now
        reason = None
        if result.gone:
            reason = "gone"
        elif retry.should_disable_endpoint(endpoint.failing_since, now):
            reason = "failing"
        if reason is None or not endpoint.enabled:
            return
        endpoint.enabled = False
        endpoint.disabled_reason = reason
        endpoint.updated_at = now
        await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint.id,
                WebhookDelivery.status == "pending",
            )
            .values(status="canceled", next_attempt_at=None, updated_at=now)
        )
        title = (
            f"Webhook endpoint {endpoint.url} answered 410 Gone and was disabled"
            if reason == "gone"
            else f"Webhook endpoint {endpoint.url} failed for a day and was disabled"
        )
        session.add(
            Notice(
                id=new_id("ntc"),
                account_id=endpoint.account_id,
                kind="webhook_endpoint.disabled",
                title=title[:200],
                detail={
                    "endpoint_id": endpoint.id,
                    "reason": reason,
                    "failing_since": endpoint.failing_since.isoformat(),
                    "last_outcome": str(result.outcome),
                    "last_status_code": result.status_code,
                },
                created_at=now,
            )
        )
