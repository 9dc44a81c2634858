"""Webhook signatures: ours verify with the Standard Webhooks reference library and back."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as ReferenceVerificationError

import amnex.webhooks
from amnex.webhooks import WebhookVerificationError, sign, verify
from amnex.webhooks.signing import new_secret, secret_key

BODY = json.dumps(
    {"type": "message.delivered", "timestamp": "2026-11-28T12:00:00Z", "data": {"id": "msg_1"}}
).encode()
MSG_ID = "evt_2abc"


def now_s() -> int:
    return int(time.time())


def test_the_package_exports_exactly_the_client_helpers() -> None:
    assert sorted(amnex.webhooks.__all__) == ["WebhookVerificationError", "sign", "verify"]


def test_a_new_secret_is_whsec_and_base64_of_random_bytes() -> None:
    secret = new_secret()

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert new_secret() != secret
    assert len(secret_key(new_secret(64))) == 64


@pytest.mark.parametrize("num_bytes", [0, 23, 65])
def test_secret_sizes_outside_24_to_64_bytes_are_refused(num_bytes: int) -> None:
    with pytest.raises(ValueError, match="24 to 64"):
        new_secret(num_bytes)


@pytest.mark.parametrize(
    "secret",
    ["", "abc", "whsec_", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_signing_refuses_secrets_we_would_never_issue(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        sign(MSG_ID, now_s(), BODY, [secret])


def test_the_reference_library_verifies_our_signature() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, now_s(), BODY, [secret])

    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_we_verify_the_reference_librarys_signature() -> None:
    secret = new_secret()
    timestamp = now_s()
    signature = Webhook(secret).sign(MSG_ID, datetime.fromtimestamp(timestamp, UTC), BODY.decode())
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }

    assert verify(BODY, headers, secret) == json.loads(BODY)
    assert headers == sign(MSG_ID, timestamp, BODY, [secret])


def test_during_rotation_both_secrets_sign_and_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    headers = sign(MSG_ID, now_s(), BODY, [old, new])

    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert verify(BODY, headers, secret)["data"] == {"id": "msg_1"}
        assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_headers_and_text_payloads_are_accepted_in_any_case() -> None:
    secret = new_secret()
    headers = {key.upper(): value for key, value in sign(MSG_ID, now_s(), BODY, [secret]).items()}

    assert verify(BODY.decode(), headers, secret)["type"] == "message.delivered"


def test_a_secret_without_prefix_or_padding_verifies_like_the_reference_allows() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 25).decode()
    headers = sign(MSG_ID, now_s(), BODY, [secret])
    bare = secret.removeprefix("whsec_").rstrip("=")

    assert verify(BODY, headers, bare)["type"] == "message.delivered"


def test_a_signature_does_not_depend_on_the_url() -> None:
    """The same event to an endpoint that moved carries the same signature (no URL input)."""
    secret = new_secret()
    timestamp = now_s()

    assert sign(MSG_ID, timestamp, BODY, [secret]) == sign(MSG_ID, timestamp, BODY, [secret])


def test_non_ascii_bodies_sign_as_utf8_like_the_reference() -> None:
    secret = new_secret()
    body = json.dumps({"data": {"name": "Zoë 😀"}}, ensure_ascii=False).encode()
    headers = sign(MSG_ID, now_s(), body, [secret])

    assert Webhook(secret).verify(body, headers) == json.loads(body)
    assert verify(body, headers, secret) == json.loads(body)


def reason_of(
    payload: bytes, headers: dict[str, str], secret: str, *, now: datetime | None = None
) -> str:
    with pytest.raises(WebhookVerificationError) as caught:
        verify(payload, headers, secret, now=now)
    return caught.value.reason


def test_a_tampered_body_fails_here_and_in_the_reference() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, now_s(), BODY, [secret])
    tampered = BODY.replace(b"msg_1", b"msg_2")

    assert reason_of(tampered, headers, secret) == "no_matching_signature"
    with pytest.raises(ReferenceVerificationError):
        Webhook(secret).verify(tampered, headers)


def test_a_wrong_secret_fails() -> None:
    headers = sign(MSG_ID, now_s(), BODY, [new_secret()])

    assert reason_of(BODY, headers, new_secret()) == "no_matching_signature"


def test_a_changed_id_or_timestamp_fails() -> None:
    secret = new_secret()
    timestamp = now_s()
    headers = sign(MSG_ID, timestamp, BODY, [secret])

    assert reason_of(BODY, {**headers, "webhook-id": "evt_other"}, secret) == (
        "no_matching_signature"
    )
    moved = {**headers, "webhook-timestamp": str(timestamp - 1)}
    assert reason_of(BODY, moved, secret) == "no_matching_signature"


def test_stale_and_future_timestamps_fail_even_when_correctly_signed() -> None:
    secret = new_secret()
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    stale = sign(MSG_ID, int((now - timedelta(seconds=301)).timestamp()), BODY, [secret])
    future = sign(MSG_ID, int((now + timedelta(seconds=301)).timestamp()), BODY, [secret])
    edge = sign(MSG_ID, int((now - timedelta(seconds=300)).timestamp()), BODY, [secret])

    assert reason_of(BODY, stale, secret, now=now) == "timestamp_too_old"
    assert reason_of(BODY, future, secret, now=now) == "timestamp_too_new"
    assert verify(BODY, edge, secret, now=now)["type"] == "message.delivered"
    assert verify(BODY, stale, secret, now=now, tolerance_s=600)["type"] == "message.delivered"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_named(missing: str) -> None:
    secret = new_secret()
    headers = sign(MSG_ID, now_s(), BODY, [secret])
    del headers[missing]

    with pytest.raises(WebhookVerificationError, match=missing) as caught:
        verify(BODY, headers, secret)
    assert caught.value.reason == "missing_header"


# The last one is "123" in fullwidth digits, which str.isdigit() would accept.
@pytest.mark.parametrize("timestamp", ["", "12.5", "-1", "soon", "\uff11\uff12\uff13"])
def test_a_timestamp_that_is_not_whole_seconds_is_invalid(timestamp: str) -> None:
    secret = new_secret()
    headers = {**sign(MSG_ID, now_s(), BODY, [secret]), "webhook-timestamp": timestamp}

    expected = "missing_header" if not timestamp else "invalid_timestamp"
    assert reason_of(BODY, headers, secret) == expected


def test_other_versions_and_junk_entries_are_skipped_not_fatal() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, now_s(), BODY, [secret])
    headers["webhook-signature"] = "v1a,abcd junk v1,%%% " + headers["webhook-signature"]

    assert verify(BODY, headers, secret)["type"] == "message.delivered"


def test_only_junk_signatures_fail() -> None:
    secret = new_secret()
    headers = {**sign(MSG_ID, now_s(), BODY, [secret]), "webhook-signature": "v2,abc v1"}

    assert reason_of(BODY, headers, secret) == "no_matching_signature"


@pytest.mark.parametrize("secret", ["whsec_***", "whsec_"])
def test_an_unusable_secret_is_reported_as_such(secret: str) -> None:
    headers = sign(MSG_ID, now_s(), BODY, [new_secret()])

    assert reason_of(BODY, headers, secret) == "invalid_secret"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_a_verified_body_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    secret = new_secret()
    headers = sign(MSG_ID, now_s(), body, [secret])

    assert reason_of(body, headers, secret) == "invalid_payload"


@pytest.mark.parametrize("msg_id", ["", "evt.1", "evt 1", "evt\n1"])
def test_ids_that_would_make_the_signed_text_ambiguous_are_refused(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        sign(msg_id, now_s(), BODY, [new_secret()])


def test_signing_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        sign(MSG_ID, now_s(), BODY, [])
