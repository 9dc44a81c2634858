"""Channels: the SMPP 3.4 PDU codec — bytes to dataclasses and back, pure Python, no I/O.

Scope. `decode` turns one complete frame (the 4-byte command_length included) into a PDU
dataclass; `encode` does the reverse; `read_header` lets a stream reader find frame
boundaries. The session, connector and SMSC simulator all sit on top of this module.

Errors. Anything malformed raises `PduError` carrying the SMPP command status a peer should
receive (RINVCMDLEN, RINVCMDID, RINVSRCADR, RINVOPTPARSTREAM, ...), plus the sequence number
and command id when the header could be read, so a session can answer with the matching
``*_resp`` or a generic_nack instead of dropping the connection. Encoding validates the same
limits, so we never send a PDU we would reject ourselves.

Speed. The notes in ``notes/smpp-libraries.md`` show per-message library cost is what limits
SMPP throughput, so bodies are described by a small table of steps (C-string, group of
octets, short message, ...) interpreted by one tight loop: consecutive integer fields are
read with one precompiled `struct.Struct`, C-strings are found with ``bytes.index``, and
PDU objects are built positionally. A submit_sm costs a few microseconds each way.

TLVs. Optional parameters stay raw: an insertion-ordered ``dict`` of tag -> value bytes, so
unknown tags survive decode -> encode byte for byte. Known tags have their length checked;
`get_int_tlv` / `set_int_tlv` / `get_cstring_tlv` / `set_cstring_tlv` read and write values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar, Final, NamedTuple

__all__ = [
    "HEADER_SIZE",
    "MAX_PDU_SIZE",
    "BindReceiver",
    "BindReceiverResp",
    "BindTransceiver",
    "BindTransceiverResp",
    "BindTransmitter",
    "BindTransmitterResp",
    "CancelSm",
    "CancelSmResp",
    "CommandId",
    "CommandStatus",
    "DataSm",
    "DataSmResp",
    "DeliverSm",
    "DeliverSmResp",
    "DistributionList",
    "EnquireLink",
    "EnquireLinkResp",
    "GenericNack",
    "Header",
    "Outbind",
    "Pdu",
    "PduError",
    "QuerySm",
    "QuerySmResp",
    "ReplaceSm",
    "ReplaceSmResp",
    "SmeAddress",
    "SubmitMulti",
    "SubmitMultiResp",
    "SubmitSm",
    "SubmitSmResp",
    "Tag",
    "Unbind",
    "UnbindResp",
    "UnsuccessSme",
    "decode",
    "encode",
    "get_cstring_tlv",
    "get_int_tlv",
    "read_header",
    "set_cstring_tlv",
    "set_int_tlv",
]

HEADER_SIZE: Final = 16
# The largest body field is message_payload (a 16-bit TLV length, so < 64 KiB); add room for
# the fixed fields and a full submit_multi destination list. A larger command_length is a
# corrupt or hostile stream, and rejecting it early bounds what a reader buffers.
MAX_PDU_SIZE: Final = 72 * 1024

_RESP_BIT: Final = 0x80000000


class CommandId(IntEnum):
    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_RECEIVER_RESP = 0x80000001
    BIND_TRANSMITTER = 0x00000002
    BIND_TRANSMITTER_RESP = 0x80000002
    QUERY_SM = 0x00000003
    QUERY_SM_RESP = 0x80000003
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    REPLACE_SM = 0x00000007
    REPLACE_SM_RESP = 0x80000007
    CANCEL_SM = 0x00000008
    CANCEL_SM_RESP = 0x80000008
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    OUTBIND = 0x0000000B
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015
    SUBMIT_MULTI = 0x00000021
    SUBMIT_MULTI_RESP = 0x80000021
    DATA_SM = 0x00000103
    DATA_SM_RESP = 0x80000103


class CommandStatus(IntEnum):
    ESME_ROK = 0x00
    ESME_RINVMSGLEN = 0x01
    ESME_RINVCMDLEN = 0x02
    ESME_RINVCMDID = 0x03
    ESME_RINVBNDSTS = 0x04
    ESME_RALYBND = 0x05
    ESME_RINVPRTFLG = 0x06
    ESME_RINVREGDLVFLG = 0x07
    ESME_RSYSERR = 0x08
    ESME_RINVSRCADR = 0x0A
    ESME_RINVDSTADR = 0x0B
    ESME_RINVMSGID = 0x0C
    ESME_RBINDFAIL = 0x0D
    ESME_RINVPASWD = 0x0E
    ESME_RINVSYSID = 0x0F
    ESME_RCANCELFAIL = 0x11
    ESME_RREPLACEFAIL = 0x13
    ESME_RMSGQFUL = 0x14
    ESME_RINVSERTYP = 0x15
    ESME_RINVNUMDESTS = 0x33
    ESME_RINVDLNAME = 0x34
    ESME_RINVDESTFLAG = 0x40
    ESME_RINVSUBREP = 0x42
    ESME_RINVESMCLASS = 0x43
    ESME_RCNTSUBDL = 0x44
    ESME_RSUBMITFAIL = 0x45
    ESME_RINVSRCTON = 0x48
    ESME_RINVSRCNPI = 0x49
    ESME_RINVDSTTON = 0x50
    ESME_RINVDSTNPI = 0x51
    ESME_RINVSYSTYP = 0x53
    ESME_RINVREPFLAG = 0x54
    ESME_RINVNUMMSGS = 0x55
    ESME_RTHROTTLED = 0x58
    ESME_RINVSCHED = 0x61
    ESME_RINVEXPIRY = 0x62
    ESME_RINVDFTMSGID = 0x63
    ESME_RX_T_APPN = 0x64
    ESME_RX_P_APPN = 0x65
    ESME_RX_R_APPN = 0x66
    ESME_RQUERYFAIL = 0x67
    ESME_RINVOPTPARSTREAM = 0xC0
    ESME_ROPTPARNOTALLWD = 0xC1
    ESME_RINVPARLEN = 0xC2
    ESME_RMISSINGOPTPARAM = 0xC3
    ESME_RINVOPTPARAMVAL = 0xC4
    ESME_RDELIVERYFAILURE = 0xFE
    ESME_RUNKNOWNERR = 0xFF


class Tag(IntEnum):
    """SMPP 3.4 optional parameter tags (section 5.3.2)."""

    DEST_ADDR_SUBUNIT = 0x0005
    DEST_NETWORK_TYPE = 0x0006
    DEST_BEARER_TYPE = 0x0007
    DEST_TELEMATICS_ID = 0x0008
    SOURCE_ADDR_SUBUNIT = 0x000D
    SOURCE_NETWORK_TYPE = 0x000E
    SOURCE_BEARER_TYPE = 0x000F
    SOURCE_TELEMATICS_ID = 0x0010
    QOS_TIME_TO_LIVE = 0x0017
    PAYLOAD_TYPE = 0x0019
    ADDITIONAL_STATUS_INFO_TEXT = 0x001D
    RECEIPTED_MESSAGE_ID = 0x001E
    MS_MSG_WAIT_FACILITIES = 0x0030
    PRIVACY_INDICATOR = 0x0201
    SOURCE_SUBADDRESS = 0x0202
    DEST_SUBADDRESS = 0x0203
    USER_MESSAGE_REFERENCE = 0x0204
    USER_RESPONSE_CODE = 0x0205
    SOURCE_PORT = 0x020A
    DESTINATION_PORT = 0x020B
    SAR_MSG_REF_NUM = 0x020C
    LANGUAGE_INDICATOR = 0x020D
    SAR_TOTAL_SEGMENTS = 0x020E
    SAR_SEGMENT_SEQNUM = 0x020F
    SC_INTERFACE_VERSION = 0x0210
    CALLBACK_NUM_PRES_IND = 0x0302
    CALLBACK_NUM_ATAG = 0x0303
    NUMBER_OF_MESSAGES = 0x0304
    CALLBACK_NUM = 0x0381
    DPF_RESULT = 0x0420
    SET_DPF = 0x0421
    MS_AVAILABILITY_STATUS = 0x0422
    NETWORK_ERROR_CODE = 0x0423
    MESSAGE_PAYLOAD = 0x0424
    DELIVERY_FAILURE_REASON = 0x0425
    MORE_MESSAGES_TO_SEND = 0x0426
    MESSAGE_STATE = 0x0427
    USSD_SERVICE_OP = 0x0501
    DISPLAY_TIME = 0x1201
    SMS_SIGNAL = 0x1203
    MS_VALIDITY = 0x1204
    ALERT_ON_MESSAGE_DELIVERY = 0x130C
    ITS_REPLY_TYPE = 0x1380
    ITS_SESSION_INFO = 0x1383


# Integer TLVs and their encoded width, used by get_int_tlv/set_int_tlv.
_INT_TLV_SIZE: Final[dict[int, int]] = {
    Tag.DEST_ADDR_SUBUNIT: 1,
    Tag.DEST_NETWORK_TYPE: 1,
    Tag.DEST_BEARER_TYPE: 1,
    Tag.DEST_TELEMATICS_ID: 2,
    Tag.SOURCE_ADDR_SUBUNIT: 1,
    Tag.SOURCE_NETWORK_TYPE: 1,
    Tag.SOURCE_BEARER_TYPE: 1,
    Tag.SOURCE_TELEMATICS_ID: 1,
    Tag.QOS_TIME_TO_LIVE: 4,
    Tag.PAYLOAD_TYPE: 1,
    Tag.MS_MSG_WAIT_FACILITIES: 1,
    Tag.PRIVACY_INDICATOR: 1,
    Tag.USER_MESSAGE_REFERENCE: 2,
    Tag.USER_RESPONSE_CODE: 1,
    Tag.SOURCE_PORT: 2,
    Tag.DESTINATION_PORT: 2,
    Tag.SAR_MSG_REF_NUM: 2,
    Tag.LANGUAGE_INDICATOR: 1,
    Tag.SAR_TOTAL_SEGMENTS: 1,
    Tag.SAR_SEGMENT_SEQNUM: 1,
    Tag.SC_INTERFACE_VERSION: 1,
    Tag.CALLBACK_NUM_PRES_IND: 1,
    Tag.NUMBER_OF_MESSAGES: 1,
    Tag.DPF_RESULT: 1,
    Tag.SET_DPF: 1,
    Tag.MS_AVAILABILITY_STATUS: 1,
    Tag.DELIVERY_FAILURE_REASON: 1,
    Tag.MORE_MESSAGES_TO_SEND: 1,
    Tag.MESSAGE_STATE: 1,
    Tag.USSD_SERVICE_OP: 1,
    Tag.DISPLAY_TIME: 1,
    Tag.SMS_SIGNAL: 2,
    Tag.MS_VALIDITY: 1,
    Tag.ITS_REPLY_TYPE: 1,
    Tag.ITS_SESSION_INFO: 2,
}

# Allowed value lengths (min, max) for known tags; unknown tags are not checked. Where SMPP
# 5.0 widened a 3.4 parameter (ms_validity, alert_on_message_delivery) or the 3.4 text is
# ambiguous (source_telematics_id), the wider range is accepted: rejecting a receipt from a
# newer SMSC costs more than carrying a few extra octets.
_TLV_LENGTHS: Final[dict[int, tuple[int, int]]] = {
    **{tag: (size, size) for tag, size in _INT_TLV_SIZE.items()},
    Tag.SOURCE_TELEMATICS_ID: (1, 2),
    Tag.MS_VALIDITY: (1, 4),
    Tag.ALERT_ON_MESSAGE_DELIVERY: (0, 1),
    Tag.ADDITIONAL_STATUS_INFO_TEXT: (1, 256),
    Tag.RECEIPTED_MESSAGE_ID: (1, 65),
    Tag.SOURCE_SUBADDRESS: (2, 23),
    Tag.DEST_SUBADDRESS: (2, 23),
    Tag.CALLBACK_NUM_ATAG: (1, 65),
    Tag.CALLBACK_NUM: (4, 19),
    Tag.NETWORK_ERROR_CODE: (3, 3),
    Tag.MESSAGE_PAYLOAD: (0, 0xFFFF),
}

_STATUS_BY_VALUE: Final[dict[int, CommandStatus]] = {int(s): s for s in CommandStatus}
_CID_BY_VALUE: Final[dict[int, CommandId]] = {int(c): c for c in CommandId}


class PduError(Exception):
    """A PDU that cannot be decoded or encoded; `status` is what the peer should be told."""

    def __init__(
        self,
        status: CommandStatus,
        detail: str,
        sequence_number: int | None = None,
        command_id: int | None = None,
    ) -> None:
        super().__init__(status, detail, sequence_number, command_id)
        self.status = status
        self.detail = detail
        self.sequence_number = sequence_number
        self.command_id = command_id

    def __str__(self) -> str:
        where = ""
        if self.command_id is not None:
            cid = _CID_BY_VALUE.get(self.command_id)
            name = cid.name.lower() if cid is not None else f"0x{self.command_id:08x}"
            where = f" in {name}"
        if self.sequence_number is not None:
            where += f" (sequence {self.sequence_number})"
        return f"{self.status.name}{where}: {self.detail}"


class Header(NamedTuple):
    command_length: int
    command_id: int
    command_status: int
    sequence_number: int


# ---------------------------------------------------------------------------------------------
# PDU dataclasses. Field order matters: `decode` builds objects positionally, and the layout
# tables below are checked against these fields when the module is imported.


@dataclass(slots=True)
class Pdu:
    """Common header fields; command_id is per class, command_length is computed on encode."""

    command_id: ClassVar[CommandId]
    sequence_number: int = 0
    command_status: int = CommandStatus.ESME_ROK


@dataclass(frozen=True, slots=True)
class SmeAddress:
    """A submit_multi destination that is an SME address (dest_flag 1)."""

    ton: int = 0
    npi: int = 0
    address: str = ""


@dataclass(frozen=True, slots=True)
class DistributionList:
    """A submit_multi destination that is a distribution list name (dest_flag 2)."""

    name: str = ""


@dataclass(frozen=True, slots=True)
class UnsuccessSme:
    """One failed destination in a submit_multi_resp."""

    ton: int = 0
    npi: int = 0
    address: str = ""
    error_status_code: int = 0


@dataclass(slots=True)
class _Bind(Pdu):
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""


@dataclass(slots=True)
class BindTransmitter(_Bind):
    command_id: ClassVar[CommandId] = CommandId.BIND_TRANSMITTER


@dataclass(slots=True)
class BindReceiver(_Bind):
    command_id: ClassVar[CommandId] = CommandId.BIND_RECEIVER


@dataclass(slots=True)
class BindTransceiver(_Bind):
    command_id: ClassVar[CommandId] = CommandId.BIND_TRANSCEIVER


@dataclass(slots=True)
class _BindResp(Pdu):
    system_id: str = ""
    tlvs: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class BindTransmitterResp(_BindResp):
    command_id: ClassVar[CommandId] = CommandId.BIND_TRANSMITTER_RESP


@dataclass(slots=True)
class BindReceiverResp(_BindResp):
    command_id: ClassVar[CommandId] = CommandId.BIND_RECEIVER_RESP


@dataclass(slots=True)
class BindTransceiverResp(_BindResp):
    command_id: ClassVar[CommandId] = CommandId.BIND_TRANSCEIVER_RESP


@dataclass(slots=True)
class Outbind(Pdu):
    command_id: ClassVar[CommandId] = CommandId.OUTBIND
    system_id: str = ""
    password: str = ""


@dataclass(slots=True)
class Unbind(Pdu):
    command_id: ClassVar[CommandId] = CommandId.UNBIND


@dataclass(slots=True)
class UnbindResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.UNBIND_RESP


@dataclass(slots=True)
class EnquireLink(Pdu):
    command_id: ClassVar[CommandId] = CommandId.ENQUIRE_LINK


@dataclass(slots=True)
class EnquireLinkResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.ENQUIRE_LINK_RESP


@dataclass(slots=True)
class GenericNack(Pdu):
    command_id: ClassVar[CommandId] = CommandId.GENERIC_NACK


@dataclass(slots=True)
class _ShortMessage(Pdu):
    """submit_sm and deliver_sm share one body layout (SMPP 3.4 sections 4.4.1 and 4.6.1)."""

    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def sm_length(self) -> int:
        # Derived rather than stored so it can never disagree with short_message.
        return len(self.short_message)


@dataclass(slots=True)
class SubmitSm(_ShortMessage):
    command_id: ClassVar[CommandId] = CommandId.SUBMIT_SM


@dataclass(slots=True)
class DeliverSm(_ShortMessage):
    command_id: ClassVar[CommandId] = CommandId.DELIVER_SM


@dataclass(slots=True)
class SubmitSmResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.SUBMIT_SM_RESP
    message_id: str = ""
    # Not in 3.4, but SMPP 5.0 SMSCs attach e.g. additional_status_info_text to responses;
    # keeping them is cheaper than treating the response as malformed.
    tlvs: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class DeliverSmResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.DELIVER_SM_RESP
    # 3.4 says "unused, set to NULL"; some ESMEs echo an id anyway, so accept one.
    message_id: str = ""
    tlvs: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class DataSm(Pdu):
    command_id: ClassVar[CommandId] = CommandId.DATA_SM
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    registered_delivery: int = 0
    data_coding: int = 0
    tlvs: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class DataSmResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.DATA_SM_RESP
    message_id: str = ""
    tlvs: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class QuerySm(Pdu):
    command_id: ClassVar[CommandId] = CommandId.QUERY_SM
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""


@dataclass(slots=True)
class QuerySmResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.QUERY_SM_RESP
    message_id: str = ""
    final_date: str = ""
    message_state: int = 0
    error_code: int = 0


@dataclass(slots=True)
class CancelSm(Pdu):
    command_id: ClassVar[CommandId] = CommandId.CANCEL_SM
    service_type: str = ""
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""


@dataclass(slots=True)
class CancelSmResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.CANCEL_SM_RESP


@dataclass(slots=True)
class ReplaceSm(Pdu):
    command_id: ClassVar[CommandId] = CommandId.REPLACE_SM
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""


@dataclass(slots=True)
class ReplaceSmResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.REPLACE_SM_RESP


@dataclass(slots=True)
class SubmitMulti(Pdu):
    command_id: ClassVar[CommandId] = CommandId.SUBMIT_MULTI
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    # number_of_dests is len(dest_addresses), written on encode.
    dest_addresses: list[SmeAddress | DistributionList] = field(default_factory=list)
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class SubmitMultiResp(Pdu):
    command_id: ClassVar[CommandId] = CommandId.SUBMIT_MULTI_RESP
    message_id: str = ""
    # no_unsuccess is len(unsuccess_smes), written on encode.
    unsuccess_smes: list[UnsuccessSme] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Body layouts. A step is a tuple whose first item is its kind:
#   (_CSTR, name, max_octets_including_nul, status_on_error)
#   (_OCTETS, names, Struct(">B..."), size)      consecutive one-octet integers
#   (_SM, name)                                  sm_length + short_message
#   (_DESTS, name)                               number_of_dests + dest_address list
#   (_UNSUCC, name)                              no_unsuccess + unsuccess_sme list
# Plain tuples keep the interpreter loop cheap (one unpack per step, no attribute lookups).

_CSTR: Final = 0
_OCTETS: Final = 1
_SM: Final = 2
_DESTS: Final = 3
_UNSUCC: Final = 4

# Any: each kind carries differently typed items, and the loops dispatch on the kind.
_Step = tuple[int, Any, Any, Any]
_S = CommandStatus


def _c(name: str, max_octets: int, status: CommandStatus = _S.ESME_RINVMSGLEN) -> _Step:
    return (_CSTR, name, max_octets, status)


def _o(*names: str) -> _Step:
    return (_OCTETS, names, struct.Struct(">" + "B" * len(names)), len(names))


def _sm(name: str = "short_message") -> _Step:
    return (_SM, name, None, None)


_BIND_STEPS: Final = (
    _c("system_id", 16, _S.ESME_RINVSYSID),
    _c("password", 9, _S.ESME_RINVPASWD),
    _c("system_type", 13, _S.ESME_RINVSYSTYP),
    _o("interface_version", "addr_ton", "addr_npi"),
    _c("address_range", 41),
)
_BIND_RESP_STEPS: Final = (_c("system_id", 16, _S.ESME_RINVSYSID),)
_MESSAGE_ID_STEPS: Final = (_c("message_id", 65, _S.ESME_RINVMSGID),)
_SHORT_MESSAGE_STEPS: Final = (
    _c("service_type", 6, _S.ESME_RINVSERTYP),
    _o("source_addr_ton", "source_addr_npi"),
    _c("source_addr", 21, _S.ESME_RINVSRCADR),
    _o("dest_addr_ton", "dest_addr_npi"),
    _c("destination_addr", 21, _S.ESME_RINVDSTADR),
    _o("esm_class", "protocol_id", "priority_flag"),
    _c("schedule_delivery_time", 17, _S.ESME_RINVSCHED),
    _c("validity_period", 17, _S.ESME_RINVEXPIRY),
    _o("registered_delivery", "replace_if_present_flag", "data_coding", "sm_default_msg_id"),
    _sm(),
)

# command id -> (class, steps, carries TLVs)
_LAYOUTS: Final[dict[int, tuple[type[Pdu], tuple[_Step, ...], bool]]] = {
    CommandId.BIND_TRANSMITTER: (BindTransmitter, _BIND_STEPS, False),
    CommandId.BIND_RECEIVER: (BindReceiver, _BIND_STEPS, False),
    CommandId.BIND_TRANSCEIVER: (BindTransceiver, _BIND_STEPS, False),
    CommandId.BIND_TRANSMITTER_RESP: (BindTransmitterResp, _BIND_RESP_STEPS, True),
    CommandId.BIND_RECEIVER_RESP: (BindReceiverResp, _BIND_RESP_STEPS, True),
    CommandId.BIND_TRANSCEIVER_RESP: (BindTransceiverResp, _BIND_RESP_STEPS, True),
    CommandId.OUTBIND: (
        Outbind,
        (_c("system_id", 16, _S.ESME_RINVSYSID), _c("password", 9, _S.ESME_RINVPASWD)),
        False,
    ),
    CommandId.UNBIND: (Unbind, (), False),
    CommandId.UNBIND_RESP: (UnbindResp, (), False),
    CommandId.ENQUIRE_LINK: (EnquireLink, (), False),
    CommandId.ENQUIRE_LINK_RESP: (EnquireLinkResp, (), False),
    CommandId.GENERIC_NACK: (GenericNack, (), False),
    CommandId.SUBMIT_SM: (SubmitSm, _SHORT_MESSAGE_STEPS, True),
    CommandId.DELIVER_SM: (DeliverSm, _SHORT_MESSAGE_STEPS, True),
    CommandId.SUBMIT_SM_RESP: (SubmitSmResp, _MESSAGE_ID_STEPS, True),
    CommandId.DELIVER_SM_RESP: (DeliverSmResp, _MESSAGE_ID_STEPS, True),
    CommandId.DATA_SM: (
        DataSm,
        (
            _c("service_type", 6, _S.ESME_RINVSERTYP),
            _o("source_addr_ton", "source_addr_npi"),
            _c("source_addr", 65, _S.ESME_RINVSRCADR),
            _o("dest_addr_ton", "dest_addr_npi"),
            _c("destination_addr", 65, _S.ESME_RINVDSTADR),
            _o("esm_class", "registered_delivery", "data_coding"),
        ),
        True,
    ),
    CommandId.DATA_SM_RESP: (DataSmResp, _MESSAGE_ID_STEPS, True),
    CommandId.QUERY_SM: (
        QuerySm,
        (
            _c("message_id", 65, _S.ESME_RINVMSGID),
            _o("source_addr_ton", "source_addr_npi"),
            _c("source_addr", 21, _S.ESME_RINVSRCADR),
        ),
        False,
    ),
    CommandId.QUERY_SM_RESP: (
        QuerySmResp,
        (
            _c("message_id", 65, _S.ESME_RINVMSGID),
            _c("final_date", 17),
            _o("message_state", "error_code"),
        ),
        False,
    ),
    CommandId.CANCEL_SM: (
        CancelSm,
        (
            _c("service_type", 6, _S.ESME_RINVSERTYP),
            _c("message_id", 65, _S.ESME_RINVMSGID),
            _o("source_addr_ton", "source_addr_npi"),
            _c("source_addr", 21, _S.ESME_RINVSRCADR),
            _o("dest_addr_ton", "dest_addr_npi"),
            _c("destination_addr", 21, _S.ESME_RINVDSTADR),
        ),
        False,
    ),
    CommandId.CANCEL_SM_RESP: (CancelSmResp, (), False),
    CommandId.REPLACE_SM: (
        ReplaceSm,
        (
            _c("message_id", 65, _S.ESME_RINVMSGID),
            _o("source_addr_ton", "source_addr_npi"),
            _c("source_addr", 21, _S.ESME_RINVSRCADR),
            _c("schedule_delivery_time", 17, _S.ESME_RINVSCHED),
            _c("validity_period", 17, _S.ESME_RINVEXPIRY),
            _o("registered_delivery", "sm_default_msg_id"),
            _sm(),
        ),
        False,
    ),
    CommandId.REPLACE_SM_RESP: (ReplaceSmResp, (), False),
    CommandId.SUBMIT_MULTI: (
        SubmitMulti,
        (
            _c("service_type", 6, _S.ESME_RINVSERTYP),
            _o("source_addr_ton", "source_addr_npi"),
            _c("source_addr", 21, _S.ESME_RINVSRCADR),
            (_DESTS, "dest_addresses", None, None),
            _o("esm_class", "protocol_id", "priority_flag"),
            _c("schedule_delivery_time", 17, _S.ESME_RINVSCHED),
            _c("validity_period", 17, _S.ESME_RINVEXPIRY),
            _o(
                "registered_delivery", "replace_if_present_flag", "data_coding", "sm_default_msg_id"
            ),
            _sm(),
        ),
        True,
    ),
    CommandId.SUBMIT_MULTI_RESP: (
        SubmitMultiResp,
        (_c("message_id", 65, _S.ESME_RINVMSGID), (_UNSUCC, "unsuccess_smes", None, None)),
        False,
    ),
}


def _step_names(step: _Step) -> tuple[str, ...]:
    name = step[1]
    return name if isinstance(name, tuple) else (str(name),)


def _check_layouts() -> None:
    # decode builds PDUs positionally, so a layout that drifts from its dataclass would put
    # values into the wrong fields; fail at import rather than on the wire.
    for cid, (cls, steps, has_tlvs) in _LAYOUTS.items():
        expected = ["sequence_number", "command_status"]
        for step in steps:
            expected.extend(_step_names(step))
        if has_tlvs:
            expected.append("tlvs")
        actual = [f.name for f in fields(cls)]
        if actual != expected or cls.command_id != cid:
            raise RuntimeError(f"layout of {cls.__name__} does not match its fields")
    if set(_LAYOUTS) != set(CommandId):
        raise RuntimeError("every CommandId needs a layout")


_check_layouts()

_HEADER: Final = struct.Struct(">IIII")
_TLV_HEAD: Final = struct.Struct(">HH")
_ADDR_OCTETS: Final = struct.Struct(">BB")
_ERROR_CODE: Final = struct.Struct(">I")
_SME_FLAG: Final = 1
_DL_FLAG: Final = 2
_MAX_SHORT_MESSAGE: Final = 254
_MAX_DESTS: Final = 254


# ---------------------------------------------------------------------------------------------
# Decoding


def read_header(buffer: bytes | bytearray | memoryview) -> Header | None:
    """Parse the 16-octet header at the start of `buffer`, or return None if it is shorter.

    The frame is complete once ``len(buffer) >= header.command_length``. A command_length
    outside [16, MAX_PDU_SIZE] raises PduError(RINVCMDLEN): the stream cannot be re-framed.
    """
    if len(buffer) < HEADER_SIZE:
        return None
    length, cid, status, seq = _HEADER.unpack_from(buffer, 0)
    if length < HEADER_SIZE or length > MAX_PDU_SIZE:
        raise PduError(
            CommandStatus.ESME_RINVCMDLEN,
            f"command_length {length} outside {HEADER_SIZE}..{MAX_PDU_SIZE}",
            seq,
            cid,
        )
    return Header(length, cid, status, seq)


def _cstring(
    frame: bytes, pos: int, end: int, name: str, limit: int, status: _S
) -> tuple[str, int]:
    stop = pos + limit if pos + limit < end else end
    try:
        nul = frame.index(0, pos, stop)
    except ValueError:
        if stop == end and pos + limit > end:
            raise PduError(status, f"{name}: body ends before its NUL terminator") from None
        raise PduError(
            status, f"{name}: no NUL within {limit} octets (longer than the maximum)"
        ) from None
    return frame[pos:nul].decode("latin-1"), nul + 1


def _truncated(name: object) -> PduError:
    return PduError(CommandStatus.ESME_RINVCMDLEN, f"body ends inside {name}")


def _decode_dests(
    frame: bytes, pos: int, end: int
) -> tuple[list[SmeAddress | DistributionList], int]:
    if pos >= end:
        raise _truncated("number_of_dests")
    count = frame[pos]
    pos += 1
    if count == 0 or count > _MAX_DESTS:
        raise PduError(CommandStatus.ESME_RINVNUMDESTS, f"number_of_dests {count}")
    dests: list[SmeAddress | DistributionList] = []
    for _ in range(count):
        if pos >= end:
            raise _truncated("dest_address")
        flag = frame[pos]
        pos += 1
        if flag == _SME_FLAG:
            if pos + 2 > end:
                raise _truncated("dest_address")
            ton, npi = _ADDR_OCTETS.unpack_from(frame, pos)
            addr, pos = _cstring(frame, pos + 2, end, "destination_addr", 21, _S.ESME_RINVDSTADR)
            dests.append(SmeAddress(ton, npi, addr))
        elif flag == _DL_FLAG:
            dl_name, pos = _cstring(frame, pos, end, "dl_name", 21, _S.ESME_RINVDLNAME)
            dests.append(DistributionList(dl_name))
        else:
            raise PduError(CommandStatus.ESME_RINVDESTFLAG, f"dest_flag {flag}")
    return dests, pos


def _decode_unsuccess(frame: bytes, pos: int, end: int) -> tuple[list[UnsuccessSme], int]:
    if pos >= end:
        raise _truncated("no_unsuccess")
    count = frame[pos]
    pos += 1
    smes: list[UnsuccessSme] = []
    for _ in range(count):
        if pos + 2 > end:
            raise _truncated("unsuccess_sme")
        ton, npi = _ADDR_OCTETS.unpack_from(frame, pos)
        addr, pos = _cstring(frame, pos + 2, end, "destination_addr", 21, _S.ESME_RINVDSTADR)
        if pos + 4 > end:
            raise _truncated("error_status_code")
        (code,) = _ERROR_CODE.unpack_from(frame, pos)
        pos += 4
        smes.append(UnsuccessSme(ton, npi, addr, code))
    return smes, pos


def _decode_tlvs(frame: bytes, pos: int, end: int) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    while pos < end:
        if pos + 4 > end:
            raise PduError(
                CommandStatus.ESME_RINVOPTPARSTREAM,
                f"{end - pos} octets left after the last TLV, too few for a TLV header",
            )
        tag, length = _TLV_HEAD.unpack_from(frame, pos)
        pos += 4
        if pos + length > end:
            raise PduError(
                CommandStatus.ESME_RINVOPTPARSTREAM,
                f"TLV 0x{tag:04x} declares {length} octets, only {end - pos} remain",
            )
        bounds = _TLV_LENGTHS.get(tag)
        if bounds is not None and not bounds[0] <= length <= bounds[1]:
            raise PduError(CommandStatus.ESME_RINVPARLEN, _tlv_length_detail(tag, length, bounds))
        if tag in tlvs:
            # A dict cannot hold both copies, and silently dropping one would break the
            # byte-for-byte promise; 3.4 allows each parameter once.
            raise PduError(CommandStatus.ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04x} repeated")
        tlvs[tag] = frame[pos : pos + length]
        pos += length
    return tlvs


def _tlv_length_detail(tag: int, length: int, bounds: tuple[int, int]) -> str:
    name = Tag(tag).name.lower() if tag in Tag._value2member_map_ else f"0x{tag:04x}"
    lo, hi = bounds
    allowed = str(lo) if lo == hi else f"{lo}..{hi}"
    return f"TLV {name} has length {length}, expected {allowed}"


def decode(frame: bytes | bytearray | memoryview) -> Pdu:
    """Decode one complete PDU (header included); raise PduError if it is malformed."""
    if not isinstance(frame, bytes):
        frame = bytes(frame)
    end = len(frame)
    if end < HEADER_SIZE:
        raise PduError(CommandStatus.ESME_RINVCMDLEN, f"frame of {end} octets has no header")
    length, cid, status, seq = _HEADER.unpack_from(frame, 0)
    if length != end:
        raise PduError(
            CommandStatus.ESME_RINVCMDLEN,
            f"command_length {length} but frame has {end} octets",
            seq,
            cid,
        )
    layout = _LAYOUTS.get(cid)
    if layout is None:
        raise PduError(CommandStatus.ESME_RINVCMDID, f"unknown command_id 0x{cid:08x}", seq, cid)
    cls, steps, has_tlvs = layout
    status = _STATUS_BY_VALUE.get(status, status)
    if end == HEADER_SIZE and status and cid & _RESP_BIT:
        # SMSCs commonly omit the body of an error response (3.4 section 4.4.2 allows it for
        # submit_sm_resp); the defaults stand in for the missing fields.
        return cls(seq, status)
    try:
        values: list[Any] = [seq, status]
        pos = HEADER_SIZE
        for kind, name, arg, extra in steps:
            if kind == _CSTR:
                value, pos = _cstring(frame, pos, end, name, arg, extra)
                values.append(value)
            elif kind == _OCTETS:
                if pos + extra > end:
                    raise _truncated(", ".join(name))
                values.extend(arg.unpack_from(frame, pos))
                pos += extra
            elif kind == _SM:
                if pos >= end:
                    raise _truncated("sm_length")
                sm_length = frame[pos]
                pos += 1
                if sm_length > _MAX_SHORT_MESSAGE or pos + sm_length > end:
                    raise PduError(
                        CommandStatus.ESME_RINVMSGLEN,
                        f"sm_length {sm_length} but {end - pos} body octets remain",
                    )
                values.append(frame[pos : pos + sm_length])
                pos += sm_length
            elif kind == _DESTS:
                dests, pos = _decode_dests(frame, pos, end)
                values.append(dests)
            else:
                smes, pos = _decode_unsuccess(frame, pos, end)
                values.append(smes)
        if has_tlvs:
            values.append(_decode_tlvs(frame, pos, end))
        elif pos != end:
            raise PduError(
                CommandStatus.ESME_RINVCMDLEN, f"{end - pos} unexpected octets after the body"
            )
    except PduError as exc:
        exc.sequence_number = seq
        exc.command_id = cid
        raise
    return cls(*values)


# ---------------------------------------------------------------------------------------------
# Encoding


def _encode_cstring(value: str, name: str, limit: int, status: _S) -> bytes:
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raise PduError(status, f"{name}: {value!r} is not representable in octets") from None
    if len(raw) >= limit or b"\0" in raw:
        raise PduError(
            status, f"{name}: {len(raw)} octets plus NUL exceeds {limit}, or contains NUL"
        )
    return raw + b"\0"


def _encode_short_message(value: bytes) -> bytes:
    if len(value) > _MAX_SHORT_MESSAGE:
        raise PduError(
            CommandStatus.ESME_RINVMSGLEN,
            f"short_message of {len(value)} octets exceeds {_MAX_SHORT_MESSAGE}; "
            "use the message_payload TLV",
        )
    return bytes((len(value),)) + value


def _encode_dests(dests: list[SmeAddress | DistributionList]) -> bytes:
    if not dests or len(dests) > _MAX_DESTS:
        raise PduError(CommandStatus.ESME_RINVNUMDESTS, f"number_of_dests {len(dests)}")
    parts = [bytes((len(dests),))]
    for dest in dests:
        if isinstance(dest, SmeAddress):
            parts.append(_pack_octets(_SME_FLAG, dest.ton, dest.npi))
            parts.append(_encode_cstring(dest.address, "destination_addr", 21, _S.ESME_RINVDSTADR))
        else:
            parts.append(bytes((_DL_FLAG,)))
            parts.append(_encode_cstring(dest.name, "dl_name", 21, _S.ESME_RINVDLNAME))
    return b"".join(parts)


def _encode_unsuccess(smes: list[UnsuccessSme]) -> bytes:
    if len(smes) > 255:
        raise PduError(CommandStatus.ESME_RINVNUMDESTS, f"no_unsuccess {len(smes)}")
    parts = [bytes((len(smes),))]
    for sme in smes:
        parts.append(_pack_octets(sme.ton, sme.npi))
        parts.append(_encode_cstring(sme.address, "destination_addr", 21, _S.ESME_RINVDSTADR))
        try:
            parts.append(_ERROR_CODE.pack(sme.error_status_code))
        except struct.error:
            raise PduError(
                CommandStatus.ESME_RINVMSGLEN,
                f"error_status_code {sme.error_status_code} is not a 32-bit value",
            ) from None
    return b"".join(parts)


def _pack_octets(*values: int) -> bytes:
    try:
        return bytes(values)
    except ValueError:
        raise PduError(
            CommandStatus.ESME_RINVMSGLEN, f"octet field out of range: {values}"
        ) from None


def _encode_tlvs(tlvs: dict[int, bytes]) -> bytes:
    parts: list[bytes] = []
    for tag, value in tlvs.items():
        length = len(value)
        bounds = _TLV_LENGTHS.get(tag)
        if bounds is not None and not bounds[0] <= length <= bounds[1]:
            raise PduError(CommandStatus.ESME_RINVPARLEN, _tlv_length_detail(tag, length, bounds))
        if not 0 <= tag <= 0xFFFF or length > 0xFFFF:
            raise PduError(CommandStatus.ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:x} of {length} octets")
        parts.append(_TLV_HEAD.pack(tag, length))
        parts.append(value)
    return b"".join(parts)


def encode(pdu: Pdu) -> bytes:
    """Encode a PDU into one frame (header included); raise PduError if a field is invalid."""
    cid = pdu.command_id
    _cls, steps, has_tlvs = _LAYOUTS[cid]
    seq = pdu.sequence_number
    try:
        parts: list[bytes] = []
        for kind, name, arg, extra in steps:
            if kind == _CSTR:
                parts.append(_encode_cstring(getattr(pdu, name), name, arg, extra))
            elif kind == _OCTETS:
                values = [getattr(pdu, n) for n in name]
                try:
                    parts.append(arg.pack(*values))
                except struct.error:
                    raise PduError(
                        CommandStatus.ESME_RINVMSGLEN,
                        f"{', '.join(name)} = {values}: each must be 0..255",
                    ) from None
            elif kind == _SM:
                parts.append(_encode_short_message(getattr(pdu, name)))
            elif kind == _DESTS:
                parts.append(_encode_dests(getattr(pdu, name)))
            else:
                parts.append(_encode_unsuccess(getattr(pdu, name)))
        if has_tlvs:
            # The layout table, checked at import, guarantees this class has `tlvs`.
            parts.append(_encode_tlvs(pdu.tlvs))  # type: ignore[attr-defined]
        body = b"".join(parts)
        length = HEADER_SIZE + len(body)
        if length > MAX_PDU_SIZE:
            raise PduError(
                CommandStatus.ESME_RINVCMDLEN, f"PDU of {length} octets exceeds {MAX_PDU_SIZE}"
            )
        try:
            header = _HEADER.pack(length, cid, pdu.command_status, seq)
        except struct.error:
            raise PduError(
                CommandStatus.ESME_RINVCMDLEN,
                f"command_status {pdu.command_status} or sequence_number {seq} "
                "is not a 32-bit value",
            ) from None
    except PduError as exc:
        exc.sequence_number = seq
        exc.command_id = cid
        raise
    return header + body


# ---------------------------------------------------------------------------------------------
# TLV helpers


def get_int_tlv(tlvs: dict[int, bytes], tag: int) -> int | None:
    """The big-endian integer value of `tag`, or None if absent."""
    value = tlvs.get(tag)
    return None if value is None else int.from_bytes(value, "big")


def set_int_tlv(tlvs: dict[int, bytes], tag: int, value: int) -> None:
    """Store `value` with the width SMPP 3.4 defines for `tag` (1, 2 or 4 octets)."""
    size = _INT_TLV_SIZE.get(tag)
    if size is None:
        raise ValueError(f"TLV 0x{tag:04x} is not an integer parameter")
    try:
        tlvs[tag] = value.to_bytes(size, "big")
    except OverflowError:
        raise ValueError(f"{value} does not fit the {size}-octet TLV 0x{tag:04x}") from None


def get_cstring_tlv(tlvs: dict[int, bytes], tag: int) -> str | None:
    """The text of a C-octet string TLV (e.g. receipted_message_id), or None if absent.

    The NUL terminator is stripped when present; some SMSCs omit it, and a receipt is worth
    more than strictness here.
    """
    value = tlvs.get(tag)
    if value is None:
        return None
    if value.endswith(b"\0"):
        value = value[:-1]
    return value.decode("latin-1")


def set_cstring_tlv(tlvs: dict[int, bytes], tag: int, value: str) -> None:
    """Store `value` as a NUL-terminated C-octet string TLV."""
    raw = value.encode("latin-1")
    if b"\0" in raw:
        raise ValueError("a C-octet string cannot contain NUL")
    tlvs[tag] = raw + b"\0"
