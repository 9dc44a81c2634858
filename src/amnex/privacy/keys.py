"""Privacy: per-account data keys that seal addresses, and the platform blind-index key.

Design note.

- Every account has one *data key* (`data_keys`, id `ak:<account id>`), random, stored only
  wrapped by the master key (`SecretBox`, bound to its id). The platform's own rows (the
  platform-wide suppression list, operators' subject requests) use `ak:platform`. A recipient
  address is stored sealed under its account's key with AES-256-GCM: `amxa1:<key id>:<base64
  (nonce ‖ ciphertext ‖ tag)>`, the key id bound as associated data, so a value read back
  names the key that opens it and needs no other context. Closing an account destroys its key
  (the wrapped key is deleted, the row stays): every copy of its addresses — in the table, in
  old pages, in backups — becomes unreadable at once.
- Equality look-ups (the suppression list, consent, first contact, search by recipient,
  subject requests) never compare plaintext: they compare a *blind index*, HMAC-SHA256 of the
  normalised address (`index_form`) under one platform index key (`ik:platform`), also
  random and wrapped. One key for every account is what lets a platform-wide opt-out stop
  every account's messages and an operator's subject request find a person everywhere. The
  index is the first 24 bytes of the MAC, base64url (32 characters).
- A process installs one keyring at start (`AddressKeyring.start`, shared like the content
  keyring): the index key and every live data key are unwrapped into memory. `seal` is
  synchronous (it runs in the accept path's batch building); callers that may meet an account
  created moments ago by another process `await prepare(account_ids)` first, which loads or
  creates the missing keys.
- Without a master key (allowed for trying Amnex, reported by `amnex privacy report`) no
  keyring is installed: addresses are stored as they are and the index is an unkeyed
  HMAC-SHA256. A database started that way keeps working that way; the index key row records
  which mode it was set up in, and a keyed process refuses an unkeyed database (and the other
  way round) with a clear message rather than writing index values that would never match.
- Key providers. Wrapping is `SecretBox.seal` / `open` under the master key; `KeyWrapper` is
  the two methods a KMS-backed provider has to offer instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import LargeBinary, String, Text, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from amnex.clock import utc_now
from amnex.db.base import Base
from amnex.db.engine import Database
from amnex.errors import KeysUnavailable
from amnex.privacy.crypto import KEY_BYTES, NONCE_BYTES, CryptoError
from amnex.privacy.keyring import SharedKeyring

log = logging.getLogger(__name__)

PREFIX = "amxa1:"
_BYTES_PREFIX = PREFIX.encode()
PLATFORM = "platform"
INDEX_KEY_ID = "ik:platform"
# The index key row's `wrapped` in a database set up without a master key.
UNKEYED = "unkeyed"
_UNKEYED_INDEX_KEY = b"amnex unkeyed blind index"
_INDEX_BYTES = 24
_REFRESH_S = 30.0


class DataKey(Base):
    """A data key (`ak:<account>`) or the index key (`ik:platform`), wrapped by the master key;
    `wrapped` is None once destroyed (the account was closed)."""

    __tablename__ = "data_keys"

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(String(40), index=True)
    purpose: Mapped[str] = mapped_column(String(8))  # "address" or "index"
    wrapped: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    destroyed_at: Mapped[datetime | None]


class KeyWrapper(Protocol):
    """What wraps keys: the master key's `SecretBox`, or a KMS client offering the same."""

    @property
    def available(self) -> bool: ...

    def seal(self, plaintext: str, *, context: str) -> str: ...

    def open(self, sealed: str, *, context: str) -> str: ...


class AddressKeyUnavailable(KeysUnavailable):
    """An address is under a key this process cannot use (not loaded yet, or destroyed); the
    API answers 503 `keys_unavailable`."""


class IndexModeMismatch(CryptoError):
    """The database's blind index was set up with a master key and this process has none
    (or the other way round)."""


def data_key_id(account_id: str | None) -> str:
    return f"ak:{account_id or PLATFORM}"


def index_form(address: str) -> str:
    """The form an address is indexed in: an email address case-folded, a phone number as
    stored (E.164 from the gate); surrounding spaces never count."""
    address = address.strip()
    return address.casefold() if "@" in address else address


def _mac(key: bytes, address: str) -> str:
    digest = hmac.new(key, index_form(address).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:_INDEX_BYTES]).decode()


