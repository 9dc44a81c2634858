"""Receipts: what an SMSC delivers (deliver_sm / data_sm) — told apart, decoded, reassembled.

Pure functions, no I/O. A carrier delivers two kinds of thing on the same PDUs: delivery
receipts for messages we sent (esm_class message type 0x04 or 0x20, or a receipted_message_id
TLV) and inbound messages from handsets. The user data may sit in short_message or in the
message_payload TLV; a long inbound message arrives in parts, numbered either by a User Data
Header (esm_class UDHI, IEI 0x00 or 0x08) or by the SAR TLVs. Carriers get all of this wrong
now and then — truncated UDHs, part 0 of 0, odd-length UCS-2, data_coding values SMPP calls
reserved — so bad user data degrades to "one message, shown as well as we can" and never
raises; only a PDU without a source address is refused (`InboundParseError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from amnex.channels.smpp import text
from amnex.channels.smpp.pdu import DataSm, DeliverSm, Tag, get_cstring_tlv, get_int_tlv
from amnex.receipts.dlr import Receipt, parse_receipt

__all__ = [
    "DecodedText",
    "InboundFragment",
    "InboundParseError",
    "decode_payload",
    "fragment_from_pdu",
    "fragment_key",
    "is_receipt",
    "reassemble",
    "receipt_from_pdu",
]

# esm_class bits 5..2, the message type of a PDU an SMSC delivers (SMPP 3.4 section 5.2.12):
# 0x00 default (an inbound message), 0x04 SMSC delivery receipt, 0x08 SME delivery
# acknowledgement, 0x10 SME manual/user acknowledgement, 0x18 conversation abort (Korean
# CDMA), 0x20 intermediate delivery notification. Only the SMSC's own reports about a message
# we sent — the final receipt and the intermediate notification — carry a receipt; the SME
# acknowledgements come from the handset's application and have no stat:/message_state.
_MESSAGE_TYPE_MASK: Final = 0x3C
_SMSC_DELIVERY_RECEIPT: Final = 0x04
_INTERMEDIATE_NOTIFICATION: Final = 0x20
_RECEIPT_TYPES: Final = frozenset({_SMSC_DELIVERY_RECEIPT, _INTERMEDIATE_NOTIFICATION})
_UDHI: Final = 0x40

# Concatenation information elements (3GPP TS 23.040 9.2.3.24.1 and 9.2.3.24.8).
_IEI_CONCAT_8BIT: Final = 0x00
_IEI_CONCAT_16BIT: Final = 0x08

_TON_INTERNATIONAL: Final = 1
_TON_UNKNOWN: Final = 0
# An E.164 number has at most 15 digits; 10 or more plain digits with an unknown TON are far
# more likely an international number without its "+" than a short code or a national number.
_E164_MAX_DIGITS: Final = 15
_BARE_INTERNATIONAL_MIN_DIGITS: Final = 10

_NO_REFERENCE_KEY: Final = -1

_DecodedEncoding = Literal["GSM-7", "UCS-2", "Latin-1", "binary"]


class InboundParseError(ValueError):
    """A delivered PDU that cannot become an inbound message: it has no source address."""


def _user_data(pdu: DeliverSm | DataSm) -> bytes:
    """short_message, or the message_payload TLV (3.4 5.3.2.32: sm_length is 0 when it is used)."""
    payload = pdu.tlvs.get(Tag.MESSAGE_PAYLOAD)
    if isinstance(pdu, DataSm):
        return payload or b""
    if payload and not pdu.short_message:
        return payload
    return pdu.short_message


def is_receipt(pdu: DeliverSm | DataSm) -> bool:
    """True for an SMSC delivery receipt or intermediate notification, or any PDU that names
    the message it reports on (receipted_message_id); SME acknowledgements are not receipts."""
    if (pdu.esm_class & _MESSAGE_TYPE_MASK) in _RECEIPT_TYPES:
        return True
    return Tag.RECEIPTED_MESSAGE_ID in pdu.tlvs


def receipt_from_pdu(pdu: DeliverSm | DataSm) -> Receipt:
    """The receipt a PDU carries, from its text and TLVs; raises dlr.ReceiptParseError."""
    body = _user_data(pdu)
    if _text_encoding(pdu.data_coding) == "UCS-2":
        # A few SMSCs write the Appendix B text in UCS-2; the parser reads octets as Latin-1.
        body = text.decode(body, "UCS-2").encode("latin-1", errors="replace")
    receipted_id = get_cstring_tlv(pdu.tlvs, Tag.RECEIPTED_MESSAGE_ID)
    if receipted_id is not None:
        receipted_id = receipted_id.strip("\0").strip() or None
    state_octets = pdu.tlvs.get(Tag.MESSAGE_STATE)
    message_state = (
        get_int_tlv(pdu.tlvs, Tag.MESSAGE_STATE)
        if state_octets is not None and len(state_octets) == 1
        else None
    )
    error_octets = pdu.tlvs.get(Tag.NETWORK_ERROR_CODE)
    return parse_receipt(
        body,
        receipted_message_id=receipted_id,
        message_state=message_state,
        network_error_code=error_octets if error_octets and len(error_octets) == 3 else None,
    )


@dataclass(frozen=True, slots=True)
class InboundFragment:
    """One delivered PDU's message content: a whole message, or one part of a long one.

    `reference` is None exactly when the message is not concatenated (`total` 1).
    """

    source: str
    destination: str
    payload: bytes
    data_coding: int
    reference: int | None
    total: int
    sequence: int

    @property
    def is_part(self) -> bool:
        return self.total > 1


def _normalise_address(address: str, ton: int) -> str:
    """E.164 with "+" for international digits; short codes and alphanumerics as received."""
    address = address.strip()
    digits = address.removeprefix("+")
    if address.startswith("+") or not digits.isdigit() or not digits.isascii():
        return address
    # A leading 0 is a trunk or international access prefix, never part of an E.164 number.
    if digits.startswith("0") or len(digits) > _E164_MAX_DIGITS:
        return address
    if ton == _TON_INTERNATIONAL or (
        ton == _TON_UNKNOWN and len(digits) >= _BARE_INTERNATIONAL_MIN_DIGITS
    ):
        return "+" + digits
    return address


def _concat(reference: int, total: int, sequence: int) -> tuple[int, int, int] | None:
    """(reference, total, sequence) when they describe a real part, else None."""
    if total < 2 or not 1 <= sequence <= total:
        return None
    return reference, total, sequence


def _split_udh(data: bytes) -> tuple[bytes, tuple[int, int, int] | None]:
    """(user data without the UDH, concatenation info or None) for a UDHI payload."""
    if not data:
        return b"", None
    header_end = 1 + data[0]
    if header_end > len(data):
        # Truncated: the UDH length cannot be trusted, so keep everything after it.
        return data[1:], None
    header = data[1:header_end]
    found: tuple[int, int, int] | None = None
    pos = 0
    while pos + 2 <= len(header):
        iei, length = header[pos], header[pos + 1]
        value = header[pos + 2 : pos + 2 + length]
        pos += 2 + length
        if len(value) != length:
            break  # an element runs past the header: ignore it and what follows
        # 23.040: a repeated element that is not repeatable — the last one counts.
        if iei == _IEI_CONCAT_8BIT and length == 3:
            found = _concat(value[0], value[1], value[2])
        elif iei == _IEI_CONCAT_16BIT and length == 4:
            found = _concat(int.from_bytes(value[:2], "big"), value[2], value[3])
    return data[header_end:], found


def _sar(tlvs: dict[int, bytes]) -> tuple[int, int, int] | None:
    reference = get_int_tlv(tlvs, Tag.SAR_MSG_REF_NUM)
    total = get_int_tlv(tlvs, Tag.SAR_TOTAL_SEGMENTS)
    sequence = get_int_tlv(tlvs, Tag.SAR_SEGMENT_SEQNUM)
    if reference is None or total is None or sequence is None:
        return None
    return _concat(reference, total, sequence)


def fragment_from_pdu(pdu: DeliverSm | DataSm) -> InboundFragment:
    """The message (or message part) a PDU delivers; raises InboundParseError without a source.

    The UDH wins over the SAR TLVs when both number the part; a UDH or SAR set that does not
    describe a real part (truncated, part 0, part past the total) leaves a whole message.
    """
    source = _normalise_address(pdu.source_addr, pdu.source_addr_ton)
    if not source:
        raise InboundParseError("deliver_sm/data_sm without a source address")
    data = _user_data(pdu)
    concat: tuple[int, int, int] | None = None
    if pdu.esm_class & _UDHI:
        data, concat = _split_udh(data)
    if concat is None:
        concat = _sar(pdu.tlvs)
    reference, total, sequence = concat if concat is not None else (None, 1, 1)
    return InboundFragment(
        source=source,
        destination=_normalise_address(pdu.destination_addr, pdu.dest_addr_ton),
        payload=data,
        data_coding=pdu.data_coding,
        reference=reference,
        total=total,
        sequence=sequence,
    )


def fragment_key(f: InboundFragment) -> tuple[str, str, int, int]:
    """(source, destination, reference, total): what groups the parts of one message.

    A whole message has no reference and gets -1, which no UDH or SAR reference can be; whole
    messages need no grouping, so callers should only key fragments that are parts.
    """
    reference = _NO_REFERENCE_KEY if f.reference is None else f.reference
    return f.source, f.destination, reference, f.total


def reassemble(fragments: Sequence[InboundFragment]) -> bytes | None:
    """The payload of one message once parts 1..total are all present, else None.

    `fragments` share one `fragment_key`. The first fragment's `total` counts (and its
    data_coding is the one to decode the result with); of duplicate parts the first wins.
    Octets are joined before decoding, so an escape or surrogate pair split across parts
    survives.
    """
    if not fragments:
        return None
    total = fragments[0].total
    parts: dict[int, bytes] = {}
    for fragment in fragments:
        if 1 <= fragment.sequence <= total:
            parts.setdefault(fragment.sequence, fragment.payload)
    if len(parts) != total:
        return None
    return b"".join(parts[sequence] for sequence in range(1, total + 1))


@dataclass(frozen=True, slots=True)
class DecodedText:
    """Text for display; `lossless` is False when octets were replaced or shown as hex."""

    text: str
    encoding: _DecodedEncoding
    lossless: bool


def _text_encoding(data_coding: int) -> text.Encoding | None:
    """The text encoding of a delivered data_coding, or None for binary, compressed, reserved.

    0x00-0x0F are SMPP's own values (3.4 5.2.19). Above that SMSCs pass the GSM 03.38 DCS
    through: the general and automatic-deletion groups (00xx and 01xx; bit 5 is compression,
    bits 3..2 the alphabet: 00 GSM-7, 01 8-bit, 10 UCS-2), message waiting indication groups
    (0xC0-0xDF GSM-7, 0xE0-0xEF UCS-2) and the data coding/message class group (0xF0-0xFF:
    bit 2 set is 8-bit data, clear GSM-7). 0x80-0xBF are reserved.
    """
    if 0x00 <= data_coding <= 0x0F:
        return text.encoding_for_data_coding(data_coding)
    if 0x10 <= data_coding <= 0x7F:
        if data_coding & 0x20:
            return None  # compressed (23.042): no decoder here
        alphabet = (data_coding >> 2) & 0x03
        if alphabet == 0b00:
            return "GSM-7"
        return "UCS-2" if alphabet == 0b10 else None
    if 0xC0 <= data_coding <= 0xDF:
        return "GSM-7"
    if 0xE0 <= data_coding <= 0xEF:
        return "UCS-2"
    if 0xF0 <= data_coding <= 0xFF:
        return None if data_coding & 0x04 else "GSM-7"
    return None


def _round_trips(decoded: str, payload: bytes, encoding: text.Encoding) -> bool:
    try:
        return text.encode(decoded, encoding) == payload
    except text.EncodingError:
        return False


def decode_payload(payload: bytes, data_coding: int) -> DecodedText:
    """Text for the payload's data_coding, never raising; binary and unknown codings as hex.

    GSM-7 is one septet per octet (unpacked), as SMPP carries it. UCS-2 is read as UTF-16BE so
    surrogate pairs (emoji) come out as one character. `lossless` is True when the text
    encodes back to exactly these octets.
    """
    encoding = _text_encoding(data_coding)
    if encoding is None:
        return DecodedText(text=payload.hex(), encoding="binary", lossless=False)
    if encoding == "UCS-2" and len(payload) % 2:
        # Decode the whole code units; the stray last octet becomes U+FFFD.
        decoded = text.decode(payload[:-1], "UCS-2") + "\ufffd"
        return DecodedText(text=decoded, encoding="UCS-2", lossless=False)
    decoded = text.decode(payload, encoding)
    lossless = _round_trips(decoded, payload, encoding)
    if encoding == "GSM-7" and "\x1b" in decoded:
        # ESC ESC is reserved for a further extension table; 23.038 says show a space.
        decoded = decoded.replace("\x1b", " ")
    return DecodedText(text=decoded, encoding=encoding, lossless=lossless)
