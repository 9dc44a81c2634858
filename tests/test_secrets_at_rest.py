"""Credentials and idempotency keys are kept only as hashes; failures are logged without data."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import make_url, select

from amnex.accounts.models import ApiKey, Operator
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.models import IdempotencyRecord
from amnex.privacy.logsafe import failure_summary
from support import AccountHandle, make_operator, serve_api


async def test_keys_tokens_and_idempotency_keys_are_stored_only_as_hashes(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    token = await make_operator(db)
    idempotency_key = "order-7731-confirmation"
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers={**account.headers, "Idempotency-Key": idempotency_key},
            json={"channel": "email", "to": "a@example.com", "subject": "s", "body": "b"},
        )
    assert response.status_code == 201

    async with db.read_session() as session:
        stored = [
            *(await session.scalars(select(ApiKey.key_hash))),
            *(await session.scalars(select(Operator.token_hash))),
            *(await session.scalars(select(IdempotencyRecord.key_hash))),
        ]
    assert len(stored) == 3
    for secret in (account.api_key, token, idempotency_key):
        assert all(secret not in value for value in stored)
    if db.is_sqlite:
        # Nowhere in the database file or its write-ahead log either.
        path = Path(str(make_url(db.url).database))
        raw = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
        for secret in (account.api_key, token, idempotency_key):
            assert secret.encode() not in raw


def test_a_failure_summary_names_the_error_and_place_but_not_the_data() -> None:
    def encode(body: str) -> None:
        raise ValueError(f"invalid input for query argument $12: {body!r}")

    try:
        encode("your one-time code is 482913")
    except ValueError as exc:
        summary = failure_summary(exc)
    assert summary.startswith("ValueError at test_secrets_at_rest.py:")
    assert "in encode" in summary
    assert "482913" not in summary