class AddressKeyring(SharedKeyring):
    """The data keys and the index key this process holds."""

    keys_name = "address keys"
    refresh_s = _REFRESH_S

    def __init__(self, db: Database, box: KeyWrapper) -> None:
        super().__init__(db)
        self._box = box
        self._index_key = b""
        self._ready = False
        self._keys: dict[str, AESGCM] = {}
        self._destroyed: set[str] = set()
        self._lock = asyncio.Lock()

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def start(cls, db: Database, box: KeyWrapper) -> AddressKeyring:
        """Load (or create) the index key and every data key, then install the ring.

        A wrong master key stops the process (`WrongMasterKey`); a database that is away only
        delays the keys (retried every second; until then sealing answers 503).
        """
        return await cls._start_or_join(db, lambda: cls(db, box))

    @classmethod
    def _installed(cls) -> AddressKeyring | None:
        return _RING

    def _install(self) -> None:
        install(self)

    async def _first_load(self) -> None:
        from amnex.privacy.content import WrongMasterKey

        try:
            await self._load()
        except (IndexModeMismatch, WrongMasterKey):
            raise
        except Exception as exc:
            # The database may be away at start (the API still answers /readyz): whatever
            # needs an address answers 503 `keys_unavailable` until the keys load.
            log.warning("address keys not loaded yet (%s); retrying", type(exc).__name__)

    @classmethod
    async def opened(cls, db: Database, box: KeyWrapper) -> AddressKeyring:
        """A keyring loaded from the database but not installed: to check that a master key
        opens the keys (raises `WrongMasterKey`), or to use them in a command."""
        ring = cls(db, box)
        await ring._load(backfill=False)
        return ring

    async def _load(self, *, backfill: bool = True) -> None:
        from amnex.privacy.backfill import seal_existing
        from amnex.privacy.content import WrongMasterKey

        try:
            await self._load_index_key()
            await self.refresh()
            await self.prepare([None])  # the platform's own key
        except IndexModeMismatch:
            raise
        except CryptoError as exc:
            raise WrongMasterKey(
                "the address keys in the database do not open with this master key: every "
                "API and worker process needs the key the database was set up with "
                "(AMNEX_MASTER_KEY or AMNEX_MASTER_KEY_FILE)"
            ) from exc
        self._ready = True
        if backfill:
            await seal_existing(self._db)

    def _loaded(self) -> bool:
        return self._ready

    async def _reload(self) -> None:
        await (self.refresh() if self._ready else self._load())

    def _uninstall(self) -> None:
        uninstall(self)

    async def _load_index_key(self) -> None:
        async with self._db.read_session() as session:
            wrapped = await session.scalar(
                select(DataKey.wrapped).where(DataKey.id == INDEX_KEY_ID)
            )
        if wrapped is None:
            await _create_key(
                self._db,
                INDEX_KEY_ID,
                None,
                "index",
                self._box.seal(_new_key_text(), context=INDEX_KEY_ID),
            )
            async with self._db.read_session() as session:
                wrapped = await session.scalar(
                    select(DataKey.wrapped).where(DataKey.id == INDEX_KEY_ID)
                )
        if wrapped is None:
            raise CryptoError("the index key could not be created")
        if wrapped == UNKEYED:
            raise IndexModeMismatch(
                "this database was set up without a master key: its blind index is unkeyed, "
                "and a process with a master key would write index values that never match. "
                "Run it without AMNEX_MASTER_KEY, or start from a new database with the key"
            )
        self._index_key = base64.b64decode(self._box.open(wrapped, context=INDEX_KEY_ID))

    async def refresh(self) -> None:
        async with self._db.read_session() as session:
            rows = (
                await session.execute(
                    select(DataKey.id, DataKey.wrapped).where(DataKey.purpose == "address")
                )
            ).all()
        for key_id, wrapped in rows:
            self._take(key_id, wrapped)

    def _take(self, key_id: str, wrapped: str | None) -> None:
        if wrapped is None:
            self._destroyed.add(key_id)
            self._keys.pop(key_id, None)
        elif key_id not in self._keys:
            self._keys[key_id] = AESGCM(base64.b64decode(self._box.open(wrapped, context=key_id)))

    async def prepare(self, account_ids: Iterable[str | None], *, create: bool = True) -> None:
        """Make sure the data keys of `account_ids` are loaded: read, or (`create`) created
        if missing. Readers pass `create=False`: what they read was sealed under a key that
        exists, and they may hold a write transaction a creation would wait behind."""
        missing = {data_key_id(a) for a in account_ids} - self._keys.keys() - self._destroyed
        if not missing:
            return
        async with self._lock:
            missing -= self._keys.keys()
            if not missing:
                return
            async with self._db.read_session() as session:
                rows = (
                    await session.execute(
                        select(DataKey.id, DataKey.wrapped).where(DataKey.id.in_(missing))
                    )
                ).all()
            for key_id, wrapped in rows:
                self._take(key_id, wrapped)
                missing.discard(key_id)
            if not create:
                return
            for key_id in sorted(missing):
                account = key_id.removeprefix("ak:")
                await _create_key(
                    self._db,
                    key_id,
                    None if account == PLATFORM else account,
                    "address",
                    self._box.seal(_new_key_text(), context=key_id),
                )
            if missing:
                await self.refresh()

    def forget(self, key_id: str) -> None:
        """Drop a key destroyed by this process (account closure)."""
        self._keys.pop(key_id, None)
        self._destroyed.add(key_id)

    # --- use ---------------------------------------------------------------------------------

    def blind_index(self, address: str) -> str:
        if not self._index_key:
            raise AddressKeyUnavailable("the blind index key is not loaded yet")
        return _mac(self._index_key, address)

    def seal(self, account_id: str | None, address: str) -> str:
        key_id = data_key_id(account_id)
        aead = self._keys.get(key_id)
        if aead is None:
            raise AddressKeyUnavailable(f"data key {key_id} is not loaded (call prepare first)")
        nonce = os.urandom(NONCE_BYTES)
        sealed = aead.encrypt(nonce, address.encode(), key_id.encode())
        return f"{PREFIX}{key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, stored: str) -> str | None:
        key_id, blob = _split(stored)
        aead = self._keys.get(key_id)
        if aead is None:
            if key_id in self._destroyed:
                return None  # the account was closed: its addresses are gone
            raise AddressKeyUnavailable(f"data key {key_id} is not loaded")
        try:
            raw = base64.b64decode(blob, validate=True)
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], key_id.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise AddressKeyUnavailable(f"an address under {key_id} does not open") from exc

    def seal_bytes(self, data: bytes) -> bytes:
        key_id = data_key_id(None)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[key_id].encrypt(nonce, data, key_id.encode())
        return _BYTES_PREFIX + key_id.encode() + b":" + nonce + sealed

    def open_bytes(self, stored: bytes) -> bytes:
        rest = stored[len(_BYTES_PREFIX) :]
        key_end = rest.index(b":", rest.index(b":") + 1)
        key_id, raw = rest[:key_end].decode(), rest[key_end + 1 :]
        aead = self._keys.get(key_id)
        if aead is None:
            raise AddressKeyUnavailable(f"data key {key_id} is not loaded")
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], key_id.encode())
        except InvalidTag as exc:
            raise AddressKeyUnavailable(f"data under {key_id} does not open") from exc

    async def open_async(self, stored: str) -> str | None:
        """`open`, loading the key first when another process created it moments ago."""
        key_id, _ = _split(stored)
        if key_id not in self._keys and key_id not in self._destroyed:
            await self.refresh()
        return self.open(stored)


