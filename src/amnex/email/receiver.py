"""Email: the bounce receiver — an SMTP server for VERP addresses that applies DSN and ARF reports.

Design note. Email is `delivered` at the recipient server's 250; what goes wrong later comes
back as mail to the message's envelope sender, `bounces+<message id>@<bounce_domain>`
(`channels.smtp.verp_sender`). This server takes that mail (aiosmtpd, in the caller's event
loop, as the SMTP sink does) and applies it:

- RCPT: only `bounces+<id>@<bounce_domain>` for a well-formed message id is accepted (550
  otherwise; no other mail is ever taken). DATA over `bounce_max_message_bytes` is refused
  by aiosmtpd with 552.
- DATA: the mail is read by `email.bounces` (pure), then, for every recipient, ONE transaction
  applies what it says. A hard bounce makes a `delivered` message `undelivered` (error_code
  from the DSN status, `provider_error_code` the status itself, an event) and suppresses the
  recipient for the account's email (`source: "bounce"`); a complaint only suppresses
  (`source: "complaint"`). The 250 is answered only after that transaction committed, so a
  crash loses nothing: the sender still holds the report and sends it again. A database that
  is away answers 451, which tells the sender to retry.
- Idempotent: the message row is locked while the report is applied; a message already
  `undelivered` is left alone, and `add_opt_out` creates neither a row nor an event twice. So
  a duplicate report — a retry after a lost 250, or two copies — changes nothing.

A hard bounce can overtake the record of its own send: a relay may bounce within
milliseconds of its 250, before the worker has stored `delivered`. A message still `sending`
is therefore answered 451 (nothing changed), and the sender brings the report back once the
outcome is stored. A bounce for a message in any other state (queued again after a connection
lost during DATA, already `failed`) still suppresses the address — the claim's re-check then
stops the retry — but only a `delivered` message changes status (`messages.status`: only a
bounce takes delivered → undelivered).

Anyone who can reach the port and knows a message id can report it bounced. Message ids
carry 80 random bits and appear only in that one email, so in practice only its recipient
can, and only about their own address. Keep the port behind the MX that receives the bounce
domain's mail (the default listens on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.email.bounces import (
    BounceKind,
    Report,
    Verdict,
    judge,
    message_id_from_verp,
    parse_report,
)
from amnex.errors import InvalidAddress
from amnex.messages.models import Message
from amnex.messages.service import transition
from amnex.messages.status import Status
from amnex.metrics import EMAIL_BOUNCES
from amnex.privacy.keys import load_keys, open_address
from amnex.recipients.service import add_opt_out

__all__ = ["BounceReceiver", "OutcomePending", "apply_report"]

log = logging.getLogger(__name__)

MAX_RECIPIENTS: Final = 50
SESSION_TIMEOUT_S: Final = 60.0
ERROR_MESSAGE_MAX_LENGTH: Final = 500


class OutcomePending(Exception):
    """A hard bounce for a message whose send outcome is not stored yet: ask again later."""


async def apply_report(
    db: Database, report: Report, message_ids: Sequence[str], *, now: datetime
) -> list[BounceKind]:
    """Apply one report to each message it was addressed to, in ONE transaction (see the
    module's design note); returns what it was for each. Raises OutcomePending, or a database
    error, having changed nothing."""
    async with db.unit_of_work() as session:
        return [await _apply_one(session, report, message_id, now) for message_id in message_ids]


async def _apply_one(
    session: AsyncSession, report: Report, message_id: str, now: datetime
) -> BounceKind:
    message = await session.scalar(
        select(Message).where(Message.id == message_id).with_for_update()
    )
    if message is None or message.channel != "email" or message.direction != "outbound":
        return "unmatched"
    await load_keys((message.account_id,))
    verdict = judge(report, message_id=message.id, address=open_address(message.to_addr) or "")
    if verdict.kind == "hard":
        if message.status == Status.SENDING.value:
            raise OutcomePending(message.id)
        if message.status == Status.UNDELIVERED.value:
            # Applied before (a duplicate report, or the sender's retry after a lost 250).
            return "hard"
        _mark_undelivered(session, message, verdict, now)
        await _suppress(
            session,
            message,
            "bounce",
            {
                "message_id": message.id,
                "status": verdict.status,
                "diagnostic": verdict.diagnostic,
            },
        )
    elif verdict.kind == "complaint":
        await _suppress(
            session, message, "complaint", {"message_id": message.id, "feedback_type": "abuse"}
        )
    return verdict.kind


def _mark_undelivered(
    session: AsyncSession, message: Message, verdict: Verdict, now: datetime
) -> None:
    if message.status != Status.DELIVERED.value:
        return
    detail: dict[str, Any] = {"source": "bounce", "provider_error_code": verdict.status}
    if verdict.diagnostic:
        detail["diagnostic"] = verdict.diagnostic
    transition(
        session, message, Status.UNDELIVERED, at=now, error_code=verdict.error_code, detail=detail
    )
    message.error_code = verdict.error_code
    text = f"bounced after delivery: {verdict.status}"
    if verdict.diagnostic:
        text += f" {verdict.diagnostic}"
    message.error_message = text[:ERROR_MESSAGE_MAX_LENGTH]
    message.provider_error_code = verdict.status
    # `delivered_at` stays: it is when the recipient's server accepted the mail.
    message.failed_at = now


async def _suppress(
    session: AsyncSession, message: Message, source: str, evidence: dict[str, str | None]
) -> None:
    try:
        await add_opt_out(
            session,
            account_id=message.account_id,
            channel="email",
            address=open_address(message.to_addr) or "",
            source=source,
            evidence={key: value for key, value in evidence.items() if value is not None},
        )
    except InvalidAddress:
        # Stored addresses are normalised at accept; one that no longer normalises (a rule
        # of the address library changed) cannot be suppressed, and retrying will not help.
        log.warning("message %s: its recipient cannot be put on the suppression list", message.id)


class _ReceiverSMTP(SMTP):
    """aiosmtpd's protocol, reporting its connection's end so `stop()` can close live ones."""

    def __init__(self, receiver: BounceReceiver, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receiver = receiver

    def connection_lost(self, error: Exception | None) -> None:
        self._receiver._live.discard(self)
        super().connection_lost(error)


class _Handler:
    """aiosmtpd hooks; kept apart because aiosmtpd scans its handler's members."""

    def __init__(self, receiver: BounceReceiver) -> None:
        self._receiver = receiver

    # aiosmtpd finds its hooks by these exact names.
    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if message_id_from_verp(address, self._receiver.bounce_domain) is None:
            return "550 5.1.1 No such bounce address"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self._receiver.receive(envelope.rcpt_tos, envelope.original_content or b"")


class BounceReceiver:
    """The SMTP server for `bounces+<id>@<bounce_domain>` (see the module's design note)."""

    def __init__(
        self, settings: Settings, db: Database, *, host: str | None = None, port: int | None = None
    ) -> None:
        if not settings.bounce_domain:
            raise ValueError("the bounce receiver needs bounce_domain")
        self.bounce_domain: str = settings.bounce_domain
        self._db = db
        self._host = host if host is not None else settings.bounce_listen_host
        self._requested_port = port if port is not None else settings.bounce_listen_port or 0
        self._max_bytes = settings.bounce_max_message_bytes
        self._handler = _Handler(self)
        self._server: asyncio.Server | None = None
        self._live: set[_ReceiverSMTP] = set()
        self._port = 0

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the real one when asked for port 0); 0 before `start()`."""
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the bounce receiver is already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection,
            host=self._host,
            port=self._requested_port,
            # Several workers on one machine share the port; the kernel spreads connections.
            reuse_port=hasattr(socket, "SO_REUSEPORT") and self._requested_port != 0,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("bounce receiver on %s:%d for @%s", self._host, self._port, self.bounce_domain)

    async def stop(self) -> None:
        """Stop listening and hang up on every client (a report not yet answered is resent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self._live):
            if protocol.transport is not None:
                protocol.transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()

    async def receive(self, recipients: Sequence[str], raw: bytes) -> str:
        """Read and apply one mail; the SMTP reply to its DATA."""
        message_ids = list(
            dict.fromkeys(
                message_id
                for address in recipients
                if (message_id := message_id_from_verp(address, self.bounce_domain)) is not None
            )
        )
        # Up to `bounce_max_message_bytes` of MIME: parsed off the event loop.
        report = await asyncio.to_thread(parse_report, raw)
        try:
            kinds = await apply_report(self._db, report, message_ids, now=utc_now())
        except OutcomePending as pending:
            log.info("bounce report for %s arrived before its send was recorded", pending)
            return "451 4.3.0 The message is still being sent, please try again later"
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not record a bounce report (%s); the sender will retry", exc)
            return "451 4.3.0 Temporary failure, please try again later"
        except Exception:
            log.exception("applying a bounce report failed; the sender will retry")
            return "451 4.3.0 Temporary failure, please try again later"
        for message_id, kind in zip(message_ids, kinds, strict=True):
            EMAIL_BOUNCES.labels(kind=kind).inc()
            if kind != "soft":
                log.info("bounce report for %s: %s", message_id, kind)
        return "250 2.0.0 Ok"

    def _new_connection(self) -> _ReceiverSMTP:
        protocol = _ReceiverSMTP(
            self,
            self._handler,
            hostname=self.bounce_domain,
            ident="Amnex bounce receiver",
            data_size_limit=self._max_bytes,
            enable_SMTPUTF8=True,
            timeout=SESSION_TIMEOUT_S,
            loop=asyncio.get_running_loop(),
        )
        self._live.add(protocol)
        return protocol
