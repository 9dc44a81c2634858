"""Delivery receipts: both forms, carrier states, error codes, and ids in their many spellings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from amnex.receipts.dlr import (
    ReceiptIdFormat,
    ReceiptParseError,
    canonical_id,
    normalise_state,
    parse_receipt,
    parse_receipt_text,
    receipt_id_key,
)

TEXT = (
    b"id:0001234567 sub:001 dlvrd:001 submit date:2611281405 done date:2611281406 "
    b"stat:DELIVRD err:000 text:Your code is 48"
)


def test_the_text_form_is_read_field_by_field() -> None:
    fields = parse_receipt_text(TEXT.decode())
    assert fields["id"] == "0001234567"
    assert fields["stat"] == "DELIVRD"
    assert fields["submit date"] == "2611281405"
    assert fields["text"] == "Your code is 48"


def test_a_delivered_receipt() -> None:
    receipt = parse_receipt(TEXT)
    assert receipt.provider_message_id == "0001234567"  # opaque: leading zeros kept
    assert (receipt.state, receipt.status, receipt.error_code) == ("DELIVRD", "delivered", None)
    assert receipt.submit_date == datetime(2026, 11, 28, 14, 5, tzinfo=UTC)
    assert (receipt.submitted, receipt.delivered) == (1, 1)


def test_tlvs_win_over_the_text() -> None:
    receipt = parse_receipt(
        b"id:999 stat:DELIVRD err:000",
        receipted_message_id="ABC123",
        message_state=5,
        network_error_code=bytes([3, 0, 1]),
    )
    assert receipt.provider_message_id == "ABC123"
    assert (receipt.state, receipt.status) == ("UNDELIV", "undelivered")
    assert (receipt.raw_error, receipt.error_code) == ("1", "unknown_subscriber")


@pytest.mark.parametrize(
    ("state", "err", "status", "code"),
    [
        ("DELIVRD", "000", "delivered", None),
        ("UNDELIV", "000", "undelivered", "undeliverable"),
        ("UNDELIV", "001", "undelivered", "unknown_subscriber"),
        ("UNDELIV", "27", "undelivered", "absent_subscriber"),
        ("EXPIRED", None, "undelivered", "expired"),
        ("REJECTD", "011", "failed", "blocked_by_carrier"),
        ("DELETED", None, "undelivered", "deleted_by_carrier"),
        ("UNKNOWN", None, "undelivered", "unknown_outcome"),
        ("ACCEPTD", None, None, None),
        ("ENROUTE", None, None, None),
        ("WEIRD", None, "undelivered", "unknown_outcome"),
    ],
)
def test_carrier_states_map_to_amnex_statuses(
    state: str, err: str | None, status: str | None, code: str | None
) -> None:
    assert normalise_state(state, err) == (status, code)


@pytest.mark.parametrize("body", [b"hello there", b"id:123 text:no state", b"stat:DELIVRD"])
def test_text_that_is_not_a_receipt_is_refused(body: bytes) -> None:
    with pytest.raises(ReceiptParseError):
        parse_receipt(body)


@pytest.mark.parametrize(
    ("submitted", "reported", "id_format"),
    [
        ("0001234567", "1234567", "as_is"),  # leading zeros dropped by the carrier
        ("1234567", "0001234567", "as_is"),  # ... or added
        ("ABC-9", "abc-9", "as_is"),  # case
        ("a1b2c3d4-0001", "A1B2C3D4-0001", "as_is"),
        ("12D687", "1234567", "hex_in_receipt_decimal"),  # hex id reported in decimal
        ("1234567", "12d687", "decimal_in_receipt_hex"),  # decimal id reported in hex
        ("abc-9", "ABC-9", "hex_in_receipt_decimal"),  # not a number: matched as is
    ],
)
def test_a_receipt_finds_its_part_in_the_connectors_id_format(
    submitted: str, reported: str, id_format: ReceiptIdFormat
) -> None:
    assert receipt_id_key(reported, id_format) == canonical_id(submitted)


@pytest.mark.parametrize(
    ("submitted", "reported"),
    [
        ("1234567", "1234568"),
        ("abc-9", "abc-90"),
        # Never guessed: decimal 512 is not the hex id 0x200 of another message
        ("200", "512"),
        ("512", "200"),
    ],
)
def test_unrelated_ids_do_not_match(submitted: str, reported: str) -> None:
    assert receipt_id_key(reported) != canonical_id(submitted)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2611281405", datetime(2026, 11, 28, 14, 5, tzinfo=UTC)),
        ("261128140559", datetime(2026, 11, 28, 14, 5, 59, tzinfo=UTC)),
        ("6801010000", datetime(2068, 1, 1, tzinfo=UTC)),  # %y's pivot: 00-68 → 20xx
        ("6901010000", datetime(1969, 1, 1, tzinfo=UTC)),  # 69-99 → 19xx
        ("2602301200", None),  # 30 February
        ("2611282400", None),  # hour 24
        ("26112814", None),  # too short
        ("26112814050", None),  # 11 digits: neither form
        ("2611281405ab", None),
    ],
)
def test_receipt_dates_are_read_as_utc_or_dropped(value: str, expected: datetime | None) -> None:
    text = f"id:1 sub:001 dlvrd:001 submit date:{value} done date:{value} stat:DELIVRD err:000"
    receipt = parse_receipt(text.encode())
    assert (receipt.submit_date, receipt.done_date) == (expected, expected)
