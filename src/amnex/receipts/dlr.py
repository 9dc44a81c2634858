"""Receipts: SMPP delivery receipts, parsed and normalised (pure).

A receipt arrives as a deliver_sm (or data_sm) whose esm_class marks it as an SMSC delivery
receipt. Carriers say what happened in one of two ways, often both: the 3.4 TLVs
`receipted_message_id` and `message_state` (plus `network_error_code`), and the de-facto
text form of SMPP 3.4 Appendix B in the short message:

    id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD
    err:E text:...

The TLVs win where both are present. Provider message ids are opaque text; `receipt_id_key`
gives the form under which a receipt's id matches the id a submit_sm_resp returned
(carriers differ on leading zeros and case, and some report a hex id in decimal or the
reverse, which each connector declares).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

FinalStatus = Literal["delivered", "undelivered", "failed"]

# SMPP 3.4 message_state values (5.2.28) and the stat: words carriers write.
MESSAGE_STATES = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}

# stat word -> (Amnex status or None when not final, normalised error code or None)
_STATES: dict[str, tuple[FinalStatus | None, str | None]] = {
    "DELIVRD": ("delivered", None),
    "DELIVERED": ("delivered", None),
    "UNDELIV": ("undelivered", "undeliverable"),
    "UNDELIVERABLE": ("undelivered", "undeliverable"),
    "EXPIRED": ("undelivered", "expired"),
    "DELETED": ("undelivered", "deleted_by_carrier"),
    "REJECTD": ("failed", "carrier_rejected"),
    "REJECTED": ("failed", "carrier_rejected"),
    "UNKNOWN": ("undelivered", "unknown_outcome"),
    "ENROUTE": (None, None),
    "ACCEPTD": (None, None),
    "ACCEPTED": (None, None),
    "BUFFRED": (None, None),
    "SCHEDULED": (None, None),
}

# Common GSM MAP / carrier `err:` codes that say more than the state does.
_ERROR_CODES = {
    "001": "unknown_subscriber",
    "005": "unknown_subscriber",
    "006": "absent_subscriber",
    "027": "absent_subscriber",
    "011": "blocked_by_carrier",
    "013": "blocked_by_carrier",
    "021": "unknown_subscriber",
    "031": "absent_subscriber",
    "034": "carrier_rejected",
    "036": "carrier_rejected",
}

_FIELD = re.compile(
    r"(?P<key>id|sub|dlvrd|submit date|done date|stat|err|text)\s*:\s*", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery receipt, normalised. `status` is None for intermediate states."""

    provider_message_id: str
    state: str
    status: FinalStatus | None
    error_code: str | None
    raw_error: str | None
    submitted: int | None = None
    delivered: int | None = None
    submit_date: datetime | None = None
    done_date: datetime | None = None


class ReceiptParseError(ValueError):
    """The message is not a delivery receipt Amnex can read (no id, or no state)."""


def parse_receipt_text(text: str) -> dict[str, str]:
    """The `key:value` fields of the Appendix B text form; `text:` runs to the end."""
    fields: dict[str, str] = {}
    matches = list(_FIELD.finditer(text))
    for index, match in enumerate(matches):
        key = match.group("key").lower()
        end = (
            len(text) if key == "text" or index + 1 == len(matches) else matches[index + 1].start()
        )
        fields.setdefault(key, text[match.end() : end].strip())
        if key == "text":
            break
    return fields


def _receipt_time(value: str | None) -> datetime | None:
    """YYMMDDhhmm or YYMMDDhhmmss, read as UTC (carriers rarely say otherwise).

    Two-digit years pivot as `strptime`'s %y does (69-99 → 19xx, 00-68 → 20xx). Sliced by
    hand: one receipt per message makes `strptime` a visible cost on the receipt path.
    """
    if not value or not value.isdigit() or len(value) not in (10, 12):
        return None
    year = int(value[0:2])
    try:
        return datetime(
            year + (1900 if year >= 69 else 2000),
            int(value[2:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[8:10]),
            int(value[10:12]) if len(value) == 12 else 0,
            tzinfo=UTC,
        )
    except ValueError:
        return None


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def normalise_state(state: str, raw_error: str | None) -> tuple[FinalStatus | None, str | None]:
    """(Amnex status or None, error code) for a carrier state word and its err: code."""
    status, code = _STATES.get(state.upper(), ("undelivered", "unknown_outcome"))
    if status in ("undelivered", "failed") and raw_error:
        code = _ERROR_CODES.get(raw_error.zfill(3)[-3:], code)
    return status, code


def parse_receipt(
    short_message: bytes,
    *,
    receipted_message_id: str | None = None,
    message_state: int | None = None,
    network_error_code: bytes | None = None,
) -> Receipt:
    """A receipt from a deliver_sm's text and TLVs (the TLVs win where both are present)."""
    fields = parse_receipt_text(short_message.decode("latin-1"))
    provider_id = receipted_message_id or fields.get("id")
    if message_state is not None:
        state = MESSAGE_STATES.get(message_state, "UNKNOWN")
    else:
        state = fields.get("stat", "").upper()
    if not provider_id or not state:
        raise ReceiptParseError("a receipt needs a message id and a state")
    raw_error = fields.get("err")
    if network_error_code is not None and len(network_error_code) == 3:
        # network_type (1 octet) + error code (2 octets), SMPP 3.4 5.3.2.31
        raw_error = str(int.from_bytes(network_error_code[1:], "big"))
    status, error_code = normalise_state(state, raw_error)
    return Receipt(
        provider_message_id=provider_id.strip(),
        state=state,
        status=status,
        error_code=error_code,
        raw_error=raw_error,
        submitted=_int_or_none(fields.get("sub")),
        delivered=_int_or_none(fields.get("dlvrd")),
        submit_date=_receipt_time(fields.get("submit date")),
        done_date=_receipt_time(fields.get("done date")),
    )


ReceiptIdFormat = Literal["as_is", "hex_in_receipt_decimal", "decimal_in_receipt_hex"]


def canonical_id(provider_message_id: str) -> str:
    """The form a provider id is matched under: trimmed, lowercase, no leading zeros.

    The id itself is kept beside it, untouched (opaque text).
    """
    return provider_message_id.strip().lower().lstrip("0") or "0"


def receipt_id_key(receipt_id: str, id_format: ReceiptIdFormat = "as_is") -> str:
    """The canonical submit id a receipt's id stands for, per the connector's id format.

    Carriers differ: most report the id exactly as submit_sm_resp gave it (perhaps with or
    without leading zeros, in another case); some report a hex id in decimal, or the reverse.
    Which one a carrier does is a property of the connector (`receipt_id_format`), never
    guessed per receipt: guessing lets the decimal id 512 match the hex id 0x200 of another
    message.
    """
    raw = receipt_id.strip()
    if id_format == "hex_in_receipt_decimal" and raw.isdigit():
        return canonical_id(format(int(raw), "x"))
    if id_format == "decimal_in_receipt_hex" and re.fullmatch(r"[0-9a-fA-F]+", raw):
        return canonical_id(str(int(raw, 16)))
    return canonical_id(raw)
