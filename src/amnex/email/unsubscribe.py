"""Email: one-click unsubscribe (RFC 8058) — tokens, links, and filling them into bodies.

Design note. A token names one recipient of one message: the account, the channel (`email`),
the normalised address and the message id. It is the only credential the public
`/v1/unsubscribe/{token}` endpoint asks for, so it must be unforgeable; and it travels in
URLs (proxy logs, link scanners, forwarded mail), so the address inside must not be readable.
Signing alone would leave the address in clear base64, so the token is sealed instead:

    token   = "1." message_id "." base64url(nonce ‖ sealed ‖ tag)
    sealed  = AES-256-GCM("email" \\n account_id \\n address)

The AEAD tag authenticates everything: the sealed text, and the version and message id as
associated data. Each message has its own key, HKDF-SHA256-expanded from a root key with the
message id as context, so a key only ever seals that message's one plaintext; the nonce is
derived from that plaintext, so every attempt at a message yields the same token (and the
same signed body), and a repeated nonce can only repeat an identical ciphertext.

Tokens never expire: a link in a years-old email must still work (CAN-SPAM gives 30 days
to honour one, mailbox providers expect it to work for good). They stay valid as long as the
key source does not change. The root key is HKDF-SHA256 of the first of:

1. `unsubscribe_secret`, when set (lets operators keep links working across master key
   rotations, and gives a key to deployments without a master key);
2. the master key (`master_key` / `master_key_file`), which `amnex dev` always has;
3. otherwise `database_url`, which the API and worker processes necessarily share, so links
   still work; it is a weak secret (anyone who knows the URL can forge an opt-out), so
   `key_source` reports it and the channel logs a warning at start.

A master key rotation (`amnex crypto rotate-master`) does not break the links already sent
while the old key is listed in `previous_master_keys`: a token is opened under the current
root key, then under the root of each previous master key; new tokens are always issued
under the current one. Once the old key is removed from the settings, links sent before
the rotation stop working.

The pure helpers `fill_text` / `fill_html` put the link into bodies: every
`{{unsubscribe_url}}` placeholder (spacing and case as the content rule accepts them) is
replaced, or, when a body has none, a short footer carrying the link is appended.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from amnex.config import Settings
from amnex.privacy.crypto import load_master_key, load_previous_master_keys

__all__ = [
    "TOKEN_MAX_LENGTH",
    "UNSUBSCRIBE_PATH",
    "KeySource",
    "UnsubscribeClaim",
    "UnsubscribeTokens",
    "check_public_url",
    "fill_html",
    "fill_text",
]

UNSUBSCRIBE_PATH: Final = "/v1/unsubscribe"
TOKEN_MAX_LENGTH: Final = 1024
PUBLIC_URL_MAX_LENGTH: Final = 200
_VERSION: Final = "1"
_NONCE_BYTES: Final = 12
_ROOT_SALT: Final = b"amnex unsubscribe tokens"
_ROOT_INFO: Final = b"amnex/unsubscribe/root/v1"
_MESSAGE_INFO: Final = b"amnex/unsubscribe/message/v1/"
_MESSAGE_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The placeholder as the content rule finds it (it folds case and tolerates inner spaces).
_PLACEHOLDER: Final = re.compile(r"\{\{\s*unsubscribe_url\s*\}\}", re.IGNORECASE)
_BODY_CLOSE: Final = re.compile(r"</body\s*>", re.IGNORECASE)

KeySource = Literal["unsubscribe_secret", "master_key", "database_url"]


@dataclass(frozen=True, slots=True)
class UnsubscribeClaim:
    """What a valid token says: suppress `address` on `channel` for `account_id`."""

    account_id: str
    channel: str
    address: str
    message_id: str


class UnsubscribeTokens:
    """Issues tokens under one root key and opens them under it or a previous one (see the
    module's design note)."""

    def __init__(
        self, key_material: bytes, *, key_source: KeySource, previous: Iterable[bytes] = ()
    ) -> None:
        if not key_material:
            raise ValueError("the unsubscribe key material is empty")
        self._root = _root_key(key_material)
        self._previous_roots = tuple(
            _root_key(material)
            for material in dict.fromkeys(previous)
            if material and material != key_material
        )
        self.key_source: KeySource = key_source

    @classmethod
    def from_settings(cls, settings: Settings) -> UnsubscribeTokens:
        """The key from `unsubscribe_secret`, else the master key, else `database_url`.

        Reads the master key file when one is configured (raises `CryptoError` if unusable).
        """
        if settings.unsubscribe_secret is not None:
            secret = settings.unsubscribe_secret.get_secret_value().encode()
            return cls(secret, key_source="unsubscribe_secret")
        master_key = load_master_key(settings)
        if master_key is not None:
            # Links sent before a master key rotation keep working while the old key is listed.
            previous = load_previous_master_keys(settings)
            return cls(master_key, key_source="master_key", previous=previous)
        return cls(settings.database_url.encode(), key_source="database_url")

    def issue(self, *, account_id: str, address: str, message_id: str) -> str:
        """The token for one recipient (`address`, normalised) of one email message."""
        if not _MESSAGE_ID.fullmatch(message_id):
            raise ValueError("a message id is 1 to 64 letters, digits, '_' or '-'")
        if "\n" in account_id or "\n" in address:
            raise ValueError("account ids and addresses are one line")
        plaintext = "\n".join(("email", account_id, address)).encode()
        nonce = hashlib.sha256(plaintext).digest()[:_NONCE_BYTES]
        sealed = _aead(self._root, message_id).encrypt(nonce, plaintext, _associated(message_id))
        encoded = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_VERSION}.{message_id}.{encoded}"

    def open(self, token: str) -> UnsubscribeClaim | None:
        """The claim a token carries, or None if it is malformed, forged or altered."""
        if len(token) > TOKEN_MAX_LENGTH:
            return None
        version, _, rest = token.partition(".")
        message_id, _, encoded = rest.partition(".")
        if version != _VERSION or not _MESSAGE_ID.fullmatch(message_id) or not encoded:
            return None
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) <= _NONCE_BYTES:
            return None
        plaintext = self._open_sealed(message_id, raw)
        if plaintext is None:
            return None
        parts = plaintext.decode("utf-8", errors="strict").split("\n")
        if len(parts) != 3:  # pragma: no cover - only a token this class sealed opens at all
            return None
        channel, account_id, address = parts
        return UnsubscribeClaim(account_id, channel, address, message_id)

    def url(self, public_url: str, *, account_id: str, address: str, message_id: str) -> str:
        """The one-click URL under `public_url` (already checked by `check_public_url`)."""
        token = self.issue(account_id=account_id, address=address, message_id=message_id)
        return f"{public_url}{UNSUBSCRIBE_PATH}/{token}"

    def _open_sealed(self, message_id: str, raw: bytes) -> bytes | None:
        """Under the current root key, else a previous master key's (links sent before a
        rotation); None when none opens it."""
        for root in (self._root, *self._previous_roots):
            plaintext = _open(root, message_id, raw)
            if plaintext is not None:
                return plaintext
        return None


