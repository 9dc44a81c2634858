"""Simulators: an SMTP sink (aiosmtpd on loopback) that records mail and plays scripted outcomes.

The email channel's peer for `amnex dev`, the tests and the benchmarks. It runs inside the
caller's event loop (`loop.create_server`, not aiosmtpd's threaded Controller), so tests can
drive it without threads. Outcomes follow the `amnex dev` contract, keyed on the trailing two
digits of the recipient's local part:

    ...90@  accepted (recorded with `bounce: true`), then bounced: an RFC 3464 DSN
            (5.1.1 user unknown) goes to the envelope sender, through the bounce relay
    ...91@  RCPT refused: 550 5.1.1 User unknown
    ...92@  RCPT refused with 451 4.3.0 the first time the address is seen, accepted after
    other   accepted: 250 2.0.0 Ok: queued as <hex id>

Bounces. A real server that accepts mail and later finds it cannot deliver it mails a delivery
status notification to the envelope sender (MAIL FROM), from the null sender. The sink does
the same, but only to a bounce relay on loopback that the caller names (`bounce_relay`, or
`send_bounces_to` once it is known: in `amnex dev`, the bounce receiver), never to the
sender's real domain. Each DSN is tried a bounded number of times with backoff (a 4xx or a
refused connection is retried, a 5xx is final); `bounces()` reports what became of each.
Without a relay, or for mail from the null sender (a bounce is never bounced), nothing is sent.

`hold(address)` parks DATA for a recipient without answering until `release(address)`, so a
test can cut a connection at the one moment where SMTP cannot say whether mail was delivered.
Stored messages live in memory only; the sink never writes to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import hmac
import ipaddress
import re
import secrets
import ssl
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesHeaderParser, BytesParser
from email.utils import format_datetime, make_msgid
from typing import Any, Final

import aiosmtplib
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from amnex.clock import utc_now

_TRAILING_DIGITS = re.compile(r"(\d\d)$")
_GREETING_HOSTNAME = "smtp-sink.amnex.localhost"
BOUNCE_ATTEMPTS: Final = 8
BOUNCE_FIRST_RETRY_S: Final = 0.1
BOUNCE_MAX_RETRY_S: Final = 2.0
BOUNCE_TIMEOUT_S: Final = 5.0
BOUNCE_STATUS: Final = "5.1.1"
_DSN_POLICY: Final = email.policy.SMTP


def outcome_digits(address: str) -> str | None:
    """The two digits that script a recipient's outcome: the local part's last two, if digits."""
    local_part = address.rpartition("@")[0] or address
    match = _TRAILING_DIGITS.search(local_part)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class _Stored:
    entry: dict[str, Any]
    raw: bytes


@dataclass
class _Hold:
    released: asyncio.Event = field(default_factory=asyncio.Event)
    parked: asyncio.Event = field(default_factory=asyncio.Event)


class _SinkSMTP(SMTP):
    """aiosmtpd's protocol, reporting its connection's end so `stop()` can close live ones."""

    def __init__(self, sink: SmtpSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def connection_lost(self, error: Exception | None) -> None:
        self._sink._forget(self)
        super().connection_lost(error)


class _Handler:
    """aiosmtpd hooks; kept apart from SmtpSink because aiosmtpd scans its handler's members."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    # aiosmtpd finds its hooks by these exact names.
    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        digits = outcome_digits(address)
        if digits == "91":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if digits == "92" and self._sink._first_sight(address):
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for recipient in envelope.rcpt_tos:
            hold = self._sink._holds.get(recipient.lower())
            if hold is not None:
                hold.parked.set()
                # A client that disconnects meanwhile cancels this coroutine, so the message
                # is never stored: exactly what a real server does with an unfinished DATA.
                await hold.released.wait()
        queue_id = secrets.token_hex(5).upper()
        self._sink._store(queue_id, envelope)
        bounced = [r for r in envelope.rcpt_tos if outcome_digits(r) == "90"]
        if bounced:
            self._sink._bounce_later(envelope.mail_from or "", bounced, envelope)
        return f"250 2.0.0 Ok: queued as {queue_id}"


