"""What an SMSC delivers: receipts told apart from messages, parts found, text decoded, joined."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amnex.channels.smpp import pdu as smpp
from amnex.channels.smpp.pdu import DataSm, DeliverSm, Tag, set_cstring_tlv, set_int_tlv
from amnex.receipts.dlr import ReceiptParseError
from amnex.receipts.inbound import (
    DecodedText,
    InboundFragment,
    InboundParseError,
    decode_payload,
    fragment_from_pdu,
    fragment_key,
    is_receipt,
    reassemble,
    receipt_from_pdu,
)

RECEIPT_TEXT = (
    b"id:0001234567 sub:001 dlvrd:001 submit date:2611281405 done date:2611281406 "
    b"stat:DELIVRD err:000 text:Your code is 48"
)


def deliver(
    short_message: bytes = b"",
    *,
    esm_class: int = 0,
    data_coding: int = 0,
    source: str = "15551234567",
    source_ton: int = 1,
    destination: str = "12345",
    dest_ton: int = 0,
    tlvs: dict[int, bytes] | None = None,
) -> DeliverSm:
    return DeliverSm(
        source_addr_ton=source_ton,
        source_addr_npi=1,
        source_addr=source,
        dest_addr_ton=dest_ton,
        destination_addr=destination,
        esm_class=esm_class,
        data_coding=data_coding,
        short_message=short_message,
        tlvs=tlvs or {},
    )


def data_sm(
    *, esm_class: int = 0, data_coding: int = 0, tlvs: dict[int, bytes] | None = None
) -> DataSm:
    return DataSm(
        source_addr_ton=1,
        source_addr="15551234567",
        destination_addr="12345",
        esm_class=esm_class,
        data_coding=data_coding,
        tlvs=tlvs or {},
    )


def receipt_tlvs(
    message_id: str | None = "abc123",
    state: int | None = 2,
    network_error: bytes | None = None,
) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    if message_id is not None:
        set_cstring_tlv(tlvs, Tag.RECEIPTED_MESSAGE_ID, message_id)
    if state is not None:
        set_int_tlv(tlvs, Tag.MESSAGE_STATE, state)
    if network_error is not None:
        tlvs[Tag.NETWORK_ERROR_CODE] = network_error
    return tlvs


def sar(reference: int, total: int, sequence: int) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    set_int_tlv(tlvs, Tag.SAR_MSG_REF_NUM, reference)
    set_int_tlv(tlvs, Tag.SAR_TOTAL_SEGMENTS, total)
    set_int_tlv(tlvs, Tag.SAR_SEGMENT_SEQNUM, sequence)
    return tlvs


def roundtrip(pdu: DeliverSm) -> DeliverSm:
    decoded = smpp.decode(smpp.encode(pdu))
    assert isinstance(decoded, DeliverSm)
    return decoded


# --- telling receipts from inbound messages ----------------------------------------------------


@pytest.mark.parametrize(
    ("pdu", "expected"),
    [
        pytest.param(deliver(b"hi", esm_class=0x00), False, id="default-message-type"),
        pytest.param(deliver(RECEIPT_TEXT, esm_class=0x04), True, id="smsc-delivery-receipt"),
        pytest.param(deliver(b"x", esm_class=0x20), True, id="intermediate-notification"),
        pytest.param(deliver(b"x", esm_class=0x08), False, id="sme-delivery-ack"),
        pytest.param(deliver(b"x", esm_class=0x10), False, id="sme-manual-user-ack"),
        pytest.param(deliver(b"x", esm_class=0x18), False, id="conversation-abort"),
        pytest.param(deliver(b"x", esm_class=0x44), True, id="receipt-with-udhi-bit"),
        pytest.param(deliver(b"x", esm_class=0x84), True, id="receipt-with-reply-path-bit"),
        pytest.param(deliver(b"x", esm_class=0x43), False, id="mode-and-udhi-bits-only"),
        pytest.param(deliver(b"", tlvs=receipt_tlvs()), True, id="receipted-id-tlv-alone"),
        pytest.param(data_sm(esm_class=0x04), True, id="data-sm-receipt"),
        pytest.param(data_sm(tlvs={Tag.MESSAGE_PAYLOAD: b"hello"}), False, id="data-sm-message"),
    ],
)
def test_receipts_are_told_by_message_type_or_receipted_id(
    pdu: DeliverSm | DataSm, expected: bool
) -> None:
    assert is_receipt(pdu) is expected


@pytest.mark.parametrize(
    ("pdu", "message_id", "state", "status", "raw_error"),
    [
        pytest.param(
            deliver(esm_class=0x04, tlvs=receipt_tlvs()),
            "abc123",
            "DELIVRD",
            "delivered",
            None,
            id="tlvs-only",
        ),
        pytest.param(
            deliver(RECEIPT_TEXT, esm_class=0x04),
            "0001234567",
            "DELIVRD",
            "delivered",
            "000",
            id="text-only",
        ),
        pytest.param(
            deliver(
                RECEIPT_TEXT,
                esm_class=0x04,
                tlvs=receipt_tlvs("ABC", 5, network_error=bytes([3, 0, 1])),
            ),
            "ABC",
            "UNDELIV",
            "undelivered",
            "1",
            id="tlvs-win-over-text",
        ),
        pytest.param(
            deliver(esm_class=0x04, tlvs={Tag.MESSAGE_PAYLOAD: RECEIPT_TEXT}),
            "0001234567",
            "DELIVRD",
            "delivered",
            "000",
            id="text-in-message-payload",
        ),
        pytest.param(
            data_sm(esm_class=0x04, tlvs={Tag.MESSAGE_PAYLOAD: b"id:77 stat:EXPIRED err:000"}),
            "77",
            "EXPIRED",
            "undelivered",
            "000",
            id="data-sm-message-payload",
        ),
        pytest.param(
            deliver(
                esm_class=0x04,
                tlvs={Tag.RECEIPTED_MESSAGE_ID: b"id9\x00\x00", Tag.MESSAGE_STATE: b"\x08"},
            ),
            "id9",
            "REJECTD",
            "failed",
            None,
            id="receipted-id-nuls-stripped",
        ),
        pytest.param(
            deliver(
                b"id:55 stat:DELIVRD",
                esm_class=0x04,
                tlvs={Tag.RECEIPTED_MESSAGE_ID: b"\x00", Tag.MESSAGE_STATE: b"\x00\x02"},
            ),
            "55",
            "DELIVRD",
            "delivered",
            None,
            id="empty-id-and-malformed-state-fall-back-to-text",
        ),
        pytest.param(
            deliver("id:88 stat:ENROUTE".encode("utf-16-be"), esm_class=0x20, data_coding=8),
            "88",
            "ENROUTE",
            None,
            None,
            id="ucs2-text-intermediate",
        ),
    ],
)
def test_a_receipt_is_read_from_text_tlvs_or_both(
    pdu: DeliverSm | DataSm,
    message_id: str,
    state: str,
    status: str | None,
    raw_error: str | None,
) -> None:
    receipt = receipt_from_pdu(pdu)
    assert (receipt.provider_message_id, receipt.state, receipt.status) == (
        message_id,
        state,
        status,
    )
    assert receipt.raw_error == raw_error


@pytest.mark.parametrize(
    "pdu",
    [
        pytest.param(deliver(b"hello there", esm_class=0x04), id="no-id-no-state"),
        pytest.param(deliver(b"stat:DELIVRD", esm_class=0x04), id="no-id"),
        pytest.param(deliver(esm_class=0x04, tlvs=receipt_tlvs(state=None)), id="id-no-state"),
        pytest.param(data_sm(esm_class=0x04), id="empty-data-sm"),
    ],
)
def test_an_unreadable_receipt_raises(pdu: DeliverSm | DataSm) -> None:
    with pytest.raises(ReceiptParseError):
        receipt_from_pdu(pdu)


def test_a_receipt_survives_the_wire() -> None:
    sent = deliver(RECEIPT_TEXT, esm_class=0x04, tlvs=receipt_tlvs("0A1B", 2, bytes([3, 0, 0])))
    received = roundtrip(sent)
    assert is_receipt(received)
    receipt = receipt_from_pdu(received)
    assert (receipt.provider_message_id, receipt.status) == ("0A1B", "delivered")


# --- message parts: UDH and SAR ----------------------------------------------------------------

UDH8 = bytes([0x05, 0x00, 0x03, 0x2A, 0x03, 0x02])
UDH16 = bytes([0x06, 0x08, 0x04, 0x12, 0x34, 0x02, 0x01])
# Port addressing (IEI 0x05) before an 8-bit concatenation element.
UDH_PORTS_THEN_CONCAT = bytes(
    [0x0B, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0, 0x00, 0x03, 0x07, 0x02, 0x02]
)
# Two 8-bit concatenation elements: 23.040 says the last of a repeated element counts.
UDH_TWO_CONCATS = bytes([0x0A, 0x00, 0x03, 0x01, 0x02, 0x01, 0x00, 0x03, 0x09, 0x03, 0x02])


@pytest.mark.parametrize(
    ("pdu", "payload", "reference", "total", "sequence"),
    [
        pytest.param(deliver(b"hello"), b"hello", None, 1, 1, id="plain"),
        pytest.param(deliver(UDH8 + b"part2", esm_class=0x40), b"part2", 0x2A, 3, 2, id="udh-8bit"),
        pytest.param(deliver(UDH16 + b"one", esm_class=0x40), b"one", 0x1234, 2, 1, id="udh-16bit"),
        pytest.param(
            deliver(UDH_PORTS_THEN_CONCAT + b"x", esm_class=0x40),
            b"x",
            7,
            2,
            2,
            id="udh-other-iei-ignored",
        ),
        pytest.param(
            deliver(bytes([0x06, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0]) + b"wap", esm_class=0x40),
            b"wap",
            None,
            1,
            1,
            id="udh-without-concatenation",
        ),
        pytest.param(
            deliver(UDH_TWO_CONCATS + b"z", esm_class=0x40),
            b"z",
            9,
            3,
            2,
            id="udh-repeated-concat-last-wins",
        ),
        pytest.param(
            deliver(UDH_TWO_CONCATS[:-1] + b"\x00" + b"z", esm_class=0x40),
            b"z",
            None,
            1,
            1,
            id="udh-repeated-concat-last-is-broken",
        ),
        pytest.param(
            deliver(
                bytes([0x08, 0x00, 0x03, 0x01, 0x02, 0x01, 0x00, 0x03, 0x09]) + b"z", esm_class=0x40
            ),
            b"z",
            1,
            2,
            1,
            id="udh-truncated-trailing-element-ignored",
        ),
        pytest.param(
            deliver(UDH8, esm_class=0x00), UDH8, None, 1, 1, id="udh-lookalike-without-udhi"
        ),
        pytest.param(deliver(b"", esm_class=0x40), b"", None, 1, 1, id="udhi-empty-payload"),
        pytest.param(
            deliver(bytes([0x05, 0x00, 0x03, 0x2A]), esm_class=0x40),
            bytes([0x00, 0x03, 0x2A]),
            None,
            1,
            1,
            id="udh-truncated",
        ),
        pytest.param(
            deliver(bytes([0x04, 0x00, 0x03, 0x2A, 0x02]) + b"hi", esm_class=0x40),
            b"hi",
            None,
            1,
            1,
            id="udh-element-runs-past-header",
        ),
        pytest.param(
            deliver(bytes([0x06, 0x00, 0x04, 0x2A, 0x02, 0x01, 0x00]) + b"hi", esm_class=0x40),
            b"hi",
            None,
            1,
            1,
            id="udh-concat-wrong-length",
        ),
        pytest.param(
            deliver(bytes([0x05, 0x00, 0x03, 0x2A, 0x03, 0x00]) + b"hi", esm_class=0x40),
            b"hi",
            None,
            1,
            1,
            id="udh-sequence-0",
        ),
        pytest.param(
            deliver(bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x03]) + b"hi", esm_class=0x40),
            b"hi",
            None,
            1,
            1,
            id="udh-sequence-past-total",
        ),
        pytest.param(
            deliver(bytes([0x05, 0x00, 0x03, 0x2A, 0x00, 0x00]) + b"hi", esm_class=0x40),
            b"hi",
            None,
            1,
            1,
            id="udh-total-0",
        ),
        pytest.param(
            deliver(bytes([0x05, 0x00, 0x03, 0x2A, 0x01, 0x01]) + b"hi", esm_class=0x40),
            b"hi",
            None,
            1,
            1,
            id="udh-one-of-one",
        ),
        pytest.param(deliver(b"p3", tlvs=sar(0x0102, 3, 3)), b"p3", 0x0102, 3, 3, id="sar"),
        pytest.param(
            deliver(b"p", tlvs={Tag.SAR_MSG_REF_NUM: b"\x00\x01", Tag.SAR_TOTAL_SEGMENTS: b"\x02"}),
            b"p",
            None,
            1,
            1,
            id="sar-incomplete",
        ),
        pytest.param(deliver(b"p", tlvs=sar(5, 2, 0)), b"p", None, 1, 1, id="sar-sequence-0"),
        pytest.param(
            deliver(UDH8 + b"u", esm_class=0x40, tlvs=sar(9, 2, 1)),
            b"u",
            0x2A,
            3,
            2,
            id="udh-wins-over-sar",
        ),
        pytest.param(
            deliver(
                bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x09]) + b"u",
                esm_class=0x40,
                tlvs=sar(9, 2, 1),
            ),
            b"u",
            9,
            2,
            1,
            id="broken-udh-falls-back-to-sar",
        ),
        pytest.param(
            deliver(esm_class=0x40, tlvs={Tag.MESSAGE_PAYLOAD: UDH16 + b"long" * 80}),
            b"long" * 80,
            0x1234,
            2,
            1,
            id="message-payload-with-udh",
        ),
        pytest.param(
            data_sm(tlvs={Tag.MESSAGE_PAYLOAD: b"tail", **sar(300, 2, 2)}),
            b"tail",
            300,
            2,
            2,
            id="data-sm-with-sar",
        ),
    ],
)
def test_a_fragment_knows_its_part(
    pdu: DeliverSm | DataSm, payload: bytes, reference: int | None, total: int, sequence: int
) -> None:
    fragment = fragment_from_pdu(pdu)
    assert (fragment.payload, fragment.reference, fragment.total, fragment.sequence) == (
        payload,
        reference,
        total,
        sequence,
    )
    assert fragment.is_part is (total > 1)
    assert fragment.data_coding == pdu.data_coding


def test_a_part_survives_the_wire() -> None:
    sent = deliver(UDH8 + b"part2", esm_class=0x40, data_coding=0, tlvs={0x1400: b"vendor"})
    assert fragment_from_pdu(roundtrip(sent)) == InboundFragment(
        source="+15551234567",
        destination="12345",
        payload=b"part2",
        data_coding=0,
        reference=0x2A,
        total=3,
        sequence=2,
    )


@pytest.mark.parametrize(
    ("address", "ton", "expected"),
    [
        pytest.param("15551234567", 1, "+15551234567", id="international-digits"),
        pytest.param("+15551234567", 1, "+15551234567", id="plus-kept"),
        pytest.param("+15551234567", 0, "+15551234567", id="plus-kept-unknown-ton"),
        pytest.param("447700900123", 0, "+447700900123", id="ten-plus-digits-unknown-ton"),
        pytest.param(" 15551234567 ", 1, "+15551234567", id="whitespace-trimmed"),
        pytest.param("12345", 0, "12345", id="short-code"),
        pytest.param("12345", 3, "12345", id="short-code-network-specific"),
        pytest.param("ACME", 5, "ACME", id="alphanumeric"),
        pytest.param("1234567890", 5, "1234567890", id="alphanumeric-ton-digits"),
        pytest.param("5551234567", 2, "5551234567", id="national-number"),
        pytest.param("0612345678", 0, "0612345678", id="trunk-prefix"),
        pytest.param("1234567890123456", 1, "1234567890123456", id="longer-than-e164"),
    ],
)
def test_addresses_are_normalised_to_e164_when_they_are_numbers(
    address: str, ton: int, expected: str
) -> None:
    fragment = fragment_from_pdu(
        deliver(b"x", source=address, source_ton=ton, destination=address, dest_ton=ton)
    )
    assert (fragment.source, fragment.destination) == (expected, expected)


@pytest.mark.parametrize("source", ["", "   "])
def test_a_message_without_a_source_is_refused(source: str) -> None:
    with pytest.raises(InboundParseError):
        fragment_from_pdu(deliver(b"hello", source=source))


@given(
    short_message=st.binary(max_size=254),
    esm_class=st.sampled_from([0x00, 0x40]),
    tlvs=st.dictionaries(
        st.sampled_from([Tag.SAR_MSG_REF_NUM, Tag.SAR_TOTAL_SEGMENTS, Tag.SAR_SEGMENT_SEQNUM]),
        st.binary(max_size=3),
    ),
)
def test_bad_user_data_never_raises(
    short_message: bytes, esm_class: int, tlvs: dict[int, bytes]
) -> None:
    fragment = fragment_from_pdu(deliver(short_message, esm_class=esm_class, tlvs=dict(tlvs)))
    assert 1 <= fragment.sequence <= fragment.total
    assert (fragment.reference is None) is (fragment.total == 1)
    assert len(fragment.payload) <= len(short_message)


# --- decoding ----------------------------------------------------------------------------------

ESC = 0x1B


@pytest.mark.parametrize(
    ("payload", "data_coding", "expected"),
    [
        pytest.param(
            bytes([ESC, 0x65]) + b"10 " + bytes([ESC, 0x28]) + b"ok" + bytes([ESC, 0x29]),
            0x00,
            DecodedText("€10 {ok}", "GSM-7", lossless=True),
            id="gsm7-extension",
        ),
        pytest.param(b"\x00\x01\x02", 0x00, DecodedText("@£$", "GSM-7", True), id="gsm7-basic"),
        pytest.param(b"", 0x00, DecodedText("", "GSM-7", True), id="gsm7-empty"),
        pytest.param(b"\xc1", 0x00, DecodedText("A", "GSM-7", False), id="gsm7-high-bit"),
        pytest.param(bytes([ESC, 0x41]), 0x00, DecodedText("A", "GSM-7", False), id="gsm7-bad-esc"),
        pytest.param(
            b"hi" + bytes([ESC]), 0x00, DecodedText("hi", "GSM-7", False), id="gsm7-esc-end"
        ),
        pytest.param(
            bytes([ESC, ESC]) + b"a", 0x00, DecodedText(" a", "GSM-7", False), id="gsm7-esc-esc"
        ),
        pytest.param(
            "Hi 😀".encode("utf-16-be"), 0x08, DecodedText("Hi 😀", "UCS-2", True), id="ucs2-emoji"
        ),
        pytest.param(
            b"\x00H\x00i\x00", 0x08, DecodedText("Hi\ufffd", "UCS-2", False), id="ucs2-odd-length"
        ),
        pytest.param(
            b"\xd8\x3d\x00A", 0x08, DecodedText("\ufffdA", "UCS-2", False), id="ucs2-lone-surrogate"
        ),
        pytest.param(b"caf\xe9", 0x03, DecodedText("café", "Latin-1", True), id="latin1"),
        pytest.param(b"hello", 0x01, DecodedText("hello", "Latin-1", True), id="ascii-ia5"),
        pytest.param(b"\x01\xab", 0x04, DecodedText("01ab", "binary", False), id="binary-8bit"),
        pytest.param(b"\x01\xab", 0x02, DecodedText("01ab", "binary", False), id="binary-0x02"),
        pytest.param(b"\x01\xab", 0x05, DecodedText("01ab", "binary", False), id="jis-unsupported"),
        pytest.param(
            b"\x01\xab", 0xF5, DecodedText("01ab", "binary", False), id="class-group-8bit"
        ),
        pytest.param(b"hi", 0xF0, DecodedText("hi", "GSM-7", True), id="class-group-gsm7-flash"),
        pytest.param(b"hi", 0xF3, DecodedText("hi", "GSM-7", True), id="class-group-gsm7-sim"),
        pytest.param(b"hi", 0x10, DecodedText("hi", "GSM-7", True), id="general-group-gsm7"),
        pytest.param(b"hi", 0x14, DecodedText("6869", "binary", False), id="general-group-8bit"),
        pytest.param(
            b"\x00h\x00i", 0x18, DecodedText("hi", "UCS-2", True), id="general-group-ucs2"
        ),
        pytest.param(b"hi", 0x1C, DecodedText("6869", "binary", False), id="general-reserved"),
        pytest.param(b"hi", 0x20, DecodedText("6869", "binary", False), id="compressed"),
        pytest.param(b"hi", 0x40, DecodedText("hi", "GSM-7", True), id="auto-delete-gsm7"),
        pytest.param(b"hi", 0x88, DecodedText("6869", "binary", False), id="reserved-group"),
        pytest.param(b"hi", 0xC0, DecodedText("hi", "GSM-7", True), id="mwi-discard-gsm7"),
        pytest.param(b"\x00h", 0xE0, DecodedText("h", "UCS-2", True), id="mwi-store-ucs2"),
        pytest.param(b"hi", 0x100, DecodedText("6869", "binary", False), id="out-of-range"),
        pytest.param(b"hi", -1, DecodedText("6869", "binary", False), id="negative"),
    ],
)
def test_payloads_decode_by_data_coding(
    payload: bytes, data_coding: int, expected: DecodedText
) -> None:
    assert decode_payload(payload, data_coding) == expected


@given(payload=st.binary(max_size=300), data_coding=st.integers(min_value=-1, max_value=0x100))
def test_decoding_never_raises(payload: bytes, data_coding: int) -> None:
    decoded = decode_payload(payload, data_coding)
    if decoded.encoding == "binary":
        assert decoded.text == payload.hex()


# --- reassembly --------------------------------------------------------------------------------


def part(sequence: int, payload: bytes, total: int = 3) -> InboundFragment:
    return InboundFragment("+15551234567", "12345", payload, 0, 42, total, sequence)


@pytest.mark.parametrize(
    ("fragments", "expected"),
    [
        pytest.param([part(1, b"aa"), part(2, b"bb"), part(3, b"cc")], b"aabbcc", id="in-order"),
        pytest.param(
            [part(3, b"cc"), part(1, b"aa"), part(2, b"bb")], b"aabbcc", id="out-of-order"
        ),
        pytest.param(
            [part(1, b"aa"), part(2, b"bb"), part(2, b"XX"), part(3, b"cc")],
            b"aabbcc",
            id="duplicate-first-wins",
        ),
        pytest.param([part(1, b"aa"), part(3, b"cc")], None, id="missing-part"),
        pytest.param([part(1, b"aa"), part(1, b"aa"), part(1, b"aa")], None, id="only-duplicates"),
        pytest.param([], None, id="nothing"),
        pytest.param(
            [part(1, b"aa", total=2), part(3, b"cc", total=3), part(2, b"bb", total=3)],
            b"aabb",
            id="mixed-totals-first-counts",
        ),
        pytest.param(
            [InboundFragment("+1555", "12345", b"whole", 0, None, 1, 1)], b"whole", id="whole"
        ),
    ],
)
def test_parts_are_joined_once_all_are_present(
    fragments: list[InboundFragment], expected: bytes | None
) -> None:
    assert reassemble(fragments) == expected


def test_a_long_ucs2_message_arrives_in_parts_and_reads_as_one() -> None:
    # Given a UCS-2 message whose emoji (a surrogate pair) is split across two parts
    body = "Hello 😀 there".encode("utf-16-be")
    cut = body.index(b"\xd8\x3d") + 2
    udh = [bytes([0x05, 0x00, 0x03, 0x99, 0x02, seq]) for seq in (1, 2)]
    pdus = [
        deliver(udh[1] + body[cut:], esm_class=0x40, data_coding=8),
        deliver(udh[0] + body[:cut], esm_class=0x40, data_coding=8),
        deliver(b"unrelated", data_coding=0),
    ]
    # When they are turned into fragments and grouped by key
    fragments = [fragment_from_pdu(roundtrip(p)) for p in pdus]
    groups: dict[tuple[str, str, int, int], list[InboundFragment]] = {}
    for fragment in fragments:
        groups.setdefault(fragment_key(fragment), []).append(fragment)
    # Then the two parts form one group that reads as the whole text
    assert fragment_key(fragments[0]) == ("+15551234567", "12345", 0x99, 2)
    assert fragment_key(fragments[2]) == ("+15551234567", "12345", -1, 1)
    joined = reassemble(groups[fragment_key(fragments[0])])
    assert joined is not None
    assert decode_payload(joined, fragments[0].data_coding) == DecodedText(
        "Hello 😀 there", "UCS-2", True
    )
