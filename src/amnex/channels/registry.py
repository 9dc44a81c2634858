"""Channels: building the configured carrier connections for a worker."""

from __future__ import annotations

from amnex.channels.base import Channel
from amnex.channels.smtp import SmtpChannel
from amnex.config import Settings


def build_channels(settings: Settings) -> dict[str, Channel]:
    """One channel per configured carrier connection, keyed by the message channel it serves."""
    channels: dict[str, Channel] = {}
    if settings.smtp_host:
        channels["email"] = SmtpChannel(settings)
    return channels