class SmtpSink:
    """A local SMTP server that accepts, refuses or defers mail by the recipient's digits."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        auth: dict[str, str] | None = None,
        max_stored: int = 10_000,
        bounce_relay: tuple[str, int] | None = None,
    ) -> None:
        if (require_starttls or implicit_tls) and tls_context is None:
            raise ValueError("require_starttls and implicit_tls need a tls_context")
        if require_starttls and implicit_tls:
            raise ValueError("require_starttls and implicit_tls exclude each other")
        self._host = host
        self._requested_port = port
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._implicit_tls = implicit_tls
        self._auth = dict(auth) if auth else None
        self._max_stored = max_stored
        self._server: asyncio.Server | None = None
        self._port = 0
        self._handler = _Handler(self)
        self._live: set[_SinkSMTP] = set()
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self._messages: deque[_Stored] = deque(maxlen=max_stored)
        # Insertion-ordered so the oldest ids are forgotten first once the bound is reached.
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._deferred_once: set[str] = set()
        self._holds: dict[str, _Hold] = {}
        self._bounce_relay: tuple[str, int] | None = None
        if bounce_relay is not None:
            self.send_bounces_to(*bounce_relay)
        self._bounce_tasks: set[asyncio.Task[None]] = set()
        self._bounces: deque[dict[str, Any]] = deque(maxlen=max_stored)
        self.connection_count = 0

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); 0 before `start()`."""
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the SMTP sink is already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection,
            host=self._host,
            port=self._requested_port,
            ssl=self._tls_context if self._implicit_tls else None,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def send_bounces_to(self, host: str, port: int) -> None:
        """Deliver the DSNs of `...90@` mail to the SMTP server at (host, port), on loopback."""
        if not _is_loopback(host):
            raise ValueError(f"the sink sends bounces on loopback only, not to {host!r}")
        if not 0 < port < 65536:
            raise ValueError(f"not a port: {port}")
        self._bounce_relay = (host, port)

    def bounces(self) -> list[dict[str, Any]]:
        """What became of each DSN, oldest first: `to`, `recipients`, `status` (`sending`,
        `sent` or `failed`), `attempts` and the relay's last `reply`."""
        return [dict(entry) for entry in self._bounces]

    async def wait_for_bounces(self) -> list[dict[str, Any]]:
        """`bounces()`, once every DSN under way is sent or given up (wrap in `asyncio.timeout`)."""
        while pending := [task for task in self._bounce_tasks if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        return self.bounces()

    async def stop(self) -> None:
        """Stop listening and close every open connection (parked DATA is dropped unstored);
        DSNs still being sent are abandoned."""
        tasks = list(self._bounce_tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self._live):
            if protocol.transport is not None:
                protocol.transport.close()
        await server.wait_closed()

    def messages(self) -> list[dict[str, Any]]:
        """Stored messages, oldest first (at most `max_stored`), as JSON-ready dicts."""
        return [
            {**stored.entry, "rcpt_tos": list(stored.entry["rcpt_tos"])}
            for stored in self._messages
        ]

    def raw_message(self, message_id: str) -> bytes | None:
        """A stored message's bytes exactly as received (for checks such as DKIM), by its id."""
        for stored in self._messages:
            if stored.entry["id"] == message_id:
                return stored.raw
        return None

    @property
    def open_connections(self) -> int:
        """Connections open right now (`connection_count` counts every one since start)."""
        return len(self._live)

    def clear(self) -> None:
        """Forget stored messages, per-id counts and which 92 addresses were already deferred.

        `connection_count` keeps counting since `start()`.
        """
        self._messages.clear()
        self._counts.clear()
        self._deferred_once.clear()
        self._bounces.clear()

    def count_for(self, amnex_message_id: str) -> int:
        """How many times a message with this X-Amnex-Message-Id was accepted.

        Counts cover the most recent `max_stored` distinct ids.
        """
        return self._counts.get(amnex_message_id, 0)

    def hold(self, address: str) -> None:
        """Make DATA for `address` wait, unanswered, until `release(address)` or a disconnect."""
        self._holds.setdefault(address.lower(), _Hold())

    def release(self, address: str) -> None:
        """Answer (and store) DATA parked for `address`; later mail to it is no longer held."""
        hold = self._holds.pop(address.lower(), None)
        if hold is not None:
            hold.released.set()

    async def wait_until_held(self, address: str) -> None:
        """Return once a DATA for `address` is parked by `hold` (wrap in `asyncio.timeout`)."""
        hold = self._holds.get(address.lower())
        if hold is None:
            raise RuntimeError(f"{address} is not held")
        await hold.parked.wait()

    async def wait_until_no_connections(self) -> None:
        """Return once no client is connected (wrap in `asyncio.timeout`)."""
        await self._no_connections.wait()

    def _new_connection(self) -> _SinkSMTP:
        self.connection_count += 1
        auth_required = self._auth is not None
        # aiosmtpd only knows about TLS it negotiated itself (STARTTLS): with implicit TLS it
        # would refuse AUTH on an encrypted socket, so it must not insist there. Without any
        # TLS the sink is a loopback test peer and plain AUTH is what the tests exercise.
        auth_require_tls = (
            auth_required and self._tls_context is not None and not self._implicit_tls
        )
        with warnings.catch_warnings():
            # aiosmtpd warns that AUTH without TLS is unsafe; that is the intended setup above.
            warnings.filterwarnings(
                "ignore", message="Requiring AUTH while not requiring TLS", category=UserWarning
            )
            protocol = _SinkSMTP(
                self,
                self._handler,
                hostname=_GREETING_HOSTNAME,
                ident="Amnex SMTP sink",
                tls_context=None if self._implicit_tls else self._tls_context,
                require_starttls=self._require_starttls,
                enable_SMTPUTF8=True,
                auth_required=auth_required,
                auth_require_tls=auth_require_tls,
                authenticator=self._authenticate if auth_required else None,
                loop=asyncio.get_running_loop(),
            )
        self._live.add(protocol)
        self._no_connections.clear()
        return protocol

    def _forget(self, protocol: _SinkSMTP) -> None:
        self._live.discard(protocol)
        if not self._live:
            self._no_connections.set()

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if self._auth is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = auth_data.login.decode("utf-8", errors="replace")
        expected = self._auth.get(username)
        ok = expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), auth_data.password
        )
        return AuthResult(success=ok, handled=False)

    def _first_sight(self, address: str) -> bool:
        """True (and remembered) the first time a deferred-once address is seen."""
        key = address.lower()
        if key in self._deferred_once:
            return False
        self._deferred_once.add(key)
        return True

    def _store(self, queue_id: str, envelope: Envelope) -> None:
        raw: bytes = envelope.original_content or b""
        parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
        amnex_id = _header(parsed, "X-Amnex-Message-Id")
        entry = {
            "id": queue_id,
            "received_at": utc_now().isoformat(),
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": _header(parsed, "Subject"),
            "from": _header(parsed, "From"),
            "to": _header(parsed, "To"),
            "message_id": _header(parsed, "Message-ID"),
            "x_amnex_message_id": amnex_id,
            "text": _body(parsed, "plain"),
            "html": _body(parsed, "html"),
            "dkim_signature": "DKIM-Signature" in parsed,
            "list_unsubscribe": _header(parsed, "List-Unsubscribe"),
            "list_unsubscribe_post": _header(parsed, "List-Unsubscribe-Post"),
            "size": len(raw),
            "bounce": any(outcome_digits(r) == "90" for r in envelope.rcpt_tos),
        }
        self._messages.append(_Stored(entry, raw))
        if amnex_id is not None:
            self._counts[amnex_id] = self._counts.get(amnex_id, 0) + 1
            while len(self._counts) > self._max_stored:
                self._counts.popitem(last=False)

    def _bounce_later(self, mail_from: str, recipients: list[str], envelope: Envelope) -> None:
        """Send a DSN for `recipients` once DATA has been answered (see the module's note)."""
        if self._bounce_relay is None or not mail_from or mail_from == "<>":
            return
        raw: bytes = envelope.original_content or b""
        dsn = build_dsn(mail_from, recipients, raw)
        entry: dict[str, Any] = {
            "to": mail_from,
            "recipients": list(recipients),
            "status": "sending",
            "attempts": 0,
            "reply": None,
        }
        self._bounces.append(entry)
        task = asyncio.create_task(self._send_bounce(self._bounce_relay, dsn, entry))
        self._bounce_tasks.add(task)
        task.add_done_callback(self._bounce_tasks.discard)

    async def _send_bounce(self, relay: tuple[str, int], dsn: bytes, entry: dict[str, Any]) -> None:
        host, port = relay
        delay_s = BOUNCE_FIRST_RETRY_S
        for attempt in range(1, BOUNCE_ATTEMPTS + 1):
            entry["attempts"] = attempt
            client = aiosmtplib.SMTP(
                hostname=host,
                port=port,
                local_hostname=_GREETING_HOSTNAME,
                timeout=BOUNCE_TIMEOUT_S,
                start_tls=False,
            )
            try:
                # `aiosmtplib.send` refuses the null sender; a bounce must come from it.
                async with client:
                    await client.sendmail("", [entry["to"]], dsn)
            except aiosmtplib.SMTPResponseException as exc:
                entry["reply"] = f"{exc.code} {exc.message}"
                if exc.code >= 500:
                    break
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refusal = exc.recipients[0] if exc.recipients else None
                entry["reply"] = f"{refusal.code} {refusal.message}" if refusal else str(exc)
                if refusal is None or refusal.code >= 500:
                    break
            except (OSError, aiosmtplib.SMTPException) as exc:
                entry["reply"] = str(exc) or type(exc).__name__
            else:
                entry["status"], entry["reply"] = "sent", "250"
                return
            if attempt < BOUNCE_ATTEMPTS:
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, BOUNCE_MAX_RETRY_S)
        entry["status"] = "failed"


