"""Privacy: keeping addresses, content and credentials out of log lines.

Two tools. `failure_summary` describes a failure without the data it was handling: exception
messages can quote the values that failed — a driver error repeats part of a message body, an
SMTP reply repeats the recipient — so where an error may carry such values, log this summary
(the exception's type and where it was raised) instead of the exception itself.

`mask_text` and the structlog processor `mask_event_dict` are the net under everything else:
every log line passes through the processor last before it is rendered (`logging_setup.py`).

Design note — the rules, in the order they are applied to every string:

1. Credentials are redacted: API keys (`amx_…`), operator tokens (`amxop_…`), webhook
   secrets (`whsec_…`), the token of an unsubscribe link (`/unsubscribe/<token>`), `Bearer`
   and `Basic` credentials, and `token=`, `key=`, `secret=`, `password=`, `signature=`,
   `sig=` (also `api_key=`, `access_token=`, …) in query strings → `[redacted]`.
2. Email addresses (also with `@` percent-encoded as `%40`) keep the first character of the
   local part and the domain: `alice@example.com` → `a***@example.com`.
3. Phone numbers keep the country code (after a `+` or `%2B`) and the last two digits, behind
   a fixed run of seven stars that hides the length: `+14155550100` → `+1*******00`,
   `(415) 555-0100` → `*******00`. A number is a run of digits, possibly with one or two of
   space, dot, hyphen and parentheses between digits, not glued to a letter, digit, `_` or `-`
   (so ids such as `msg_01J4155550100…` are untouched), holding 7 to 15 digits — or more than
   15 when it has a `+` or separators (numbers side by side). Left alone: ISO dates and
   times, clock times, IPv4 addresses (with a port), UUIDs, runs of fewer than 7 digits
   (ports, counts, status codes), and bare runs of more than 15 digits (nanosecond clocks). An
   epoch time in the free text of a message *is* masked (it looks like a number); log it under
   its own key instead (rule 5).

In the event dict (`mask_event_dict`), values are walked into nested dicts, lists and tuples:

4. Keys that carry content or secrets are dropped, their value replaced by `[dropped]`:
   `CONTENT_KEYS` (`body`, `html`, `text`, `subject`, `short_message`, `message_payload`,
   `payload`, `content`, `password`, `secret`, `token`, `key`, `api_key`, `authorization`,
   `cookie`, …) and any key ending in `_` plus one of them (`inbound_body`, `x_api_key`,
   `idempotency_key`). Case is ignored and `-` counts as `_`.
5. Keys whose values are numbers or times by contract skip rule 3 (rules 1 and 2 still
   apply): `NUMERIC_KEYS` (`timestamp`, `level`, `logger`, `port`, `pid`, `count`,
   `status_code`, …) and any key ending in one of `NUMERIC_SUFFIXES` (`_ms`, `_s`, `_at`,
   `_id`, `_count`, `_bytes`, …): `at_ms=1717171717171` and `provider_message_id="0001234567"`
   are kept as they are.
6. Elsewhere an integer of 7 to 15 digits is masked like a phone number; smaller integers,
   floats, booleans and None are kept. Other objects are rendered with `str()` and masked.

An exception attached to a record (`exc_info`) is rendered to its traceback text first and that
text is masked like any other, because the traceback quotes the exception's message.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from typing import Any

import phonenumbers
from structlog.processors import format_exc_info
from structlog.typing import EventDict, WrappedLogger

DROPPED = "[dropped]"
REDACTED = "[redacted]"
_STARS = "*******"

CONTENT_KEYS = frozenset(
    {
        # what a message says
        "body",
        "html",
        "text",
        "subject",
        "short_message",
        "message_payload",
        "payload",
        "content",
        # what lets someone in
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "api_key",
        "apikey",
        "authorization",
        "cookie",
        "credentials",
        "signature",
    }
)
_CONTENT_SUFFIXES = tuple(f"_{name}" for name in sorted(CONTENT_KEYS))

NUMERIC_KEYS = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "logger_name",
        "id",
        "port",
        "pid",
        "process",
        "thread",
        "lineno",
        "count",
        "attempts",
        "segments",
        "status",
        "status_code",
        "code",
        "size",
    }
)
NUMERIC_SUFFIXES = (
    "_ms",
    "_s",
    "_ns",
    "_at",
    "_id",
    "_ids",
    "_count",
    "_bytes",
    "_port",
    "_code",
    "_total",
)

_TOKEN = re.compile(
    r"(?P<prefix>\b(?:amxop|amx|whsec)_)[\w\-]+"
    r"|(?P<path>/unsubscribe/)[^/?#\s\"'<>]+"
    r"|(?P<scheme>\b(?:Bearer|Basic)\s+)[\w.~+/=\-]+"
    r"|(?P<param>[?&;](?:[\w\-]*_)?(?:token|key|secret|password|signature|sig)=)[^&;#\s\"'<>]+",
    re.IGNORECASE,
)
_LABEL = r"[^\W_](?:[\w\-]*[^\W_])?"
_EMAIL = re.compile(
    rf"(?<![\w.%+\-])(?P<first>\w)[\w.%+\-]*?(?P<at>@|%40)(?P<domain>{_LABEL}(?:\.{_LABEL})*)"
)
# At each position the alternatives are tried in order: the first four are never numbers to
# mask and are consumed whole, so a phone number is never looked for inside one of them. The
# phone run is atomic: when it is glued to a letter, no shorter run inside it is tried.
_NUMBERISH = re.compile(
    r"(?<![\w+\-])(?:"
    r"(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?!\w)"
    r"|(?P<datetime>(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:[.,]\d+)?)?(?:Z|[+\-]\d\d:?\d\d)?)?)(?!\w)"
    r"|(?P<time>(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:[.,]\d+)?)(?!\w)"
    r"|(?P<ipv4>(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}(?::\d+)?)(?!\w)"
    # After a `+` the number is masked even when a letter follows it.
    r"|(?P<plus>\+|%2[Bb])?(?P<phone>\(?(?>\d(?:[ ().\-]{1,2}\d|\d)*))(?(plus)|(?!\w))"
    r")"
)


def failure_summary(exc: BaseException) -> str:
    """`TypeName at module.py:123 in function`, from the innermost frame; never the message."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
    cause = exc.__cause__ or exc.__context__
    because = f" (from {type(cause).__name__})" if cause is not None else ""
    return f"{type(exc).__name__}{where}{because}"


