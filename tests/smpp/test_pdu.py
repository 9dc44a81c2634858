"""SMPP 3.4 PDU codec: round trips, hand-built byte vectors, malformed frames, properties."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amnex.channels.smpp.pdu import (
    HEADER_SIZE,
    MAX_PDU_SIZE,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CancelSm,
    CancelSmResp,
    CommandId,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    DistributionList,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Header,
    Outbind,
    Pdu,
    PduError,
    QuerySm,
    QuerySmResp,
    ReplaceSm,
    ReplaceSmResp,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Unbind,
    UnbindResp,
    UnsuccessSme,
    decode,
    encode,
    get_cstring_tlv,
    get_int_tlv,
    read_header,
    set_cstring_tlv,
    set_int_tlv,
)

S = CommandStatus


def h(text: str) -> bytes:
    """Hex with spaces and line breaks allowed, so vectors can be laid out field by field."""
    return bytes.fromhex("".join(text.split()))


def frame(command_id: int, body_hex: str, status: int = 0, sequence: int = 1) -> bytes:
    """A frame with a correct header around a hand-written body (for malformed-body cases)."""
    body = h(body_hex)
    return struct.pack(">IIII", HEADER_SIZE + len(body), command_id, status, sequence) + body


# --- round trips of every PDU type -------------------------------------------------------------

ROUND_TRIPS: list[Pdu] = [
    BindTransmitter(1, 0, "sys", "pw", "type", 0x34, 1, 1, "^447"),
    BindReceiver(2, 0, "sys", "pw", "", 0x34, 0, 0, ""),
    BindTransceiver(3, 0, "a" * 15, "b" * 8, "c" * 12, 0x34, 2, 3, "d" * 40),
    BindTransmitterResp(4, 0, "smsc", {Tag.SC_INTERFACE_VERSION: b"\x34"}),
    BindReceiverResp(5, S.ESME_RBINDFAIL, "smsc"),
    BindTransceiverResp(6, 0, "smsc"),
    Outbind(7, 0, "smsc", "secret"),
    Unbind(8),
    UnbindResp(9),
    EnquireLink(10),
    EnquireLinkResp(11),
    GenericNack(12, S.ESME_RINVCMDID),
    SubmitSm(
        sequence_number=13,
        service_type="CMT",
        source_addr_ton=5,
        source_addr="Amnex",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="447700900123",
        esm_class=0x40,
        priority_flag=1,
        schedule_delivery_time="261128120000000+",
        validity_period="000001000000000R",
        registered_delivery=1,
        data_coding=8,
        short_message=bytes(range(140)),
        tlvs={Tag.SAR_MSG_REF_NUM: b"\x00\x07", 0x1400: b"vendor"},
    ),
    SubmitSmResp(14, 0, "0123abcdef"),
    DeliverSm(sequence_number=15, esm_class=4, short_message=b"id:1 stat:DELIVRD"),
    DeliverSmResp(16),
    DataSm(17, 0, "WAP", 1, 1, "4477", 1, 1, "4478", 0, 1, 4, {Tag.MESSAGE_PAYLOAD: b"x" * 300}),
    DataSmResp(18, 0, "m1", {Tag.ADDITIONAL_STATUS_INFO_TEXT: b"ok\x00"}),
    QuerySm(19, 0, "m1", 1, 1, "4477"),
    QuerySmResp(20, 0, "m1", "261128120000000+", 2, 0),
    CancelSm(21, 0, "", "m1", 1, 1, "4477", 1, 1, "4478"),
    CancelSmResp(22),
    ReplaceSm(23, 0, "m1", 1, 1, "4477", "", "000001000000000R", 1, 0, b"new text"),
    ReplaceSmResp(24),
    SubmitMulti(
        sequence_number=25,
        source_addr="Amnex",
        dest_addresses=[SmeAddress(1, 1, "4477"), DistributionList("friends"), SmeAddress()],
        short_message=b"hi all",
        tlvs={Tag.USER_MESSAGE_REFERENCE: b"\x00\x01"},
    ),
    SubmitMultiResp(26, 0, "m9", [UnsuccessSme(1, 1, "4477", S.ESME_RINVDSTADR)]),
]


def test_round_trips_cover_every_command_id() -> None:
    assert {pdu.command_id for pdu in ROUND_TRIPS} == set(CommandId)


@pytest.mark.parametrize("pdu", ROUND_TRIPS, ids=lambda p: type(p).__name__)
def test_round_trip(pdu: Pdu) -> None:
    data = encode(pdu)
    assert read_header(data) == (len(data), pdu.command_id, pdu.command_status, pdu.sequence_number)
    assert decode(data) == pdu
    assert encode(decode(data)) == data


# --- byte-exact vectors, laid out from the SMPP 3.4 tables --------------------------------------


def test_bind_transceiver_bytes() -> None:
    pdu = BindTransceiver(sequence_number=1, system_id="smppclient1", password="password")
    expected = h(
        """
        0000002a 00000009 00000000 00000001
        736d7070636c69656e743100  70617373776f726400  00
        34 00 00  00
        """
    )
    assert encode(pdu) == expected
    assert decode(expected) == pdu


SUBMIT_BODY = """
    00
    05 00 416d6e657800
    01 01 34343737303039303031323300
    00 00 00
    00
    00
    01 00 00 00
    0b 68656c6c6f20776f726c64
