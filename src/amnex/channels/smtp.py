"""Channels: email over SMTP (aiosmtplib), with DKIM signing (dkimpy) and a connection pool.

Design note. One `send` is one SMTP transaction (MAIL, RCPT, DATA) on a pooled connection.
Up to `smtp_pool_size` connections exist at once; a send waits for a free one. A connection
goes back to the pool only when it is known to be in a clean state: after a 250 to DATA, or
after a refusal followed by a successful RSET. Anything else (a disconnect, a timeout, a
cancelled send, a failed RSET) closes it, so a half-finished transaction is never reused.

Outcomes. A 250 to DATA means the recipient's side has taken responsibility for the mail, so
the result is final (`delivered`); later bounces arrive as receipts. With `bounce_domain` set,
the envelope sender is `bounces+<message id>@<bounce_domain>` (VERP), so each bounce or
complaint names its message, and the bounce receiver (`email.receiver`) turns a hard bounce
into `undelivered`; without it, the envelope sender is the From address, as before. Replies
are classified by `classify_smtp_reply` (pure, table-tested). Failures to open a session
(connect, TLS, EHLO, AUTH) are temporary whatever their code: they say nothing about this
message, and the operator can fix them while the dispatcher keeps retrying.

Exactly once. A connection that dies after the message body was sent but before the final
reply leaves the outcome unknown; the error is temporary (the dispatcher retries) and carries
`outcome_unknown=True`. Retries reuse the same Message-ID, so receivers can drop a duplicate.
A pooled connection the server silently dropped fails on MAIL, before anything was sent; that
send is retried once on a fresh connection instead of being reported.

DKIM signing is RSA in pure Python inside dkimpy (several ms per message), so it runs in a
worker thread to keep the event loop responsive.

Marketing email carries a one-click unsubscribe link (RFC 8058): `List-Unsubscribe: <url>`
and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, both covered by the DKIM signature
as RFC 8058 requires, and the same URL in the bodies (`email.unsubscribe`). The URL names the
recipient and the message in a token that every attempt at the message renders identically.
There is no `mailto:` form: Amnex has no mailbox that would act on such mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError, NonASCIILocalPartDefect
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

import aiosmtplib
import dkim

from amnex.channels.base import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    SubmitResult,
    TemporaryDeliveryError,
)
from amnex.clock import utc_now
from amnex.compliance.addresses import normalise_email_address
from amnex.config import Settings
from amnex.email.unsubscribe import UnsubscribeTokens, check_public_url, fill_html, fill_text
from amnex.errors import InvalidAddress

log = logging.getLogger(__name__)

# Bodies always go out as 7-bit (quoted-printable or base64): a relay that downgrades 8-bit
# content for a peer without 8BITMIME would otherwise break the DKIM body hash.
# `refold_source="none"` leaves alone only the headers set with `set_raw`: List-Unsubscribe,
# whose long URL the folder would otherwise turn into RFC 2047 encoded words, which no mail
# client reads as a URL. Headers set by item assignment are folded as before.
_POLICY: Final = email.policy.SMTP.clone(cte_type="7bit", refold_source="none")
_POLICY_UTF8: Final = email.policy.SMTPUTF8.clone(cte_type="7bit", refold_source="none")

DKIM_SIGNED_HEADERS: Final = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
)
# Signed too when present, as RFC 8058 requires of a one-click unsubscribe.
DKIM_SIGNED_UNSUBSCRIBE_HEADERS: Final = (b"list-unsubscribe", b"list-unsubscribe-post")
ONE_CLICK: Final = "List-Unsubscribe=One-Click"

# Enhanced status code (RFC 3463) at the start of a reply; Exchange prefixes it with "#".
_ENHANCED_STATUS = re.compile(r"^\s*#?([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")
_SPAM_WORDS = re.compile(r"spam|unsolicited|junk|bulk|policy|content|reputation", re.I)
_UNKNOWN_USER_WORDS = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|"
    r"mailbox not found|invalid recipient|recipient not found",
    re.I,
)
_FULL_WORDS = re.compile(r"mailbox (is )?full|over quota|quota exceeded|insufficient storage", re.I)
_THROTTLE_WORDS = re.compile(r"rate limit|too many|throttl|exceeded", re.I)
_HELO_NAME = re.compile(r"[!-~]+")
# The local part of VERP envelope senders: `bounces+<message id>@<bounce_domain>`.
VERP_LOCAL_PREFIX: Final = "bounces"
_QUEUE_ID = re.compile(r"queued as\s+([^\s;,)]+)|\bid=([^\s;,)]+)", re.I)


def classify_smtp_reply(code: int, text: str) -> tuple[str, bool]:
    """Map an SMTP reply to (normalised error code, retryable).

    5xx replies are permanent (but for 530, our missing credentials) and are sorted by their
    enhanced status code (RFC 3463), or by their wording when the server sends none. 4xx
    replies are retryable. A 2xx reply is `("accepted", False)`: nothing failed, nothing to
    retry. Any other code is a server speaking something other than SMTP, worth another try:
    `("protocol_error", True)`.
    """
    enhanced = _ENHANCED_STATUS.match(text)
    subject_detail = (int(enhanced.group(2)), int(enhanced.group(3))) if enhanced else None
    if 200 <= code < 300:
        return "accepted", False
    if 400 <= code < 500:
        if subject_detail == (2, 2) or (enhanced is None and _FULL_WORDS.search(text)):
            return "mailbox_full", True
        if subject_detail in {(2, 0), (2, 1)}:
            return "mailbox_busy", True
        if _THROTTLE_WORDS.search(text):
            return "throttled", True
        return "temporary_failure", True
    if 500 <= code < 600:
        if code == 530:
            # "Authentication required" (RFC 4954) is about our session, not the message:
            # it lasts until the operator configures credentials, so keep the mail queued.
            return "auth_failed", True
        if subject_detail is None:
            if _UNKNOWN_USER_WORDS.search(text):
                return "unknown_subscriber", False
            if code == 552 or _FULL_WORDS.search(text):
                return "mailbox_full", False
            if _SPAM_WORDS.search(text):
                return "spam_filtered", False
            return "carrier_rejected", False
        if subject_detail in {(1, 1), (1, 10), (1, 6)}:
            return "unknown_subscriber", False
        if subject_detail == (2, 2):
            return "mailbox_full", False
        if subject_detail == (7, 1) and _SPAM_WORDS.search(text):
            return "spam_filtered", False
        if subject_detail[0] == 7:
            return "blocked_by_carrier", False
        return "carrier_rejected", False
    return "protocol_error", True


def parse_queue_id(reply_text: str) -> str | None:
    """The server's id for accepted mail, from `queued as ABC123` or `id=ABC123`, if any."""
    match = _QUEUE_ID.search(reply_text)
    if match is None:
        return None
    return match.group(1) or match.group(2)


