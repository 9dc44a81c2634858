"""Webhooks: signing outgoing events and verifying them, per the Standard Webhooks specification.

Design note. A signature is `v1,` + base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.
{body}")) where the key is the secret's base64 payload (`whsec_` + standard base64 of 24 to 64
random bytes). The URL is not signed, so an endpoint can move without new secrets. During a
rotation both secrets sign and `webhook-signature` carries one `v1,` entry per secret separated
by spaces; a receiver accepts the message when any entry matches. `verify` is the client-side
helper: it compares in constant time, refuses a timestamp outside the tolerance in either
direction (replays, skewed clocks), and says precisely why it refused through a stable
`reason`. The `standardwebhooks` reference library verifies what `sign` produces and the other
way round (tests/webhooks/test_signing.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets as secrets_module
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from amnex.clock import utc_now

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SECRET_MIN_BYTES = 24
SECRET_MAX_BYTES = 64
SECRET_DEFAULT_BYTES = 32
# The specification's recommended default: five minutes either way.
DEFAULT_TOLERANCE_S = 300
SIGNATURE_VERSION = "v1"

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class WebhookVerificationError(Exception):
    """A webhook did not verify; `reason` is a stable code, the message says more.

    Reasons: `missing_header`, `invalid_timestamp`, `timestamp_too_old`, `timestamp_too_new`,
    `invalid_secret`, `no_matching_signature`, `invalid_payload`.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def new_secret(num_bytes: int = SECRET_DEFAULT_BYTES) -> str:
    """A fresh signing secret, `whsec_` + standard base64 of `num_bytes` random bytes."""
    if not SECRET_MIN_BYTES <= num_bytes <= SECRET_MAX_BYTES:
        raise ValueError(f"a secret has {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(secrets_module.token_bytes(num_bytes)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a secret we issued; raises `ValueError` for anything else."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a signing secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a signing secret is standard base64 after its prefix") from exc
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise ValueError(
            f"a signing secret holds {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes, not {len(key)}"
        )
    return key


def _lenient_key(secret: str) -> bytes:
    """A receiver's view of a secret: prefix and padding optional, as the reference allows."""
    text = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError(
            "invalid_secret", "the secret is not whsec_ + base64"
        ) from exc
    if not key:
        raise WebhookVerificationError("invalid_secret", "the secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, payload: bytes) -> bytes:
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, payload)
    return hmac.new(key, signed, hashlib.sha256).digest()


def _check_msg_id(msg_id: str) -> None:
    # A dot or whitespace in the id would make "{id}.{timestamp}.{body}" ambiguous.
    if not msg_id or any(ch == "." or not ch.isprintable() or ch.isspace() for ch in msg_id):
        raise ValueError("a webhook id is non-empty printable text without dots or spaces")


def sign(msg_id: str, timestamp: int, payload: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery; one signature per secret."""
    _check_msg_id(msg_id)
    if not secrets:
        raise ValueError("at least one secret signs a webhook")
    signatures = (
        f"{SIGNATURE_VERSION},"
        + base64.b64encode(_signature(secret_key(secret), msg_id, timestamp, payload)).decode()
        for secret in secrets
    )
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: " ".join(signatures),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name and value.strip():
            return value.strip()
    raise WebhookVerificationError("missing_header", f"the {name} header is missing")


def _parse_timestamp(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise WebhookVerificationError(
            "invalid_timestamp", f"{HEADER_TIMESTAMP} is not whole seconds since the epoch"
        )
    return int(text)


def _offered_signatures(header: str) -> list[bytes]:
    """The decodable `v1` signatures in a header; other versions and junk are skipped."""
    offered = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return offered


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Check a received webhook and return its JSON body; raise `WebhookVerificationError`.

    Pass the body exactly as received (bytes, or the text it decodes to) and the request's
    headers in any letter case.
    """
    body = payload.encode() if isinstance(payload, str) else payload
    msg_id = _header(headers, HEADER_ID)
    timestamp = _parse_timestamp(_header(headers, HEADER_TIMESTAMP))
    signature_header = _header(headers, HEADER_SIGNATURE)
    key = _lenient_key(secret)

    age_s = (now or utc_now()).timestamp() - timestamp
    if age_s > tolerance_s:
        raise WebhookVerificationError(
            "timestamp_too_old", f"the message is {age_s:.0f} s old (tolerance {tolerance_s} s)"
        )
    if -age_s > tolerance_s:
        raise WebhookVerificationError(
            "timestamp_too_new",
            f"the message is {-age_s:.0f} s in the future (tolerance {tolerance_s} s)",
        )

    expected = _signature(key, msg_id, timestamp, body)
    # Compare against every entry so timing does not reveal which one matched.
    matched = False
    for offered in _offered_signatures(signature_header):
        matched |= hmac.compare_digest(expected, offered)
    if not matched:
        raise WebhookVerificationError(
            "no_matching_signature", "no v1 signature matches this secret and body"
        )

    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise WebhookVerificationError("invalid_payload", "the body is not JSON") from exc
    if not isinstance(parsed, dict):
        raise WebhookVerificationError("invalid_payload", "the body is not a JSON object")
    return parsed
