"""Channels: building the carrier connections a worker sends through."""

from __future__ import annotations

from amnex.carriers.routing import RouteCache
from amnex.channels.base import Channel
from amnex.channels.sms import SmsChannel
from amnex.channels.smtp import SmtpChannel
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.privacy.crypto import SecretBox
from amnex.receipts.writer import DeliveryWriter


def build_channels(
    settings: Settings, db: Database, *, routes: RouteCache, deliveries: DeliveryWriter
) -> dict[str, Channel]:
    """One channel per message channel: email when an SMTP relay is configured; SMS always
    (its connectors and routes live in the database and may be added at any time)."""
    channels: dict[str, Channel] = {}
    if settings.smtp_host:
        channels["email"] = SmtpChannel(settings)
    channels["sms"] = SmsChannel(
        db,
        routes=routes,
        box=SecretBox.from_settings(settings),
        on_deliver=deliveries.handler,
        redis_url=settings.redis_url,
        reload_s=settings.route_cache_ttl_s,
    )
    return channels