"""


def _submit(tlvs: dict[int, bytes]) -> SubmitSm:
    return SubmitSm(
        sequence_number=5,
        source_addr_ton=5,
        source_addr="Amnex",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="447700900123",
        registered_delivery=1,
        short_message=b"hello world",
        tlvs=tlvs,
    )


def test_submit_sm_bytes_without_tlvs() -> None:
    expected = h("0000003d 00000004 00000000 00000005" + SUBMIT_BODY)
    assert encode(_submit({})) == expected
    assert decode(expected) == _submit({})


def test_submit_sm_bytes_with_tlvs() -> None:
    expected = h("00000043 00000004 00000000 00000005" + SUBMIT_BODY + "0204 0002 0007")
    pdu = _submit({})
    set_int_tlv(pdu.tlvs, Tag.USER_MESSAGE_REFERENCE, 7)
    assert encode(pdu) == expected
    decoded = decode(expected)
    assert decoded == pdu
    assert isinstance(decoded, SubmitSm)
    assert get_int_tlv(decoded.tlvs, Tag.USER_MESSAGE_REFERENCE) == 7
    assert decoded.sm_length == 11


def test_submit_sm_resp_bytes() -> None:
    expected = h("00000017 80000004 00000000 00000005 61626331323300")
    assert encode(SubmitSmResp(5, 0, "abc123")) == expected
    assert decode(expected) == SubmitSmResp(5, 0, "abc123")


def test_submit_sm_resp_with_empty_body_and_error_status() -> None:
    pdu = decode(h("00000010 80000004 00000045 00000005"))
    assert pdu == SubmitSmResp(5, S.ESME_RSUBMITFAIL, "")
    assert pdu.command_status is S.ESME_RSUBMITFAIL


def test_deliver_sm_receipt_bytes() -> None:
    expected = h(
        """
        00000058 00000005 00000000 00000002
        00
        01 01 34343737303039303031323300
        05 00 416d6e657800
        04 00 00
        00
        00
        00 00 00 00
        16 69643a61626331323320737461743a44454c49565244
        001e 0007 61626331323300
        0427 0001 02
        """
    )
    pdu = decode(expected)
    assert isinstance(pdu, DeliverSm)
    assert pdu.esm_class == 4
    assert pdu.source_addr == "447700900123"
    assert pdu.short_message == b"id:abc123 stat:DELIVRD"
    assert get_cstring_tlv(pdu.tlvs, Tag.RECEIPTED_MESSAGE_ID) == "abc123"
    assert get_int_tlv(pdu.tlvs, Tag.MESSAGE_STATE) == 2

    built = DeliverSm(
        sequence_number=2,
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="447700900123",
        dest_addr_ton=5,
        destination_addr="Amnex",
        esm_class=4,
        short_message=b"id:abc123 stat:DELIVRD",
    )
    set_cstring_tlv(built.tlvs, Tag.RECEIPTED_MESSAGE_ID, "abc123")
    set_int_tlv(built.tlvs, Tag.MESSAGE_STATE, 2)
    assert encode(built) == expected


def test_enquire_link_bytes() -> None:
    expected = h("00000010 00000015 00000000 00000007")
    assert encode(EnquireLink(7)) == expected
    assert decode(expected) == EnquireLink(7)


def test_generic_nack_bytes() -> None:
    expected = h("00000010 80000000 00000003 00000009")
    assert encode(GenericNack(9, S.ESME_RINVCMDID)) == expected
    assert decode(expected) == GenericNack(9, S.ESME_RINVCMDID)


# --- TLVs ---------------------------------------------------------------------------------------


def test_unknown_tlv_preserved_byte_for_byte() -> None:
    data = frame(CommandId.SUBMIT_SM_RESP, "6d3100 1401 0003 ffeedd 0210 0001 34 7f00 0000")
    pdu = decode(data)
    assert isinstance(pdu, SubmitSmResp)
    assert pdu.tlvs == {0x1401: b"\xff\xee\xdd", Tag.SC_INTERFACE_VERSION: b"\x34", 0x7F00: b""}
    assert list(pdu.tlvs) == [0x1401, Tag.SC_INTERFACE_VERSION, 0x7F00]
    assert encode(pdu) == data


def test_tlv_helpers() -> None:
    tlvs: dict[int, bytes] = {}
    set_int_tlv(tlvs, Tag.QOS_TIME_TO_LIVE, 3600)
    set_int_tlv(tlvs, Tag.SOURCE_PORT, 2948)
    set_int_tlv(tlvs, Tag.MESSAGE_STATE, 5)
    assert tlvs == {0x0017: h("00000e10"), 0x020A: h("0b84"), 0x0427: h("05")}
    assert get_int_tlv(tlvs, Tag.QOS_TIME_TO_LIVE) == 3600
    assert get_int_tlv(tlvs, Tag.SAR_MSG_REF_NUM) is None
    with pytest.raises(ValueError, match="not an integer"):
        set_int_tlv(tlvs, Tag.MESSAGE_PAYLOAD, 1)
    with pytest.raises(ValueError, match="does not fit"):
        set_int_tlv(tlvs, Tag.MESSAGE_STATE, 256)
    set_cstring_tlv(tlvs, Tag.RECEIPTED_MESSAGE_ID, "0A1B")
    assert tlvs[Tag.RECEIPTED_MESSAGE_ID] == b"0A1B\x00"
    assert get_cstring_tlv(tlvs, Tag.RECEIPTED_MESSAGE_ID) == "0A1B"
    # Some SMSCs omit the NUL; the id still reads correctly.
    assert get_cstring_tlv({Tag.RECEIPTED_MESSAGE_ID: b"77"}, Tag.RECEIPTED_MESSAGE_ID) == "77"
    assert get_cstring_tlv({}, Tag.RECEIPTED_MESSAGE_ID) is None
    with pytest.raises(ValueError, match="NUL"):
        set_cstring_tlv(tlvs, Tag.RECEIPTED_MESSAGE_ID, "a\x00b")


# --- framing ------------------------------------------------------------------------------------


def test_read_header() -> None:
    data = encode(EnquireLink(42))
    assert read_header(data[:15]) is None
    assert read_header(bytearray(data) + b"next") == Header(16, CommandId.ENQUIRE_LINK, 0, 42)
    with pytest.raises(PduError) as too_short:
        read_header(h("0000000f 00000015 00000000 00000001"))
    assert too_short.value.status is S.ESME_RINVCMDLEN
    with pytest.raises(PduError) as too_long:
        read_header(struct.pack(">IIII", MAX_PDU_SIZE + 1, 4, 0, 3))
    assert too_long.value.status is S.ESME_RINVCMDLEN
    assert too_long.value.sequence_number == 3


# --- malformed frames ---------------------------------------------------------------------------

SM = CommandId.SUBMIT_SM
# A valid submit_sm body up to and including sm_length/short_message, for TLV cases.
GOOD_SM = "00 0000 00 0000 00 000000 00 00 00000000 00"

MALFORMED: list[tuple[str, bytes, CommandStatus]] = [
    ("frame shorter than a header", h("00000010 00000015"), S.ESME_RINVCMDLEN),
    ("length mismatch", h("00000011 00000015 00000000 00000001"), S.ESME_RINVCMDLEN),
    ("unknown command id", frame(0x00000099, ""), S.ESME_RINVCMDID),
    ("enquire_link with a body", frame(CommandId.ENQUIRE_LINK, "00"), S.ESME_RINVCMDLEN),
    (
        "system_id without NUL within 16 octets",
        frame(CommandId.BIND_TRANSMITTER, "61" * 16 + "00 00 00 34 00 00 00"),
        S.ESME_RINVSYSID,
    ),
    (
        "password too long",
        frame(CommandId.BIND_TRANSCEIVER, "6100" + "62" * 9 + "00 00 34 00 00 00"),
        S.ESME_RINVPASWD,
    ),
    ("service_type too long", frame(SM, "41424344454600"), S.ESME_RINVSERTYP),
    ("source_addr unterminated", frame(SM, "00 0101 3434"), S.ESME_RINVSRCADR),
    (
        "destination_addr too long",
        frame(SM, "00 0000 00 0101" + "31" * 21 + "00"),
        S.ESME_RINVDSTADR,
    ),
    ("body ends inside fixed octets", frame(SM, "00 0000 00 01"), S.ESME_RINVCMDLEN),
    ("sm_length beyond the body", frame(SM, GOOD_SM[:-2] + "05 6869"), S.ESME_RINVMSGLEN),
    ("sm_length 255", frame(SM, GOOD_SM[:-2] + "ff" + "00" * 255), S.ESME_RINVMSGLEN),
    ("truncated TLV header", frame(SM, GOOD_SM + "0204 00"), S.ESME_RINVOPTPARSTREAM),
    ("TLV value beyond body", frame(SM, GOOD_SM + "0204 0002 00"), S.ESME_RINVOPTPARSTREAM),
    ("repeated TLV", frame(SM, GOOD_SM + "1400 0000 1400 0000"), S.ESME_RINVOPTPARSTREAM),
    ("message_state of 2 octets", frame(SM, GOOD_SM + "0427 0002 0002"), S.ESME_RINVPARLEN),
    ("receipted_message_id of 66", frame(SM, GOOD_SM + "001e 0042" + "31" * 66), S.ESME_RINVPARLEN),
    ("submit_sm_resp ok without body", frame(CommandId.SUBMIT_SM_RESP, ""), S.ESME_RINVMSGID),
    (
        "submit_multi with zero destinations",
        frame(CommandId.SUBMIT_MULTI, "00 0000 00 00"),
        S.ESME_RINVNUMDESTS,
    ),
    (
        "submit_multi with dest_flag 3",
        frame(CommandId.SUBMIT_MULTI, "00 0000 00 01 03"),
        S.ESME_RINVDESTFLAG,
    ),
    (
        "submit_multi dl_name too long",
        frame(CommandId.SUBMIT_MULTI, "00 0000 00 01 02" + "61" * 21 + "00"),
        S.ESME_RINVDLNAME,
    ),
    (
        "query_sm_resp without error_code",
        frame(CommandId.QUERY_SM_RESP, "6d3100 00 02"),
        S.ESME_RINVCMDLEN,
    ),
]


@pytest.mark.parametrize(
    ("data", "status"), [(d, s) for _, d, s in MALFORMED], ids=[name for name, _, _ in MALFORMED]
)
def test_malformed_frame(data: bytes, status: CommandStatus) -> None:
    with pytest.raises(PduError) as caught:
        decode(data)
    assert caught.value.status is status
    if len(data) >= HEADER_SIZE:
        assert caught.value.sequence_number == 1
        assert caught.value.command_id == struct.unpack_from(">I", data, 4)[0]
    assert status.name in str(caught.value)


def test_error_message_names_field_and_command() -> None:
    with pytest.raises(PduError) as caught:
        decode(frame(SM, "00 0101 3434", sequence=77))
    assert str(caught.value) == (
        "ESME_RINVSRCADR in submit_sm (sequence 77): "
        "source_addr: body ends before its NUL terminator"
    )


@pytest.mark.parametrize(
    ("pdu", "status"),
    [
        (SubmitSm(source_addr="1" * 21), S.ESME_RINVSRCADR),
        (SubmitSm(destination_addr="1" * 21), S.ESME_RINVDSTADR),
        (SubmitSm(destination_addr="1\x002"), S.ESME_RINVDSTADR),
        (SubmitSm(short_message=b"x" * 255), S.ESME_RINVMSGLEN),
        (SubmitSm(esm_class=256), S.ESME_RINVMSGLEN),
        (SubmitSm(tlvs={Tag.MESSAGE_STATE: b"\x00\x01"}), S.ESME_RINVPARLEN),
        (BindTransmitter(system_id="s" * 16), S.ESME_RINVSYSID),
        (BindTransmitter(password="p" * 9), S.ESME_RINVPASWD),
        (EnquireLink(sequence_number=2**32), S.ESME_RINVCMDLEN),
        (SubmitMulti(), S.ESME_RINVNUMDESTS),
        (SubmitSm(source_addr="€"), S.ESME_RINVSRCADR),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Pdu) else str(v),
)
def test_encode_rejects_invalid_fields(pdu: Pdu, status: CommandStatus) -> None:
    with pytest.raises(PduError) as caught:
        encode(pdu)
    assert caught.value.status is status
    assert caught.value.command_id == pdu.command_id


# --- properties ---------------------------------------------------------------------------------


def _cstr(max_octets: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=max_octets - 1)


_octet = st.integers(0, 255)
_tlvs = st.dictionaries(
    st.one_of(
        st.integers(0x1400, 0x14FF),  # no SMPP 3.4 tag lives here: vendor-specific, unchecked
        st.just(int(Tag.MESSAGE_PAYLOAD)),
    ),
    st.binary(max_size=300),
    max_size=4,
)


def _short_message_pdu(cls: type[SubmitSm] | type[DeliverSm]) -> st.SearchStrategy[Pdu]:
    return st.builds(
        cls,
        sequence_number=st.integers(0, 0x7FFFFFFF),
        command_status=st.integers(0, 0xFFFFFFFF),
        service_type=_cstr(6),
        source_addr_ton=_octet,
        source_addr_npi=_octet,
        source_addr=_cstr(21),
        dest_addr_ton=_octet,
        dest_addr_npi=_octet,
        destination_addr=_cstr(21),
        esm_class=_octet,
        protocol_id=_octet,
        priority_flag=_octet,
        schedule_delivery_time=_cstr(17),
        validity_period=_cstr(17),
        registered_delivery=_octet,
        replace_if_present_flag=_octet,
        data_coding=_octet,
        sm_default_msg_id=_octet,
        short_message=st.binary(max_size=254),
        tlvs=_tlvs,
    )


@given(st.one_of(_short_message_pdu(SubmitSm), _short_message_pdu(DeliverSm)))
def test_decode_inverts_encode(pdu: Pdu) -> None:
    assert decode(encode(pdu)) == pdu


@given(st.binary(max_size=80))
def test_decode_of_arbitrary_bodies_raises_only_pdu_error(body: bytes) -> None:
    data = struct.pack(">IIII", HEADER_SIZE + len(body), CommandId.SUBMIT_SM, 0, 1) + body
    error: PduError | None = None
    try:
        decode(data)
    except PduError as exc:
        error = exc
    assert error is None or error.sequence_number == 1
