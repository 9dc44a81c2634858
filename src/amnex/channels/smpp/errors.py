"""Channels: SMPP command_status to the channel's two delivery errors — a pure table.

A submit_sm_resp (or a generic_nack answering a submit_sm) carries one command_status. It
becomes a normalised code and a retry decision:

    code                     retryable  statuses (SMPP 3.4, section 5.1.3)
    throttled                yes        RTHROTTLED, RMSGQFUL
    carrier_error            yes        RSYSERR, RX_T_APPN
    connection_unavailable   yes        RINVBNDSTS, RALYBND, RBINDFAIL, RINVPASWD, RINVSYSID,
                                        RINVSYSTYP (the bind is at fault, not the message)
    invalid_destination      no         RINVDSTADR, RINVDSTTON, RINVDSTNPI, RINVNUMDESTS,
                                        RINVDESTFLAG, RINVDLNAME
    invalid_sender           no         RINVSRCADR, RINVSRCTON, RINVSRCNPI
    invalid_message          no         RINVMSGLEN, RINVCMDLEN, RINVCMDID, RINVPRTFLG,
                                        RINVREGDLVFLG, RINVSERTYP, RINVSUBREP, RINVESMCLASS,
                                        RINVREPFLAG, RINVNUMMSGS, RINVSCHED, RINVEXPIRY,
                                        RINVDFTMSGID, RINVOPTPARSTREAM, ROPTPARNOTALLWD,
                                        RINVPARLEN, RMISSINGOPTPARAM, RINVOPTPARAMVAL
    carrier_rejected         no         RSUBMITFAIL, RX_P_APPN, RX_R_APPN, and every other
                                        status, vendor-specific ones (0x400-0x4FF) included

RSUBMITFAIL is the SMSC's generic "no" and is final (the `amnex dev` contract: destination
...91 fails with carrier_rejected). SMPP 3.4 has no RINVDCS; an SMSC that dislikes the
data_coding answers with a vendor status, which lands in carrier_rejected.

The raw code kept on the error is always the hex form, ``0x00000045``: stable for vendor
statuses that have no name, and what carriers' documentation lists.
"""

from __future__ import annotations

from typing import Final

from amnex.channels.base import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from amnex.channels.smpp.pdu import CommandStatus

__all__ = ["UNKNOWN_STATUS", "classify_command_status", "delivery_error", "raw_code"]

_S = CommandStatus

# What an unknown status means: the SMSC refused and we cannot tell why, so do not retry.
UNKNOWN_STATUS: Final = ("carrier_rejected", False)

_TABLE: Final[dict[int, tuple[str, bool]]] = {
    # Slow down, then resend.
    _S.ESME_RTHROTTLED: ("throttled", True),
    _S.ESME_RMSGQFUL: ("throttled", True),
    # The SMSC's own trouble.
    _S.ESME_RSYSERR: ("carrier_error", True),
    _S.ESME_RX_T_APPN: ("carrier_error", True),
    # The bind, not the message.
    _S.ESME_RINVBNDSTS: ("connection_unavailable", True),
    _S.ESME_RALYBND: ("connection_unavailable", True),
    _S.ESME_RBINDFAIL: ("connection_unavailable", True),
    _S.ESME_RINVPASWD: ("connection_unavailable", True),
    _S.ESME_RINVSYSID: ("connection_unavailable", True),
    _S.ESME_RINVSYSTYP: ("connection_unavailable", True),
    # The destination.
    _S.ESME_RINVDSTADR: ("invalid_destination", False),
    _S.ESME_RINVDSTTON: ("invalid_destination", False),
    _S.ESME_RINVDSTNPI: ("invalid_destination", False),
    _S.ESME_RINVNUMDESTS: ("invalid_destination", False),
    _S.ESME_RINVDESTFLAG: ("invalid_destination", False),
    _S.ESME_RINVDLNAME: ("invalid_destination", False),
    # The sender.
    _S.ESME_RINVSRCADR: ("invalid_sender", False),
    _S.ESME_RINVSRCTON: ("invalid_sender", False),
    _S.ESME_RINVSRCNPI: ("invalid_sender", False),
    # The PDU we built.
    _S.ESME_RINVMSGLEN: ("invalid_message", False),
    _S.ESME_RINVCMDLEN: ("invalid_message", False),
    _S.ESME_RINVCMDID: ("invalid_message", False),
    _S.ESME_RINVPRTFLG: ("invalid_message", False),
    _S.ESME_RINVREGDLVFLG: ("invalid_message", False),
    _S.ESME_RINVSERTYP: ("invalid_message", False),
    _S.ESME_RINVSUBREP: ("invalid_message", False),
    _S.ESME_RINVESMCLASS: ("invalid_message", False),
    _S.ESME_RINVREPFLAG: ("invalid_message", False),
    _S.ESME_RINVNUMMSGS: ("invalid_message", False),
    _S.ESME_RINVSCHED: ("invalid_message", False),
    _S.ESME_RINVEXPIRY: ("invalid_message", False),
    _S.ESME_RINVDFTMSGID: ("invalid_message", False),
    _S.ESME_RINVOPTPARSTREAM: ("invalid_message", False),
    _S.ESME_ROPTPARNOTALLWD: ("invalid_message", False),
    _S.ESME_RINVPARLEN: ("invalid_message", False),
    _S.ESME_RMISSINGOPTPARAM: ("invalid_message", False),
    _S.ESME_RINVOPTPARAMVAL: ("invalid_message", False),
    # Refused for good.
    _S.ESME_RSUBMITFAIL: ("carrier_rejected", False),
    _S.ESME_RX_P_APPN: ("carrier_rejected", False),
    _S.ESME_RX_R_APPN: ("carrier_rejected", False),
}


def classify_command_status(status: int) -> tuple[str, bool]:
    """The normalised error code of an error command_status and whether retrying can help.

    Raises ValueError for ESME_ROK, which is not an error.
    """
    if status == CommandStatus.ESME_ROK:
        raise ValueError("ESME_ROK is not an error status")
    return _TABLE.get(status, UNKNOWN_STATUS)


def raw_code(status: int) -> str:
    """The provider error code kept on the message: ``0x`` and eight upper-case hex digits."""
    return f"0x{status & 0xFFFFFFFF:08X}"


def delivery_error(status: int, message: str) -> DeliveryError:
    """The channel error for an error command_status (Temporary or Permanent, per the table)."""
    code, retryable = classify_command_status(status)
    if retryable:
        return TemporaryDeliveryError(code, message, raw_code=raw_code(status))
    return PermanentDeliveryError(code, message, raw_code=raw_code(status))
