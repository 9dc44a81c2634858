"""Channels: SMS text — GSM 03.38, UCS-2 and Latin-1, the cheapest encoding, and segmentation.

Pure functions. Units are what the network counts: GSM-7 septets (a character of the
extension table costs two: ESC and the character), UCS-2 code units (a character outside the
Basic Multilingual Plane is a surrogate pair and costs two), Latin-1 octets. A message that
does not fit one SMS is split into parts that each carry a 6-octet UDH (8-bit concatenation
reference), leaving 153 septets, 67 UCS-2 units or 134 octets per part; a split never falls
inside an escape sequence or a surrogate pair.

SMPP carries GSM-7 unpacked, one septet per octet, with data_coding 0 (the SMSC's default
alphabet); UCS-2 is UTF-16BE with data_coding 8; Latin-1 is data_coding 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2", "Latin-1"]

# GSM 03.38 default alphabet, by septet value.
GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table, reached with ESC (0x1B): character -> septet after the escape.
GSM_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
ESC = 0x1B

_TO_SEPTET = {ch: i for i, ch in enumerate(GSM_BASIC) if i != ESC}
_FROM_EXTENSION = {septet: ch for ch, septet in GSM_EXTENSION.items()}

DATA_CODING: dict[Encoding, int] = {"GSM-7": 0x00, "Latin-1": 0x03, "UCS-2": 0x08}
# Units in one SMS, and per part of a concatenated SMS (after the 6-octet UDH).
SINGLE_LIMIT: dict[Encoding, int] = {"GSM-7": 160, "UCS-2": 70, "Latin-1": 140}
PART_LIMIT: dict[Encoding, int] = {"GSM-7": 153, "UCS-2": 67, "Latin-1": 134}

# Look-alikes that force UCS-2 for no visible reason, and their GSM-7 stand-ins.
SMART_REPLACEMENTS = {
    "\u2018": "'",  # left single quotation mark
    "\u2019": "'",  # right single quotation mark, the curly apostrophe
    "\u201a": "'",
    "\u201b": "'",
    "\u2032": "'",  # prime
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u201f": '"',
    "\u2033": '"',  # double prime
    "\u00ab": '"',  # «
    "\u00bb": '"',  # »
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # figure dash
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u2015": "-",
    "\u2212": "-",  # minus sign
    "\u2026": "...",  # ellipsis
    "\u00a0": " ",  # no-break space
    "\u2002": " ",
    "\u2003": " ",
    "\u2009": " ",  # thin space
    "\u200a": " ",
    "\u202f": " ",  # narrow no-break space
    "\u200b": "",  # zero-width space
    "\u2022": "*",  # bullet
    "\u02c6": "^",
    "\u02dc": "~",
}


class EncodingError(ValueError):
    """The text cannot be written in the requested encoding."""


def is_gsm7(text: str) -> bool:
    return all(ch in _TO_SEPTET or ch in GSM_EXTENSION for ch in text)


def ucs2_forcing_characters(text: str) -> list[str]:
    """The distinct characters that keep `text` out of GSM-7, in order of appearance."""
    seen: dict[str, None] = {}
    for ch in text:
        if ch not in _TO_SEPTET and ch not in GSM_EXTENSION:
            seen.setdefault(ch, None)
    return list(seen)


def smart_replace(text: str) -> tuple[str, list[str]]:
    """Replace look-alike punctuation with GSM-7 equivalents; returns the text and what changed."""
    replaced: dict[str, None] = {}
    out = []
    for ch in text:
        stand_in = SMART_REPLACEMENTS.get(ch)
        if stand_in is None:
            out.append(ch)
        else:
            replaced.setdefault(ch, None)
            out.append(stand_in)
    return "".join(out), list(replaced)


def _char_units(ch: str, encoding: Encoding) -> int:
    if encoding == "GSM-7":
        return 2 if ch in GSM_EXTENSION else 1
    if encoding == "UCS-2":
        return 2 if ord(ch) > 0xFFFF else 1
    return 1


def count_units(text: str, encoding: Encoding) -> int:
    """Length in the encoding's units (septets, UCS-2 code units, or octets)."""
    return sum(_char_units(ch, encoding) for ch in text)