def verp_sender(message_id: str, bounce_domain: str) -> str:
    """The envelope sender that makes bounces name their message (`email.bounces` reads it)."""
    return f"{VERP_LOCAL_PREFIX}+{message_id}@{bounce_domain}"


@dataclass(frozen=True, slots=True)
class ComposedEmail:
    """An RFC 5322 message, its bytes as they go on the wire, and its SMTP envelope."""

    sender: str
    recipient: str
    message: EmailMessage
    raw: bytes
    smtputf8: bool


def compose_email(
    message: OutboundMessage,
    *,
    date: datetime,
    unsubscribe_url: str | None = None,
    bounce_domain: str | None = None,
) -> ComposedEmail:
    """Build the email for a message, or raise PermanentDeliveryError if it cannot be built.

    `date` is when this attempt leaves: a Date far in the past (a retry a day later, a
    scheduled send) is a spam signal. The Message-ID is derived from the message id, so
    every attempt carries the same one. With `unsubscribe_url` (marketing email), the RFC 8058
    headers name it and the bodies carry it (placeholders filled, else a footer). With
    `bounce_domain`, the envelope sender is the message's VERP address (`verp_sender`).
    """
    sender = _parse_mailbox(message.from_addr, "from")
    recipient = _parse_mailbox(message.to_addr, "to")
    smtputf8 = not (sender.addr_spec.isascii() and recipient.addr_spec.isascii())
    message_id = f"<{message.id}@{_message_id_domain(sender.domain)}>"
    email_message = EmailMessage(policy=_POLICY_UTF8 if smtputf8 else _POLICY)
    try:
        email_message["From"] = sender
        email_message["To"] = recipient
        if message.subject is not None:
            email_message["Subject"] = message.subject
        email_message["Date"] = format_datetime(date)
        email_message["Message-ID"] = message_id
        email_message["X-Amnex-Message-Id"] = message.id
        text, html = message.body, message.html
        if unsubscribe_url is not None:
            # One line however long (at most 998 octets): see `_POLICY`.
            email_message.set_raw("List-Unsubscribe", f"<{unsubscribe_url}>")
            email_message.set_raw("List-Unsubscribe-Post", ONE_CLICK)
            if text is not None or html is None:
                text = fill_text(text or "", unsubscribe_url)
            if html is not None:
                html = fill_html(html, unsubscribe_url)
        if html is not None and text is not None:
            email_message.set_content(text)
            email_message.add_alternative(html, subtype="html")
        elif html is not None:
            email_message.set_content(html, subtype="html")
        else:
            email_message.set_content(text or "")
        raw = email_message.as_bytes()
    except ValueError as exc:
        # A line break in the subject, or text that is not encodable (lone surrogates,
        # which JSON can carry): no attempt can ever send it.
        raise PermanentDeliveryError(
            "invalid_message", f"the message cannot be encoded as email: {exc}"
        ) from exc
    return ComposedEmail(
        sender=verp_sender(message.id, bounce_domain) if bounce_domain else sender.addr_spec,
        recipient=recipient.addr_spec,
        message=email_message,
        raw=raw,
        smtputf8=smtputf8,
    )


