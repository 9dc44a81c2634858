"""Messages: Idempotency-Key handling — the same key and body give the same response.

Only hashes are stored: the key's SHA-256 and the request body's, plus the id created.
A replay renders the message as it is now (a client retrying learns its current status).
Keys are scoped to the account and kept `idempotency_ttl_s` (24 h).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from amnex.db.engine import Database
from amnex.errors import InvalidRequest
from amnex.messages.models import IdempotencyRecord

KEY_MAX_LENGTH = 255


def hash_idempotency_key(key: str) -> str:
    if not key or len(key) > KEY_MAX_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key: 1 to {KEY_MAX_LENGTH} printable characters",
            field="Idempotency-Key",
        )
    return hashlib.sha256(key.encode()).hexdigest()


def hash_request(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_row(
    *,
    account_id: str,
    key_hash: str,
    request_hash: str,
    resource_id: str,
    status_code: int,
    now: datetime,
    ttl_s: int,
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "key_hash": key_hash,
        "request_hash": request_hash,
        "resource_id": resource_id,
        "status_code": status_code,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_s),
    }


async def find_idempotency_record(
    db: Database, account_id: str, key_hash: str, *, now: datetime
) -> IdempotencyRecord | None:
    """The live record for this key, if any. An expired one is deleted so the key is free."""
    async with db.read_session() as session:
        record = await session.get(IdempotencyRecord, (account_id, key_hash))
    if record is None:
        return None
    if record.expires_at > now:
        return record
    async with db.unit_of_work() as session:
        await session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.account_id == account_id,
                IdempotencyRecord.key_hash == key_hash,
                IdempotencyRecord.expires_at <= now,
            )
        )
    return None


async def purge_expired_idempotency_keys(db: Database, *, now: datetime, chunk: int = 1000) -> int:
    """Delete expired keys in chunks, one transaction per chunk."""
    total = 0
    while True:
        async with db.unit_of_work() as session:
            keys = (
                await session.execute(
                    select(IdempotencyRecord.account_id, IdempotencyRecord.key_hash)
                    .where(IdempotencyRecord.expires_at <= now)
                    .limit(chunk)
                )
            ).all()
            for account_id, key_hash in keys:
                await session.execute(
                    delete(IdempotencyRecord).where(
                        IdempotencyRecord.account_id == account_id,
                        IdempotencyRecord.key_hash == key_hash,
                    )
                )
        total += len(keys)
        if len(keys) < chunk:
            return total
