"""Privacy: the masking rules for log lines, one table per rule, and where they stop."""

from __future__ import annotations

from typing import Any

import pytest

from amnex.privacy.logsafe import DROPPED, failure_summary, mask_event_dict, mask_text


def masked(event_dict: dict[str, Any]) -> dict[str, Any]:
    return dict(mask_event_dict(None, "info", event_dict))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+14155550100", "+1*******00"),
        ("to +447700900123.", "to +44*******23."),
        ("+44 20 7946 0958", "+44*******58"),
        ("+7 (912) 345-67-89", "+7*******89"),
        ("+33612345678 and +33612345699", "+33*******78 and +33*******99"),
        ("tel:+4915123456789", "tel:+49*******89"),
        ("+9991234567", "+*******67"),  # no such country code: only the last two digits
        ("+14155550100abc", "+1*******00abc"),  # after a + even a glued letter does not hide it
        ("?to=%2B14155550100&channel=sms", "?to=%2B1*******00&channel=sms"),
        ("(415) 555-0100", "*******00"),
        ("call 415.555.0100 today", "call *******00 today"),
        ("06 12 34 56 78", "*******78"),
        ("0612345678", "*******78"),
        ("from 14155550100", "from *******00"),
        ("4155550100 4155550101", "*******01"),  # side by side: masked as one
        ("[parameters: ('+14155550100', 'Hi')]", "[parameters: ('+1*******00', 'Hi')]"),
    ],
)
def test_phone_numbers_keep_only_the_country_code_and_last_two_digits(
    text: str, expected: str
) -> None:
    assert mask_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "listening on 127.0.0.1:8000",
        "bind 2 up after 1.5s, 12 of 64 in flight, window 10",
        "worker metrics on http://0.0.0.0:9464/metrics",
        "scheduled at 2024-05-01T10:00:00.123456Z",
        "scheduled at 2024-05-01 10:00:00,123 (+02:00)",
        "due 2024-05-01T10:00:00+02:00",
        "took 00:01:02.5",
        "message msg_01J4155550100ABCDEFGHJKMN accepted for acc_01J0000000000000000000000",
        "request 550e8400-e29b-41d4-a716-446655440000",
        "smtp 550 5.1.1 mailbox unavailable",
        "HTTP/1.1 503",
        "ESME_RTHROTTLED (0x00000058)",
        "a nanosecond clock 1717171717171000000",
        "python 3.11.9",
        "+1*******00 a***@example.com",  # masking twice changes nothing
    ],
)
def test_what_is_not_a_phone_number_is_left_alone(text: str) -> None:
    assert mask_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice@example.com", "a***@example.com"),
        ("<Bob.Smith+news@mail.example.co.uk>", "<B***@mail.example.co.uk>"),
        ("to=alice%40example.com&x=1", "to=a***%40example.com&x=1"),
        ("root@localhost refused", "r***@localhost refused"),
        ("émile@exemple.fr", "é***@exemple.fr"),
        ("RCPT TO:<someone@example.org>: 550", "RCPT TO:<s***@example.org>: 550"),
    ],
)
def test_email_addresses_keep_the_first_character_and_the_domain(text: str, expected: str) -> None:
    assert mask_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key amx_3kD9-x_Qz1", "key amx_[redacted]"),
        ("token amxop_Zz9_aa-b", "token amxop_[redacted]"),
        ("secret whsec_0123456789abcdef", "secret whsec_[redacted]"),
        (
            "POST /v1/unsubscribe/1.msg_01J0000000000000000000000.QUJD-_x HTTP/1.1",
            "POST /v1/unsubscribe/[redacted] HTTP/1.1",
        ),
        (
            "https://a.example/v1/unsubscribe/tok?x=1",
            "https://a.example/v1/unsubscribe/[redacted]?x=1",
        ),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [redacted]"),
        ("Basic dXNlcjpwYXNz", "Basic [redacted]"),
        ("/hook?token=abc123&id=7", "/hook?token=[redacted]&id=7"),
        ("/x?api_key=abc&access_token=def", "/x?api_key=[redacted]&access_token=[redacted]"),
    ],
)
def test_credentials_are_redacted(text: str, expected: str) -> None:
    assert mask_text(text) == expected


@pytest.mark.parametrize(
    "key",
    [
        "body",
        "html",
        "text",
        "subject",
        "short_message",
        "message_payload",
        "payload",
        "password",
        "Authorization",
        "api_key",
        "X-Api-Key",
        "inbound_body",
        "smtp_password",
        "idempotency_key",
        "cookie",
    ],
)
def test_keys_that_carry_content_or_secrets_are_dropped(key: str) -> None:
    assert masked({key: "Your code is 123456"})[key] == DROPPED


def test_numbers_in_allow_listed_keys_are_kept_and_elsewhere_masked_when_phone_like() -> None:
    event = {
        "at_ms": 1_717_171_717_171,  # epoch milliseconds: 13 digits
        "sent_at": "1717171717",
        "port": 8000,
        "count": 12_345_678,
        "duration_s": 12.5,
        "status_code": 503,
        "provider_message_id": "0001234567",
        "message_ids": ["0001234567"],
        "max_bytes": 1_048_576,
        "to": 14_155_550_100,  # an address that arrived as an integer
        "n": 12,
        "big": 1234567,
        "ok": True,
        "nothing": None,
    }

    assert masked(event) == {
        **event,
        "count": 12_345_678,
        "max_bytes": 1_048_576,
        "to": "*******00",
        "big": "*******67",
    }


def test_allow_listed_keys_still_mask_addresses_and_credentials() -> None:
    out = masked({"message_id": "alice@example.com", "at_ms": "amx_secret"})
    assert out == {"message_id": "a***@example.com", "at_ms": "amx_[redacted]"}


def test_nested_values_are_walked() -> None:
    out = masked(
        {
            "event": "request",
            "headers": {
                "authorization": "Bearer x",
                "host": "api.example",
                "x-trace": "+14155550100",
            },
            "recipients": ["+14155550100", {"email": "bob@example.org", "body": "hi"}],
            "pair": ("+447700900123", 3),
            "raw": b"to=+14155550100",
            "other": ValueError("bad address carol@example.net"),
        }
    )
    assert out == {
        "event": "request",
        "headers": {"authorization": DROPPED, "host": "api.example", "x-trace": "+1*******00"},
        "recipients": ["+1*******00", {"email": "b***@example.org", "body": DROPPED}],
        "pair": ["+44*******23", 3],
        "raw": "to=+1*******00",
        "other": "bad address c***@example.net",
    }


def test_an_exception_is_rendered_and_its_text_masked() -> None:
    try:
        raise RuntimeError("550 5.1.1 <dave@example.com> unknown, reply to +14155550100")
    except RuntimeError as exc:
        out = masked({"event": "send failed", "exc_info": exc})

    assert "exc_info" not in out
    assert "Traceback (most recent call last)" in out["exception"]
    assert (
        "RuntimeError: 550 5.1.1 <d***@example.com> unknown, reply to +1*******00"
        in (out["exception"])
    )


def test_failure_summary_names_the_type_and_place_never_the_message() -> None:
    try:
        raise ValueError("alice@example.com")
    except ValueError as exc:
        summary = failure_summary(exc)
    assert summary.startswith("ValueError at test_logsafe.py:")
    assert "alice" not in summary
