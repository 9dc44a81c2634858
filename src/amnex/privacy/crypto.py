"""Privacy: the master key and AES-256-GCM sealing of secrets kept in the database.

Design note. Carrier passwords are sealed with AES-256-GCM under the platform master key
(`AMNEX_MASTER_KEY`, or the file named by `AMNEX_MASTER_KEY_FILE`). A sealed value is
`v1.` + base64url(nonce ‖ ciphertext ‖ tag); the 96-bit nonce is random per seal, and the
value's context (what it is and whose, e.g. `connector:<id>`) is bound as associated data,
so a sealed secret copied to another row does not open there. Without a master key nothing
can be sealed or opened: `MasterKeyMissing` says how to configure one, and no secret is ever
stored in clear instead.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from amnex.config import Settings
from amnex.errors import MasterKeyMissing

KEY_BYTES = 32
NONCE_BYTES = 12
_PREFIX = "v1."


class CryptoError(Exception):
    """A key or a sealed value is unusable."""


NO_KEY_DETAIL = (
    "no master key: set AMNEX_MASTER_KEY (or AMNEX_MASTER_KEY_FILE) to a key from "
    "`amnex crypto generate-key`"
)


def generate_key() -> str:
    """A new master key, as the base64 text the settings expect."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("the master key is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise CryptoError(f"the master key must be {KEY_BYTES} bytes, not {len(key)}")
    return key


def load_master_key(settings: Settings) -> bytes | None:
    if settings.master_key is not None:
        return parse_key(settings.master_key.get_secret_value())
    if settings.master_key_file is not None:
        try:
            text = settings.master_key_file.read_text()
        except OSError as exc:
            raise CryptoError(f"cannot read the master key file: {exc.strerror}") from exc
        return parse_key(text)
    return None


def ensure_key_file(path: Path) -> None:
    """Create a key file readable by its owner only, once (used by `amnex dev`)."""
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(generate_key() + "\n")


class SecretBox:
    """Seals and opens short secrets under the master key."""

    def __init__(self, key: bytes | None) -> None:
        self._aead = AESGCM(key) if key is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(load_master_key(settings))

    @property
    def available(self) -> bool:
        return self._aead is not None

    def seal(self, plaintext: str, *, context: str) -> str:
        if self._aead is None:
            raise MasterKeyMissing(NO_KEY_DETAIL)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, *, context: str) -> str:
        if self._aead is None:
            raise MasterKeyMissing(NO_KEY_DETAIL)
        if not sealed.startswith(_PREFIX):
            raise CryptoError("not a sealed value")
        try:
            raw = base64.urlsafe_b64decode(sealed.removeprefix(_PREFIX))
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise CryptoError("the sealed value does not open with this key") from exc
        return plain.decode()
