"""SMPP command_status -> normalised delivery error: the table, and the errors it builds."""

from __future__ import annotations

import pytest

from amnex.channels.base import PermanentDeliveryError, TemporaryDeliveryError
from amnex.channels.smpp.errors import classify_command_status, delivery_error, raw_code
from amnex.channels.smpp.pdu import CommandStatus as S


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (S.ESME_RTHROTTLED, "throttled", True),
        (S.ESME_RMSGQFUL, "throttled", True),
        (S.ESME_RSYSERR, "carrier_error", True),
        (S.ESME_RX_T_APPN, "carrier_error", True),
        (S.ESME_RINVBNDSTS, "connection_unavailable", True),
        (S.ESME_RALYBND, "connection_unavailable", True),
        (S.ESME_RBINDFAIL, "connection_unavailable", True),
        (S.ESME_RINVPASWD, "connection_unavailable", True),
        (S.ESME_RINVSYSID, "connection_unavailable", True),
        (S.ESME_RINVDSTADR, "invalid_destination", False),
        (S.ESME_RINVDSTTON, "invalid_destination", False),
        (S.ESME_RINVDSTNPI, "invalid_destination", False),
        (S.ESME_RINVSRCADR, "invalid_sender", False),
        (S.ESME_RINVSRCTON, "invalid_sender", False),
        (S.ESME_RINVSRCNPI, "invalid_sender", False),
        (S.ESME_RINVMSGLEN, "invalid_message", False),
        (S.ESME_RINVESMCLASS, "invalid_message", False),
        (S.ESME_RINVPARLEN, "invalid_message", False),
        (S.ESME_RINVOPTPARAMVAL, "invalid_message", False),
        (S.ESME_RINVEXPIRY, "invalid_message", False),
        (S.ESME_RSUBMITFAIL, "carrier_rejected", False),
        (S.ESME_RX_P_APPN, "carrier_rejected", False),
        (S.ESME_RX_R_APPN, "carrier_rejected", False),
        (S.ESME_RUNKNOWNERR, "carrier_rejected", False),
        (S.ESME_RDELIVERYFAILURE, "carrier_rejected", False),
        (0x0000_0400, "carrier_rejected", False),  # vendor-specific
        (0x1234_5678, "carrier_rejected", False),  # not a status at all
    ],
)
def test_command_status_maps_to_code_and_retry(status: int, code: str, retryable: bool) -> None:
    assert classify_command_status(status) == (code, retryable)


def test_every_named_error_status_has_a_known_code() -> None:
    known = {
        "throttled",
        "carrier_error",
        "connection_unavailable",
        "invalid_destination",
        "invalid_sender",
        "invalid_message",
        "carrier_rejected",
    }
    for status in S:
        if status != S.ESME_ROK:
            assert classify_command_status(status)[0] in known, status.name


def test_ok_is_not_an_error() -> None:
    with pytest.raises(ValueError, match="ESME_ROK"):
        classify_command_status(S.ESME_ROK)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(S.ESME_RSUBMITFAIL, "0x00000045"), (0x400, "0x00000400"), (0xFFFFFFFF, "0xFFFFFFFF")],
)
def test_raw_code_is_fixed_width_upper_hex(status: int, expected: str) -> None:
    assert raw_code(status) == expected


def test_delivery_error_builds_a_temporary_error_for_retryable_statuses() -> None:
    error = delivery_error(S.ESME_RSYSERR, "submit_sm refused")
    assert isinstance(error, TemporaryDeliveryError)
    assert (error.code, error.raw_code, error.message) == (
        "carrier_error",
        "0x00000008",
        "submit_sm refused",
    )
    assert error.retryable


def test_delivery_error_builds_a_permanent_error_for_final_statuses() -> None:
    error = delivery_error(S.ESME_RINVDSTADR, "bad number")
    assert isinstance(error, PermanentDeliveryError)
    assert (error.code, error.raw_code) == ("invalid_destination", "0x0000000B")
    assert not error.retryable


def test_unknown_status_keeps_its_raw_code() -> None:
    error = delivery_error(0x0000_04AB, "vendor says no")
    assert isinstance(error, PermanentDeliveryError)
    assert (error.code, error.raw_code) == ("carrier_rejected", "0x000004AB")