def choose_encoding(text: str, *, allow_latin1: bool = False) -> Encoding:
    """The cheapest encoding that can carry `text`: GSM-7, else Latin-1 if allowed, else UCS-2."""
    if is_gsm7(text):
        return "GSM-7"
    if allow_latin1:
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            return "UCS-2"
        return "Latin-1"
    return "UCS-2"


def encode(text: str, encoding: Encoding) -> bytes:
    """The octets SMPP carries for `text` (GSM-7 unpacked, one septet per octet)."""
    if encoding == "GSM-7":
        out = bytearray()
        for ch in text:
            septet = _TO_SEPTET.get(ch)
            if septet is not None:
                out.append(septet)
                continue
            extension = GSM_EXTENSION.get(ch)
            if extension is None:
                raise EncodingError(f"{ch!r} is not in the GSM 03.38 alphabet")
            out += bytes((ESC, extension))
        return bytes(out)
    codec = "utf-16-be" if encoding == "UCS-2" else "latin-1"
    try:
        return text.encode(codec)
    except UnicodeEncodeError as exc:
        raise EncodingError(f"cannot encode as {encoding}: {exc.reason}") from exc


def decode(data: bytes, encoding: Encoding) -> str:
    """Text from SMPP octets; an unknown GSM-7 escape reads as the base character, per 23.038."""
    if encoding == "GSM-7":
        out = []
        escaped = False
        for septet in data:
            septet &= 0x7F
            if escaped:
                out.append(_FROM_EXTENSION.get(septet, GSM_BASIC[septet]))
                escaped = False
            elif septet == ESC:
                escaped = True
            else:
                out.append(GSM_BASIC[septet])
        return "".join(out)
    codec = "utf-16-be" if encoding == "UCS-2" else "latin-1"
    return data.decode(codec, errors="replace")


def encoding_for_data_coding(data_coding: int) -> Encoding | None:
    """The text encoding of an SMPP data_coding value, or None for binary or unknown ones."""
    if data_coding in (0x00, 0x01):
        return "GSM-7" if data_coding == 0x00 else "Latin-1"  # 0x01 is IA5/ASCII, Latin-1-safe
    if data_coding == 0x03:
        return "Latin-1"
    if data_coding == 0x08:
        return "UCS-2"
    return None


def split_text(text: str, encoding: Encoding) -> list[str]:
    """The parts of `text`: one if it fits a single SMS, else parts of PART_LIMIT units each.

    Characters are never cut: an extension character (two septets) or a surrogate pair (two
    code units) that would straddle a boundary starts the next part.
    """
    if count_units(text, encoding) <= SINGLE_LIMIT[encoding]:
        return [text]
    limit = PART_LIMIT[encoding]
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for ch in text:
        units = _char_units(ch, encoding)
        if used + units > limit:
            parts.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += units
    if current:
        parts.append("".join(current))
    return parts


def concatenation_udh(reference: int, total: int, sequence: int) -> bytes:
    """The 6-octet User Data Header of one part (IEI 0x00: 8-bit reference number)."""
    if not (0 <= reference <= 0xFF and 1 <= sequence <= total <= 0xFF):
        raise ValueError("concatenation: reference 0-255, 1 <= sequence <= total <= 255")
    return bytes((0x05, 0x00, 0x03, reference, total, sequence))


@dataclass(frozen=True, slots=True)
class EncodedText:
    """A message body ready for submit_sm: its encoding, its parts' octets, what it cost."""

    encoding: Encoding
    data_coding: int
    parts: tuple[bytes, ...]
    # Characters smart encoding replaced, and characters that forced UCS-2 (for the API).
    replaced: tuple[str, ...] = ()
    forced_ucs2_by: tuple[str, ...] = ()

    @property
    def segments(self) -> int:
        return len(self.parts)


def prepare_text(
    text: str, *, smart_encoding: bool = False, allow_latin1: bool = False
) -> EncodedText:
    """Choose the cheapest encoding (after smart replacement, if asked) and split the text."""
    replaced: list[str] = []
    if smart_encoding:
        text, replaced = smart_replace(text)
    encoding = choose_encoding(text, allow_latin1=allow_latin1)
    forced = ucs2_forcing_characters(text) if encoding != "GSM-7" else []
    return EncodedText(
        encoding=encoding,
        data_coding=DATA_CODING[encoding],
        parts=tuple(encode(part, encoding) for part in split_text(text, encoding)),
        replaced=tuple(replaced),
        forced_ucs2_by=tuple(forced),
    )
