"""Channels: the protocol every carrier connection implements, and its two delivery errors.

    DeliveryError
    ├── TemporaryDeliveryError   worth retrying; may carry retry_after_s
    │   └── NotAttempted         nothing was tried: another worker can send it
    └── PermanentDeliveryError   retrying cannot help; the message fails at once

Both carry a normalised `code` (`carrier_rejected`, `unknown_subscriber`, ...) and the
carrier's raw code (an SMTP reply code, an SMPP command_status), which end up on the message
as `error_code` and `provider_error_code`. Channels raise nothing else: the dispatcher
decides what an error means for the message (backoff, expiry, final failure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol


class DeliveryError(Exception):
    retryable: bool = False

    def __init__(
        self, code: str, message: str, *, raw_code: str | None = None, **detail: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.raw_code = raw_code
        self.detail = detail


class TemporaryDeliveryError(DeliveryError):
    retryable = True

    def __init__(
        self,
        code: str,
        message: str,
        *,
        raw_code: str | None = None,
        retry_after_s: float | None = None,
        **detail: Any,
    ) -> None:
        super().__init__(code, message, raw_code=raw_code, **detail)
        self.retry_after_s = retry_after_s


class NotAttempted(TemporaryDeliveryError):
    """Nothing was tried: this worker cannot send the message, another can (`no_bind_here`).

    The dispatcher gives the message back as it was, counting no attempt. A temporary error
    to anything that does not know it, so the channel contract holds.
    """


class PermanentDeliveryError(DeliveryError):
    retryable = False


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What a channel needs to deliver one message; built from the message row by dispatch."""

    id: str
    account_id: str
    channel: str
    from_addr: str
    to_addr: str
    subject: str | None
    body: str | None
    html: str | None
    category: str
    created_at: datetime
    attempt: int
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """A carrier accepted the message.

    `status` is `delivered` when the acceptance is itself the final answer (an SMTP 250 from
    the recipient's server), `sent` when a receipt will follow (SMPP).
    """

    status: Literal["sent", "delivered"]
    provider_message_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # SMS: the connector that took it, the provider id of every part (in order), and how the
    # text was encoded on that connector.
    connector_id: str | None = None
    parts: tuple[str, ...] = ()
    segments: int | None = None
    encoding: str | None = None


class Channel(Protocol):
    """One carrier connection. `send` raises only TemporaryDeliveryError/PermanentDeliveryError."""

    name: str

    async def start(self) -> None: ...

    async def send(self, message: OutboundMessage) -> SubmitResult: ...

    async def close(self) -> None: ...