def _split(stored: str) -> tuple[str, str]:
    key_id, colon, blob = stored.removeprefix(PREFIX).rpartition(":")
    if not colon or not key_id:
        raise AddressKeyUnavailable("not a sealed address")
    return key_id, blob


def _new_key_text() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


async def _create_key(
    db: Database, key_id: str, account_id: str | None, purpose: str, wrapped: str
) -> None:
    # The audit log's own columns use this module: imported here.
    from amnex.privacy.audit import PLATFORM_CHAIN, record_audit

    # Another process may create it first: the read that follows loads theirs.
    with contextlib.suppress(IntegrityError):
        async with db.unit_of_work() as session:
            if await session.get(DataKey, key_id) is None:
                session.add(
                    DataKey(
                        id=key_id,
                        account_id=account_id,
                        purpose=purpose,
                        wrapped=wrapped,
                        created_at=utc_now(),
                    )
                )
                if wrapped != UNKEYED:
                    record_audit(
                        session,
                        actor="system",
                        action="data_key.create",
                        target_type="data_key",
                        target_id=key_id,
                        detail={"purpose": purpose, "account_id": account_id},
                        chain=PLATFORM_CHAIN,
                    )


def add_account_key(session: AsyncSession, account_id: str) -> None:
    """Create a new account's data key in the caller's transaction (with the account): it
    exists from the account's first moment, so no later transaction has to create one. The
    account's own `account.create` audit entry, in the same transaction, records it."""
    ring = _RING
    if ring is None:
        return
    key_id = data_key_id(account_id)
    key_text = _new_key_text()
    session.add(
        DataKey(
            id=key_id,
            account_id=account_id,
            purpose="address",
            wrapped=ring._box.seal(key_text, context=key_id),
            created_at=utc_now(),
        )
    )
    # Usable at once, in this transaction too. Should it roll back, the account goes with it
    # and account ids are never reused, so the key in memory can seal nothing that stays.
    ring._keys[key_id] = AESGCM(base64.b64decode(key_text))


async def mark_unkeyed(db: Database) -> None:
    """Record that this database's index is unkeyed (a process without a master key), or
    refuse when it was set up with one."""
    async with db.read_session() as session:
        wrapped = await session.scalar(select(DataKey.wrapped).where(DataKey.id == INDEX_KEY_ID))
    if wrapped is None:
        await _create_key(db, INDEX_KEY_ID, None, "index", UNKEYED)
        async with db.read_session() as session:
            wrapped = await session.scalar(
                select(DataKey.wrapped).where(DataKey.id == INDEX_KEY_ID)
            )
    if wrapped != UNKEYED:
        raise IndexModeMismatch(
            "this database was set up with a master key: set AMNEX_MASTER_KEY (or "
            "AMNEX_MASTER_KEY_FILE) to that key; without it no address can be read or matched"
        )