def _parse_mailbox(value: str, field: str) -> Address:
    """One mailbox, bare (`a@b.example`) or named (`Name <a@b.example>`)."""
    invalid = PermanentDeliveryError("invalid_address", f"the {field} address is not a mailbox")
    if "\r" in value or "\n" in value:
        raise invalid
    try:
        header = _POLICY.header_factory(field, value)
    except (HeaderParseError, IndexError, ValueError) as exc:
        # The stdlib parser can fail with IndexError on inputs such as "a@".
        raise invalid from exc
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    # A non-ASCII local part is flagged as a defect but is valid mail under SMTPUTF8.
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if len(addresses) != 1 or defects:
        raise invalid
    address = addresses[0]
    if not address.username or not address.domain:
        raise invalid
    return address


def _message_id_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise PermanentDeliveryError(
            "invalid_address", "the from address has an invalid domain"
        ) from exc


@dataclass(frozen=True, slots=True)
class _DkimKey:
    domain: bytes
    selector: bytes
    private_key: bytes

    def sign(self, raw: bytes, headers: tuple[bytes, ...] = DKIM_SIGNED_HEADERS) -> bytes:
        """The message with a DKIM-Signature header in front, covering `headers`."""
        signature: bytes = dkim.sign(
            raw,
            self.selector,
            self.domain,
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(headers),
        )
        return signature + raw


class _StaleConnectionError(Exception):
    """A reused connection was found dead before anything was sent on it."""


