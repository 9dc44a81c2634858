"""Privacy: message content encrypted at rest under short-lived content keys (crypto-shredding).

Design note. Message content — subject, body, HTML, inbound text — is stored encrypted with
AES-256-GCM under a *content key* that serves one period (a UTC day by default,
`content_key_period_s`). Each content key is random, stored only wrapped by the master key
(`SecretBox`, bound to its id), and destroyed — the wrapped key deleted — once no message
holds content under it any more (`destroy_spent_keys`, run by the purge). From then on no
stale database page, WAL frame, dump or backup that still holds the ciphertext can be read:
deleting the key deletes the content everywhere at once.

The encryption is transparent to the code: the content columns are of type `EncryptedText`,
whose bind step encrypts under the current key and whose result step decrypts, so ORM
writes, the accept path's driver `executemany` and Core reads all go through it. A process
installs its keyring at start (`ContentKeyring.start`): every live key is loaded and unwrapped
into memory, the current period's key (and the next one's, ahead of time) is created if it
does not exist yet, and the set is reloaded every `_REFRESH_S`, so keys created by other
processes are known well before anything is written under them.

Stored form: `amx1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, the key id and the column
bound as associated data. A process without a master key installs no keyring and stores
content as it is (the privacy report says so); text without the prefix is read as it is.
Content under a destroyed key reads as None — it was purged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import String, Text, or_, select, type_coerce, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from amnex.clock import utc_now
from amnex.db.base import Base
from amnex.db.engine import Database
from amnex.privacy.audit import record_audit
from amnex.privacy.crypto import KEY_BYTES, NONCE_BYTES, CryptoError, SecretBox
from amnex.privacy.keyring import SharedKeyring

log = logging.getLogger(__name__)

PREFIX = "amx1:"
_REFRESH_S = 30.0


class ContentKey(Base):
    """A content key: random, stored wrapped by the master key; `wrapped` is None once
    destroyed (the row stays, so a reader can tell purged content from a missing key)."""

    __tablename__ = "content_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    period_start: Mapped[datetime]
    wrapped: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    destroyed_at: Mapped[datetime | None]


class WrongMasterKey(CryptoError):
    """The master key does not open the content keys stored in the database."""


class ContentKeyUnavailable(Exception):
    """Content is under a key this process does not hold (created moments ago elsewhere)."""


def key_id_for(now: datetime, period_s: int) -> tuple[str, datetime]:
    """The id of the key that serves `now`, and the start of its period."""
    start = int(now.timestamp()) // period_s * period_s
    return f"ck_{start}", datetime.fromtimestamp(start, now.tzinfo)


class ContentKeyring(SharedKeyring):
    """The content keys this process holds, and the key new content is written under."""

    keys_name = "content keys"
    refresh_s = _REFRESH_S

    def __init__(self, db: Database, box: SecretBox, *, period_s: int) -> None:
        super().__init__(db)
        self._box = box
        self._period_s = period_s
        self._keys: dict[str, AESGCM] = {}
        self._destroyed: set[str] = set()

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def start(cls, db: Database, box: SecretBox, *, period_s: int) -> ContentKeyring:
        """Load the keys, make sure the current and next periods have one, install.

        A process that runs the API and a worker (`amnex dev`) shares one keyring: a second
        start on the same database returns the installed one.
        """
        return await cls._start_or_join(db, lambda: cls(db, box, period_s=period_s))

    @classmethod
    def _installed(cls) -> ContentKeyring | None:
        return _RING

    def _install(self) -> None:
        install(self)

    async def _first_load(self) -> None:
        try:
            await self.refresh()
        except CryptoError as exc:
            # Never write under keys this process cannot open, nor beside them: stop here.
            raise WrongMasterKey(
                "the content keys in the database do not open with this master key: every "
                "API and worker process needs the key the database was set up with "
                "(AMNEX_MASTER_KEY or AMNEX_MASTER_KEY_FILE)"
            ) from exc
        except Exception as exc:
            # The database may be away at start (the API still answers /readyz): content
            # waits, as writes do, until the keys load on the next try.
            log.warning("content keys not loaded yet (%s); retrying", type(exc).__name__)

    def _loaded(self) -> bool:
        return bool(self._keys)

    async def _reload(self) -> None:
        await self.refresh()

    def _uninstall(self) -> None:
        uninstall(self)

    async def refresh(self) -> None:
        now = utc_now()
        for moment in (now, datetime.fromtimestamp(now.timestamp() + self._period_s, now.tzinfo)):
            await self._ensure(moment)
        async with self._db.read_session() as session:
            rows = (await session.execute(select(ContentKey.id, ContentKey.wrapped))).all()
        for key_id, wrapped in rows:
            if wrapped is None:
                self._destroyed.add(key_id)
                self._keys.pop(key_id, None)
            elif key_id not in self._keys:
                self._keys[key_id] = AESGCM(self._unwrap(key_id, wrapped))

    async def _ensure(self, moment: datetime) -> None:
        key_id, start = key_id_for(moment, self._period_s)
        if key_id in self._keys or key_id in self._destroyed:
            return
        wrapped = self._box.seal(base64.b64encode(os.urandom(KEY_BYTES)).decode(), context=key_id)
        # Another process may create it first: the reload that follows loads theirs.
        with contextlib.suppress(IntegrityError):
            async with self._db.unit_of_work() as session:
                existing = await session.get(ContentKey, key_id)
                if existing is None:
                    session.add(
                        ContentKey(
                            id=key_id, period_start=start, wrapped=wrapped, created_at=utc_now()
                        )
                    )
                    record_audit(
                        session,
                        actor="system",
                        action="content_key.create",
                        target_type="content_key",
                        target_id=key_id,
                        detail={"period_start": start.isoformat()},
                    )

    def _unwrap(self, key_id: str, wrapped: str) -> bytes:
        return base64.b64decode(self._box.open(wrapped, context=key_id))

    # --- use ---------------------------------------------------------------------------------

    def forget(self, key_ids: list[str]) -> None:
        """Drop keys destroyed elsewhere in this process (the purge)."""
        for key_id in key_ids:
            self._keys.pop(key_id, None)
            self._destroyed.add(key_id)

    def current_key_id(self) -> str:
        key_id, _ = key_id_for(utc_now(), self._period_s)
        if key_id in self._keys:
            return key_id
        if not self._keys:
            raise ContentKeyUnavailable("no content key is loaded yet (is the database up?)")
        # The period turned and this process has not reloaded yet: the newest key it holds.
        return max(self._keys, key=lambda k: int(k[3:]))

    def encrypt(self, plaintext: str, column: str) -> str:
        key_id = self.current_key_id()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[key_id].encrypt(
            nonce, plaintext.encode(), f"{key_id}|{column}".encode()
        )
        return f"{PREFIX}{key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, column: str) -> str | None:
        try:
            _, key_id, blob = stored.split(":", 2)
        except ValueError:
            return stored
        aead = self._keys.get(key_id)
        if aead is None:
            if key_id in self._destroyed:
                return None  # purged: the key that could read it no longer exists
            raise ContentKeyUnavailable(f"content key {key_id} is not loaded yet")
        try:
            raw = base64.b64decode(blob, validate=True)
            return aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], f"{key_id}|{column}".encode()
            ).decode()
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise ContentKeyUnavailable(f"content under {key_id} does not open") from exc


_RING: ContentKeyring | None = None


def install(ring: ContentKeyring) -> None:
    global _RING
    _RING = ring


def uninstall(ring: ContentKeyring) -> None:
    global _RING
    if _RING is ring:
        _RING = None


def installed() -> ContentKeyring | None:
    return _RING


def key_of(stored: str | None) -> str | None:
    """The id of the content key a stored value is under, or None (clear text, or nothing)."""
    if stored is None or not stored.startswith(PREFIX):
        return None
    return stored.split(":", 2)[1]


class EncryptedText(TypeDecorator[str]):
    """Text stored encrypted under the current content key when a keyring is installed."""

    impl = Text
    cache_ok = True

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        ring = _RING
        if value is None or ring is None:
            return value
        return ring.encrypt(value, self.column)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or not value.startswith(PREFIX):
            return value
        ring = _RING
        if ring is None:
            raise ContentKeyUnavailable("encrypted content, and no master key to read it")
        return ring.decrypt(value, self.column)


async def destroy_spent_keys(db: Database, *, now: datetime, period_s: int) -> list[str]:
    """Destroy every key of a past period under which no message holds content any more.

    Runs in the purge, after content was purged. The current and next periods' keys are
    never destroyed (new content is written under them). Only messages whose content is not
    purged yet are looked at (`ix_messages_unpurged`), and those are the ones in flight or
    kept by an account's retention.
    """
    from amnex.messages.models import Message

    current, _ = key_id_for(now, period_s)
    destroyed: list[str] = []
    async with db.unit_of_work() as session:
        live = (
            await session.scalars(select(ContentKey.id).where(ContentKey.wrapped.is_not(None)))
        ).all()
        for key_id in live:
            if int(key_id[3:]) >= int(current[3:]):
                continue
            pattern = f"{PREFIX}{key_id}:%"
            in_use = await session.scalar(
                select(Message.id)
                .where(
                    Message.content_purged_at.is_(None),
                    # As stored: the pattern must not go through EncryptedText's encryption.
                    or_(
                        *(
                            type_coerce(column, Text).like(pattern)
                            for column in (Message.body, Message.subject, Message.html)
                        )
                    ),
                )
                .limit(1)
            )
            if in_use is None:
                await session.execute(
                    update(ContentKey)
                    .where(ContentKey.id == key_id)
                    .values(wrapped=None, destroyed_at=now)
                )
                record_audit(
                    session,
                    actor="system",
                    action="content_key.destroy",
                    target_type="content_key",
                    target_id=key_id,
                    detail={"reason": "no content left under it"},
                )
                destroyed.append(key_id)
    ring = _RING
    if ring is not None:
        ring.forget(destroyed)
    return destroyed