def build_dsn(to: str, recipients: list[str], original: bytes) -> bytes:
    """An RFC 3464 delivery status notification: `recipients` of the mail `original` were
    unknown (5.1.1). Sent from the null sender to `to`, with the original's headers."""
    report = MIMEMultipart("report", report_type="delivery-status", policy=_DSN_POLICY)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{_GREETING_HOSTNAME}>"
    report["To"] = to
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(utc_now())
    report["Message-ID"] = make_msgid(domain=_GREETING_HOSTNAME)
    report["Auto-Submitted"] = "auto-replied"
    report.attach(
        MIMEText(
            "This is the mail system at host smtp-sink.amnex.localhost.\n\n"
            "Your message could not be delivered to one or more recipients:\n\n"
            + "".join(f"<{r}>: User unknown\n" for r in recipients),
            "plain",
            policy=_DSN_POLICY,
        )
    )
    status = Message(policy=_DSN_POLICY)
    status["Content-Type"] = "message/delivery-status"
    per_message = Message(policy=_DSN_POLICY)
    per_message["Reporting-MTA"] = f"dns; {_GREETING_HOSTNAME}"
    per_message["Arrival-Date"] = format_datetime(utc_now())
    blocks: list[Message | str] = [per_message]
    for recipient in recipients:
        block = Message(policy=_DSN_POLICY)
        block["Final-Recipient"] = f"rfc822; {recipient}"
        block["Original-Recipient"] = f"rfc822; {recipient}"
        block["Action"] = "failed"
        block["Status"] = BOUNCE_STATUS
        block["Diagnostic-Code"] = (
            f"smtp; 550 {BOUNCE_STATUS} <{recipient}>: Recipient address rejected: User unknown"
        )
        blocks.append(block)
    status.set_payload(blocks)
    report.attach(status)
    headers = BytesHeaderParser(policy=_DSN_POLICY).parsebytes(original)
    header_text = "".join(f"{name}: {value}\n" for name, value in headers.items())
    report.attach(MIMEText(header_text, "rfc822-headers", policy=_DSN_POLICY))
    return report.as_bytes()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _header(message: EmailMessage, name: str) -> str | None:
    value = message.get(name)
    return None if value is None else str(value)


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError):
        # An unknown charset or a broken transfer encoding: the sink records what it can.
        return None
    if not isinstance(content, str):
        return None
    # Bodies travel with CRLF line ends; readers of the sink want text as Python writes it.
    return content.replace("\r\n", "\n")