class SmtpChannel:
    """The email channel: one SMTP relay (or recipient server) from `Settings`."""

    name = "email"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._slots = asyncio.Semaphore(max(1, settings.smtp_pool_size))
        self._idle: list[aiosmtplib.SMTP] = []
        self._dkim: _DkimKey | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._helo_name: str | None = settings.smtp_helo_name
        self._unsubscribe: UnsubscribeTokens | None = None
        self._public_url: str | None = None
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Check the configuration and load the DKIM key; connections open on first use."""
        settings = self._settings
        if not settings.smtp_host:
            raise ValueError("the email channel needs smtp_host")
        if settings.smtp_pool_size < 1:
            raise ValueError("smtp_pool_size must be at least 1")
        if self._helo_name is not None and not _HELO_NAME.fullmatch(self._helo_name):
            raise ValueError("smtp_helo_name must be a host name without spaces")
        if settings.smtp_tls != "none":
            self._tls_context = _client_tls_context(validate=settings.smtp_validate_certs)
        if self._helo_name is None:
            # aiosmtplib would look the name up on every new connection; once is enough.
            self._helo_name = await asyncio.to_thread(socket.getfqdn)
        self._dkim = await _load_dkim_key(settings)
        await self._load_unsubscribe()
        self._started = True

    async def _load_unsubscribe(self) -> None:
        """The unsubscribe token key and the links' base URL; warn about what is missing."""
        settings = self._settings
        if settings.public_url is not None:
            self._public_url = check_public_url(settings.public_url)
        else:
            log.warning(
                "public_url is not set: marketing email cannot carry an unsubscribe link and "
                "waits until it is (set AMNEX_PUBLIC_URL on API and worker processes)"
            )
        # Reads the master key file, if that is the key source.
        self._unsubscribe = await asyncio.to_thread(UnsubscribeTokens.from_settings, settings)
        if self._unsubscribe.key_source == "database_url":
            log.warning(
                "unsubscribe links are sealed with a key derived from database_url: set "
                "AMNEX_UNSUBSCRIBE_SECRET (or a master key) before sending marketing email"
            )

    def unsubscribe_url(self, message: OutboundMessage) -> str | None:
        """The one-click unsubscribe URL for a marketing message; None for other categories.

        Raises TemporaryDeliveryError while `public_url` is missing: the operator can add it
        and the message then goes out, with its link.
        """
        if message.category != "marketing":
            return None
        if self._unsubscribe is None or self._public_url is None:
            raise TemporaryDeliveryError(
                "internal_error",
                "marketing email needs an unsubscribe link and public_url is not set",
            )
        address = _parse_mailbox(message.to_addr, "to").addr_spec
        # Stored messages carry normalised addresses; keep anything else as written.
        with contextlib.suppress(InvalidAddress):
            address = normalise_email_address(address, field="to")
        return self._unsubscribe.url(
            self._public_url,
            account_id=message.account_id,
            address=address,
            message_id=message.id,
        )

    async def send(self, message: OutboundMessage) -> SubmitResult:
        if not self._started or self._closed:
            state = "closed" if self._closed else "not started"
            raise TemporaryDeliveryError("connection_error", f"the email channel is {state}")
        unsubscribe_url = self.unsubscribe_url(message)
        composed = compose_email(
            message,
            date=utc_now(),
            unsubscribe_url=unsubscribe_url,
            bounce_domain=self._settings.bounce_domain,
        )
        raw = composed.raw
        if self._dkim is not None:
            headers: tuple[bytes, ...] = DKIM_SIGNED_HEADERS
            if unsubscribe_url is not None:
                headers += DKIM_SIGNED_UNSUBSCRIBE_HEADERS
            try:
                raw = await asyncio.to_thread(self._dkim.sign, raw, headers)
            except dkim.DKIMException as exc:
                raise PermanentDeliveryError(
                    "invalid_message", f"DKIM signing failed: {exc}"
                ) from exc
        async with self._slots:
            try:
                return await self._transact(composed, raw, reuse=True)
            except _StaleConnectionError:
                return await self._transact(composed, raw, reuse=False)

    async def close(self) -> None:
        """Quit every idle connection; connections still sending are closed when they finish."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(client) for client in idle))

    async def _transact(self, composed: ComposedEmail, raw: bytes, *, reuse: bool) -> SubmitResult:
        client, reused = await self._checkout(reuse=reuse)
        encoding = "utf-8" if composed.smtputf8 else "ascii"
        mail_options: list[str] = []
        if composed.smtputf8:
            if not client.supports_extension("smtputf8"):
                self._checkin(client, clean=True)
                raise PermanentDeliveryError(
                    "carrier_rejected", "the server cannot take non-ASCII addresses (no SMTPUTF8)"
                )
            mail_options.append("SMTPUTF8")
        if client.supports_extension("size"):
            mail_options.append(f"SIZE={len(raw)}")

        clean = False
        stage = "MAIL FROM"
        try:
            await client.mail(composed.sender, options=mail_options, encoding=encoding)
            stage = "RCPT TO"
            await client.rcpt(composed.recipient, encoding=encoding)
            stage = "DATA"
            response = await client.data(raw)
            clean = True
        except aiosmtplib.SMTPResponseException as exc:
            clean = await _reset(client)
            raise _refusal(exc.code, exc.message, stage=stage) from exc
        except (OSError, aiosmtplib.SMTPException) as exc:
            # OSError covers aiosmtplib's disconnect and timeout errors (ConnectionError and
            # TimeoutError subclasses) as well as socket errors.
            if reused and stage == "MAIL FROM":
                raise _StaleConnectionError from exc
            raise TemporaryDeliveryError(
                "connection_error",
                f"connection lost during {stage}: {_describe(exc)}",
                smtp_stage=stage,
                outcome_unknown=stage == "DATA",
            ) from exc
        except ValueError as exc:
            # aiosmtplib refuses addresses it cannot quote safely onto the command line.
            raise PermanentDeliveryError("invalid_address", str(exc)) from exc
        finally:
            self._checkin(client, clean=clean)
        return SubmitResult(
            status="delivered",
            provider_message_id=parse_queue_id(response.message),
            detail={"smtp_code": response.code, "smtp_reply": response.message},
        )

    async def _checkout(self, *, reuse: bool) -> tuple[aiosmtplib.SMTP, bool]:
        """A connected client (reused from the pool when allowed), and whether it was reused."""
        while reuse and self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
            client.close()
        return await self._connect(), False

    def _checkin(self, client: aiosmtplib.SMTP, *, clean: bool) -> None:
        # After close() nothing is pooled any more: a send that was in flight hangs up.
        if clean and client.is_connected and not self._closed:
            self._idle.append(client)
        else:
            client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        """Open and prepare a session; every failure is a temporary error about the session."""
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            local_hostname=self._helo_name,
            timeout=settings.smtp_timeout_s,
            use_tls=settings.smtp_tls == "implicit",
            # "none" means plaintext: no opportunistic upgrade behind the operator's back.
            start_tls=False,
            tls_context=self._tls_context,
        )
        stage = "connect"
        try:
            await client.connect()
            stage = "EHLO"
            await client.ehlo()
            if settings.smtp_tls == "starttls":
                stage = "STARTTLS"
                await client.starttls()
                stage = "EHLO"
                await client.ehlo()
            if settings.smtp_username is not None:
                stage = "AUTH"
                await client.login(settings.smtp_username, password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            raise TemporaryDeliveryError(
                "auth_failed",
                f"the server refused our credentials: {exc.code} {exc.message}",
                raw_code=str(exc.code),
            ) from exc
        except (OSError, aiosmtplib.SMTPException) as exc:
            client.close()
            raw_code = str(exc.code) if isinstance(exc, aiosmtplib.SMTPResponseException) else None
            if stage == "STARTTLS" or _caused_by_tls(exc):
                raise TemporaryDeliveryError(
                    "tls_error", f"TLS with the server failed: {_describe(exc)}", raw_code=raw_code
                ) from exc
            if stage == "AUTH":
                raise TemporaryDeliveryError(
                    "auth_failed", f"could not authenticate: {_describe(exc)}", raw_code=raw_code
                ) from exc
            raise TemporaryDeliveryError(
                "connection_error",
                f"could not open an SMTP session ({stage}): {_describe(exc)}",
                raw_code=raw_code,
            ) from exc
        return client

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.quit(timeout=min(self._settings.smtp_timeout_s, 5.0))
        except (OSError, aiosmtplib.SMTPException):
            # The server went away or answered oddly; either way the connection is done.
            client.close()


def _refusal(code: int, text: str, *, stage: str) -> DeliveryError:
    error_code, retryable = classify_smtp_reply(code, text)
    error_class = TemporaryDeliveryError if retryable else PermanentDeliveryError
    return error_class(
        error_code,
        f"{stage} answered {code} {text}",
        raw_code=str(code),
        smtp_code=code,
        smtp_reply=text,
        smtp_stage=stage,
    )


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """RSET after a refusal; True when the connection is clean enough to pool again."""
    if not client.is_connected:
        return False
    try:
        await client.rset()
    except (OSError, aiosmtplib.SMTPException):
        return False
    return True


def _client_tls_context(*, validate: bool) -> ssl.SSLContext:
    # Built once rather than per connection: loading the system CA store is not free.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not validate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _load_dkim_key(settings: Settings) -> _DkimKey | None:
    if not (settings.dkim_domain and settings.dkim_selector and settings.dkim_private_key_file):
        return None
    key_file = settings.dkim_private_key_file
    private_key = await asyncio.to_thread(key_file.read_bytes)
    key = _DkimKey(
        domain=settings.dkim_domain.encode("ascii"),
        selector=settings.dkim_selector.encode("ascii"),
        private_key=private_key,
    )
    # Sign a probe now so a wrong key fails `start()`, not every message later.
    probe = b"From: probe@" + key.domain + b"\r\nSubject: probe\r\n\r\nprobe\r\n"
    try:
        await asyncio.to_thread(key.sign, probe)
    except dkim.DKIMException as exc:
        raise ValueError(f"dkim_private_key_file {key_file} is not a usable RSA key") from exc
    return key


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    """The exception's own words, plus its cause's (aiosmtplib wraps the socket error)."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text
