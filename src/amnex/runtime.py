"""Wiring: the long-lived parts one process shares (database, auth cache, limiter, writer,
backpressure sampler).

Built once in an entry point from Settings and handed to `create_app` and the worker; nothing
here is created at import time.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amnex.api.auth import Authenticator
from amnex.api.backpressure import Backpressure
from amnex.api.ratelimit import RateLimiter
from amnex.carriers.routing import RouteCache
from amnex.compliance.geo import GeoPolicy
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.accept import AcceptWriter
from amnex.privacy.content import ContentKeyring
from amnex.privacy.crypto import SecretBox
from amnex.privacy.keys import AddressKeyring, start_address_keys


def tune_gc_for_serving() -> None:
    """Move start-up objects out of the collector's way and collect young objects less often.

    For every long-running process (`amnex serve`, `amnex worker`, `amnex dev`), once it has
    started. A request or a batch of sends allocates many short-lived objects; with the
    default threshold (700) the young generation is collected every few requests and full
    collections rescan everything loaded at start-up. Freezing the start-up heap and raising
    the threshold gave about 30 % more accepted messages per second on the accept benchmark;
    in a worker it ended full collections of about 200,000 start-up objects that stopped its
    event loop for 0.3-0.5 s two to four times a minute (bench/README.md). Cycles are still
    collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def static_channels(settings: Settings) -> frozenset[str]:
    """Channels routed by settings rather than by the route table (email: the SMTP relay)."""
    channels = set()
    if settings.smtp_host:
        channels.add("email")
    return frozenset(channels)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    auth: Authenticator
    limiter: RateLimiter
    writer: AcceptWriter
    routes: RouteCache
    secret_box: SecretBox
    geo: GeoPolicy
    # Samples the due queue in the background; `POST /v1/messages` reads its verdict.
    backpressure: Backpressure
    # Message content is encrypted under these keys, addresses under the account's data keys
    # (None without a master key).
    content_keys: ContentKeyring | None = None
    address_keys: AddressKeyring | None = None
    # In `amnex dev` only: the simulators, inspectable under /_dev/.
    simulators: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        db: Database | None = None,
        on_commit: Callable[[int], None] | None = None,
    ) -> Runtime:
        db = db or Database(settings)
        return cls(
            settings=settings,
            db=db,
            auth=Authenticator(db, settings.api_key_cache_ttl_s),
            limiter=RateLimiter(settings.redis_url),
            writer=AcceptWriter(
                db,
                writers=settings.effective_accept_writers,
                batch_max=settings.accept_batch_max,
                db_retry_s=settings.accept_db_retry_s,
                on_commit=on_commit,
            ),
            routes=RouteCache(
                db, static_channels=static_channels(settings), ttl_s=settings.route_cache_ttl_s
            ),
            secret_box=SecretBox.from_settings(settings),
            geo=GeoPolicy.from_settings(
                blocked_countries=settings.blocked_countries,
                blocked_prefixes=settings.blocked_prefixes,
                exempt_prefixes=settings.exempt_prefixes,
            ),
            backpressure=Backpressure.from_settings(db, settings),
        )

    async def start(self) -> None:
        self.address_keys = await start_address_keys(self.db, self.secret_box)
        if self.secret_box.available:
            self.content_keys = await ContentKeyring.start(
                self.db, self.secret_box, period_s=self.settings.content_key_period_s
            )
        await self.writer.start()
        await self.routes.start()
        await self.backpressure.start()

    async def close(self, *, dispose_db: bool = True) -> None:
        await self.backpressure.close()
        if self.content_keys is not None:
            await self.content_keys.close()
            self.content_keys = None
        if self.address_keys is not None:
            await self.address_keys.close()
            self.address_keys = None
        await self.routes.close()
        await self.writer.close()
        await self.auth.close()
        await self.limiter.close()
        if dispose_db:
            await self.db.dispose()