async def destroy_account_key(session: AsyncSession, account_id: str, *, now: datetime) -> bool:
    """Destroy an account's data key in the caller's transaction (account closure)."""
    from amnex.privacy.audit import PLATFORM_CHAIN, record_audit

    key_id = data_key_id(account_id)
    result = await session.execute(
        update(DataKey)
        .where(DataKey.id == key_id, DataKey.wrapped.is_not(None))
        .values(wrapped=None, destroyed_at=now)
    )
    destroyed = bool(getattr(result, "rowcount", 0))
    if destroyed:
        record_audit(
            session,
            actor="system",
            action="data_key.destroy",
            target_type="data_key",
            target_id=key_id,
            detail={"reason": "account closed", "account_id": account_id},
            chain=PLATFORM_CHAIN,
        )
    return destroyed


# --- the installed keyring, and what the rest of the code calls ------------------------------

_RING: AddressKeyring | None = None


def install(ring: AddressKeyring) -> None:
    global _RING
    _RING = ring


def uninstall(ring: AddressKeyring) -> None:
    global _RING
    if _RING is ring:
        _RING = None


def installed() -> AddressKeyring | None:
    return _RING


def blind_index(address: str) -> str:
    """The blind index of `address` (see `index_form`)."""
    ring = _RING
    return _mac(_UNKEYED_INDEX_KEY, address) if ring is None else ring.blind_index(address)


def seal_address(account_id: str | None, address: str) -> str:
    """`address` as stored for `account_id` (None: the platform): sealed, or as it is
    without a master key."""
    ring = _RING
    return address if ring is None else ring.seal(account_id, address)


def open_address(stored: str | None) -> str | None:
    """A stored address in clear; None when it was erased or its account's key destroyed."""
    if stored is None or not stored.startswith(PREFIX):
        return stored
    ring = _RING
    if ring is None:
        raise AddressKeyUnavailable("a sealed address, and no master key to read it")
    return ring.open(stored)


def forget_account_key(account_id: str) -> None:
    """After a closure committed: this process drops the destroyed key at once (others do at
    their next reload)."""
    ring = _RING
    if ring is not None:
        ring.forget(data_key_id(account_id))


async def prepare_keys(account_ids: Iterable[str | None]) -> None:
    """Before sealing for `account_ids`: their data keys loaded, created where missing."""
    ring = _RING
    if ring is not None:
        await ring.prepare(account_ids)


async def load_keys(account_ids: Iterable[str | None]) -> None:
    """Before opening addresses of `account_ids`: their data keys loaded (never created)."""
    ring = _RING
    if ring is not None:
        await ring.prepare(account_ids, create=False)


# --- columns sealed under the platform key ---------------------------------------------------


class SealedText(TypeDecorator[str]):
    """Personal text sealed under the platform data key when a keyring is installed (audit
    entries' personal fields, an open subject request's address). Transparent to callers."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        ring = _RING
        if value is None or ring is None or value.startswith(PREFIX):
            return value
        return ring.seal(None, value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return open_address(value)


class SealedJSON(TypeDecorator[Any]):
    """A JSON value (opt-out and consent evidence, personal audit detail) sealed under the
    platform data key when a keyring is installed; stored as text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        text_value = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
        ring = _RING
        return text_value if ring is None else ring.seal(None, text_value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        opened = open_address(value)
        return None if opened is None else json.loads(opened)


class SealedBytes(TypeDecorator[bytes]):
    """Bytes (a subject request's export) sealed under the platform data key."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        ring = _RING
        if value is None or ring is None:
            return value
        return ring.seal_bytes(value)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        if value is None or not value.startswith(_BYTES_PREFIX):
            return value
        ring = _RING
        if ring is None:
            raise AddressKeyUnavailable("sealed data, and no master key to read it")
        return ring.open_bytes(value)


async def start_address_keys(db: Database, box: KeyWrapper) -> AddressKeyring | None:
    """A process's address keyring when it has a master key; without one, the database is
    marked unkeyed (or refused, if it was set up with a key) and the indexes of rows written
    before migration 0009 are filled."""
    if box.available:
        return await AddressKeyring.start(db, box)
    from amnex.privacy.backfill import seal_existing

    try:
        await mark_unkeyed(db)
        await seal_existing(db)
    except IndexModeMismatch:
        raise
    except Exception as exc:  # the database is away: checked again at the next start
        log.warning("could not check the database's index mode (%s)", type(exc).__name__)
    return None
