"""`/v1/api-keys`: an account manages its own keys with the `manage` scope, and only its own."""

from __future__ import annotations

from api_checks import assert_problem

from amnex.config import Settings
from amnex.db.engine import Database
from support import AccountHandle, make_account, serve_api


async def test_a_manage_key_creates_lists_and_revokes_its_accounts_keys(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        created = await api.client.post(
            "/v1/api-keys",
            headers=account.headers,
            json={"name": "reporting", "scopes": ["read"]},
        )
        assert created.status_code == 201, created.text
        new = created.json()
        reader = {"Authorization": f"Bearer {new['key']}"}
        can_read = await api.client.get("/v1/messages", headers=reader)
        cannot_send = await api.client.post(
            "/v1/messages",
            headers=reader,
            json={"channel": "email", "to": "a@example.com", "subject": "s", "body": "b"},
        )
        cannot_manage = await api.client.get("/v1/api-keys", headers=reader)
        listed = await api.client.get("/v1/api-keys", headers=account.headers)
        revoked = await api.client.delete(f"/v1/api-keys/{new['id']}", headers=account.headers)
        after = await api.client.get("/v1/messages", headers=reader)

    assert new["key"].startswith("amx_")
    assert new["scopes"] == ["read"]
    assert can_read.status_code == 200
    assert_problem(cannot_send, 403, "forbidden")
    assert_problem(cannot_manage, 403, "forbidden")
    assert {k["name"] for k in listed.json()["data"]} == {"default", "reporting"}
    assert new["key"] not in listed.text
    assert revoked.json()["revoked_at"] is not None
    assert_problem(after, 401, "unauthorized")


async def test_another_accounts_key_cannot_be_revoked(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other Shop")
    async with serve_api(settings, db) as api:
        theirs = (await api.client.get("/v1/api-keys", headers=other.headers)).json()["data"]
        response = await api.client.delete(
            f"/v1/api-keys/{theirs[0]['id']}", headers=account.headers
        )
        still = await api.client.get("/v1/messages", headers=other.headers)
    assert_problem(response, 404, "not_found")
    assert still.status_code == 200