def mask_text(text: str, *, numbers: bool = True) -> str:
    """`text` with credentials redacted and email addresses and phone numbers masked.

    `numbers=False` leaves digit runs alone (rule 5 of the design note); credentials and email
    addresses are still masked.
    """
    text = _TOKEN.sub(_redact_token, text)
    if "@" in text or "%40" in text:
        text = _EMAIL.sub(_mask_email, text)
    if numbers and any(c.isdigit() for c in text):
        text = _NUMBERISH.sub(_mask_numberish, text)
    return text


def _redact_token(match: re.Match[str]) -> str:
    kept = next(group for group in match.groups() if group is not None)
    return kept + REDACTED


def _mask_email(match: re.Match[str]) -> str:
    return f"{match['first']}***{match['at']}{match['domain']}"


def _mask_numberish(match: re.Match[str]) -> str:
    candidate = match["phone"]
    if candidate is None:
        return match[0]
    plus = match["plus"] or ""
    digits = "".join(c for c in candidate if c.isdigit())
    separated = not candidate.isdigit()
    if len(digits) < 7 or (len(digits) > 15 and not (plus or separated)):
        return match[0]
    code = _country_code(digits) if plus and len(digits) <= 15 else ""
    return f"{plus}{code}{_STARS}{digits[-2:]}"


def _country_code(digits: str) -> str:
    """The E.164 country code `digits` starts with (1 to 3 digits); '' when none is known."""
    for length in (1, 2, 3):
        if int(digits[:length]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return digits[:length]
    return ""


def mask_event_dict(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the event dict with content dropped and everything else masked.

    Put it last before the renderer, after every processor that adds values (time stamps,
    context variables, `extra` fields). An exception (`exc_info`) is rendered to text here so
    that its text is masked too.
    """
    if event_dict.get("exc_info"):
        event_dict = format_exc_info(logger, method_name, event_dict)
    event_dict.pop("exc_info", None)
    return {key: _mask_value(key, value) for key, value in event_dict.items()}


def _mask_value(key: str, value: Any) -> Any:
    name = key.lower().replace("-", "_")
    if name in CONTENT_KEYS or name.endswith(_CONTENT_SUFFIXES):
        return DROPPED
    numbers = not (name in NUMERIC_KEYS or name.endswith(NUMERIC_SUFFIXES))
    return _mask_nested(value, numbers=numbers)


def _mask_nested(value: Any, *, numbers: bool) -> Any:
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, str):
        return mask_text(value, numbers=numbers)
    if isinstance(value, int):
        if numbers and 7 <= len(str(abs(value))) <= 15:
            return mask_text(str(value))
        return value
    if isinstance(value, Mapping):
        return {str(k): _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask_nested(item, numbers=numbers) for item in value]
    if isinstance(value, bytes | bytearray):
        return mask_text(bytes(value).decode("utf-8", "replace"), numbers=numbers)
    return mask_text(str(value), numbers=numbers)