def _root_key(key_material: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_ROOT_SALT, info=_ROOT_INFO).derive(
        key_material
    )


def _aead(root: bytes, message_id: str) -> AESGCM:
    key = HKDFExpand(
        algorithm=hashes.SHA256(), length=32, info=_MESSAGE_INFO + message_id.encode()
    ).derive(root)
    return AESGCM(key)


def _open(root: bytes, message_id: str, raw: bytes) -> bytes | None:
    """The plaintext of a token's sealed part under `root`, or None if it does not open."""
    try:
        return _aead(root, message_id).decrypt(
            raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated(message_id)
        )
    except InvalidTag:
        return None


def _associated(message_id: str) -> bytes:
    return f"{_VERSION}.{message_id}".encode()


def check_public_url(value: str) -> str:
    """`public_url` as links use it: an absolute http(s) URL without query or fragment, no
    trailing slash. Raises ValueError saying what is wrong."""
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"public_url must be an absolute http(s) URL, not {value!r}")
    if parts.query or parts.fragment or "#" in url or "?" in url:
        raise ValueError("public_url must not carry a query or a fragment")
    if len(url) > PUBLIC_URL_MAX_LENGTH or not url.isascii() or any(c.isspace() for c in url):
        raise ValueError(
            f"public_url must be ASCII, without spaces, at most {PUBLIC_URL_MAX_LENGTH} characters"
        )
    return url


TEXT_FOOTER: Final = "To unsubscribe from these emails, open this link: {url}"
HTML_FOOTER: Final = (
    '<p style="font-size:12px;color:#666666">'
    'You can <a href="{url}">unsubscribe from these emails</a> at any time.</p>'
)


def fill_text(body: str, url: str) -> str:
    """A plain-text body with every placeholder replaced by `url`, or with a footer."""
    filled, count = _PLACEHOLDER.subn(lambda _match: url, body)
    if count:
        return filled
    separator = "\n\n" if body.strip() else ""
    return body.rstrip() + separator + TEXT_FOOTER.format(url=url) + "\n"


def fill_html(body: str, url: str) -> str:
    """An HTML body with every placeholder replaced by `url` (escaped), or with a footer
    before its last `</body>` (at the end when there is none)."""
    escaped = html.escape(url, quote=True)
    filled, count = _PLACEHOLDER.subn(lambda _match: escaped, body)
    if count:
        return filled
    footer = HTML_FOOTER.format(url=escaped)
    closes = list(_BODY_CLOSE.finditer(body))
    if not closes:
        return body + footer
    at = closes[-1].start()
    return body[:at] + footer + body[at:]
