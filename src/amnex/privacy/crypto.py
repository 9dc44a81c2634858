"""Privacy: the master key and AES-256-GCM sealing of secrets kept in the database.

Design note. Carrier passwords are sealed with AES-256-GCM under the platform master key
(`AMNEX_MASTER_KEY`, or the file named by `AMNEX_MASTER_KEY_FILE`). A sealed value is
`v1.` + base64url(nonce ‖ ciphertext ‖ tag); the 96-bit nonce is random per seal, and the
value's context (what it is and whose, e.g. `connector:<id>`) is bound as associated data,
so a sealed secret copied to another row does not open there. Without a master key nothing
can be sealed or opened: `MasterKeyMissing` says how to configure one, and no secret is ever
stored in clear instead.

Rotation. A box may also hold *previous* master keys (`AMNEX_PREVIOUS_MASTER_KEYS`): `seal`
always uses the current key, `open` tries the current key and then each previous one in the
order given. A sealed value does not name its key: the GCM tag tells, since a wrong key fails
authentication (a 2^-128 chance of a false match), and a failed try costs one AES-GCM pass
over a short value. `reseal` is what `amnex crypto rotate-master` (`privacy.rotation`)
applies to every wrapped value: the value again under the current key, or None when it
already is under it. Previous keys are only ever used to open.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
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


def parse_key(text: str, *, name: str = "the master key") -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError(f"{name} is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise CryptoError(f"{name} must be {KEY_BYTES} bytes, not {len(key)}")
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


def load_previous_master_keys(settings: Settings) -> list[bytes]:
    """The earlier master keys (`previous_master_keys`, comma-separated), in the order given."""
    if settings.previous_master_keys is None:
        return []
    parts = settings.previous_master_keys.get_secret_value().split(",")
    return [
        parse_key(part, name=f"previous master key {number}")
        for number, part in enumerate((p for p in parts if p.strip()), start=1)
    ]


def ensure_key_file(path: Path) -> None:
    """Create a key file readable by its owner only, once (used by `amnex dev`)."""
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(generate_key() + "\n")


class SecretBox:
    """Seals secrets under the master key; opens them under it or a previous one."""

    def __init__(self, key: bytes | None, *, previous: Iterable[bytes] = ()) -> None:
        previous_keys = [k for k in dict.fromkeys(previous) if k != key]
        if key is None and previous_keys:
            raise CryptoError(
                "previous master keys are set but no current one: set AMNEX_MASTER_KEY (or "
                "AMNEX_MASTER_KEY_FILE) to the new key"
            )
        self._aead = AESGCM(key) if key is not None else None
        self._previous = [AESGCM(k) for k in previous_keys]

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(load_master_key(settings), previous=load_previous_master_keys(settings))

    @property
    def available(self) -> bool:
        return self._aead is not None

    @property
    def previous_count(self) -> int:
        """How many previous master keys this box also opens with."""
        return len(self._previous)

    def seal(self, plaintext: str, *, context: str) -> str:
        current = self._current()
        nonce = os.urandom(NONCE_BYTES)
        sealed = current.encrypt(nonce, plaintext.encode(), context.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, *, context: str) -> str:
        """The secret, opened with the current key or else a previous one."""
        current = self._current()
        raw = _decode(sealed)
        for aead in (current, *self._previous):
            plain = _try_open(aead, raw, context)
            if plain is not None:
                return plain.decode()
        raise CryptoError("the sealed value does not open with this key")

    def opens_with_current(self, sealed: str, *, context: str) -> bool:
        """Whether `sealed` is under the current key (False too when it is no sealed value)."""
        current = self._current()
        try:
            raw = _decode(sealed)
        except CryptoError:
            return False
        return _try_open(current, raw, context) is not None

    def reseal(self, sealed: str, *, context: str) -> str | None:
        """`sealed` sealed again under the current key, or None when it already is.

        Raises `CryptoError` when neither the current nor a previous key opens it.
        """
        if self.opens_with_current(sealed, context=context):
            return None
        return self.seal(self.open(sealed, context=context), context=context)

    def _current(self) -> AESGCM:
        if self._aead is None:
            raise MasterKeyMissing(NO_KEY_DETAIL)
        return self._aead


def _decode(sealed: str) -> bytes:
    if not sealed.startswith(_PREFIX):
        raise CryptoError("not a sealed value")
    try:
        raw = base64.urlsafe_b64decode(sealed.removeprefix(_PREFIX))
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("the sealed value does not open with this key") from exc
    return raw


def _try_open(aead: AESGCM, raw: bytes, context: str) -> bytes | None:
    try:
        return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
    except (ValueError, InvalidTag):
        return None
