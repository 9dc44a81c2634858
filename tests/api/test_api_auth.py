"""Who may call the API: API keys, their scopes and revocation, and operator tokens."""

from __future__ import annotations

import pytest
from api_checks import EMAIL, assert_problem, count_messages

from amnex.accounts import service as accounts
from amnex.config import Settings
from amnex.db.engine import Database
from support import AccountHandle, make_operator, serve_api


async def make_key(db: Database, account_id: str, scopes: list[str]) -> dict[str, str]:
    """Headers carrying a new key of the account with only `scopes`."""
    async with db.unit_of_work() as session:
        _, key = await accounts.create_api_key(
            session, account_id=account_id, name="limited", scopes=scopes, actor="test"
        )
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic-scheme"),
        pytest.param("Bearer", id="bearer-without-token"),
        pytest.param("Token amx_" + "A" * 43, id="wrong-scheme"),
        pytest.param("Bearer amx_" + "A" * 43, id="unknown-key"),
        pytest.param("Bearer sk_live_123", id="not-an-amnex-key"),
    ],
)
async def test_request_without_a_valid_api_key_is_unauthorized(
    settings: Settings, db: Database, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with serve_api(settings, db) as api:
        responses = [
            await api.client.post("/v1/messages", headers=headers, json=EMAIL),
            await api.client.get("/v1/messages", headers=headers),
            await api.client.get("/v1/messages/msg_x", headers=headers),
            await api.client.delete("/v1/messages/msg_x", headers=headers),
        ]
    for response in responses:
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == 'Bearer realm="amnex"'
    assert await count_messages(db) == 0


async def test_credentials_are_checked_before_the_body_is_validated(
    settings: Settings, db: Database
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post("/v1/messages", json={"channel": "fax"})
    assert_problem(response, 401, "unauthorized")


async def test_revoked_key_stops_working_at_once(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    operator = {"Authorization": f"Bearer {await make_operator(db)}"}
    async with serve_api(settings, db) as api:
        # Given a key that was just used, so this process has it cached
        used = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
        assert used.status_code == 201, used.text
        keys = await api.client.get(
            f"/admin/v1/accounts/{account.account_id}/keys", headers=operator
        )
        (key,) = keys.json()["data"]

        # When an operator revokes it
        revoked = await api.client.delete(
            f"/admin/v1/accounts/{account.account_id}/keys/{key['id']}", headers=operator
        )
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None

        # Then the very next request with it is refused, for reading and for sending
        read = await api.client.get("/v1/messages", headers=account.headers)
        send = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
    for response in (read, send):
        problem = assert_problem(response, 401, "unauthorized")
        assert "revoked" in problem["detail"]
        assert response.headers["www-authenticate"] == 'Bearer realm="amnex"'
    assert await count_messages(db) == 1


async def test_key_without_send_scope_cannot_send_but_can_read(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    read_only = await make_key(db, account.account_id, ["read"])
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=read_only, json=EMAIL)
        listed = await api.client.get("/v1/messages", headers=read_only)
    problem = assert_problem(sent, 403, "forbidden")
    assert "send" in problem["detail"]
    assert listed.status_code == 200
    assert await count_messages(db) == 0


async def test_key_without_read_scope_cannot_read_or_list(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    send_only = await make_key(db, account.account_id, ["send"])
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=send_only, json=EMAIL)
        assert sent.status_code == 201, sent.text
        message_id = sent.json()["id"]
        responses = [
            await api.client.get(f"/v1/messages/{message_id}", headers=send_only),
            await api.client.get(f"/v1/messages/{message_id}/events", headers=send_only),
            await api.client.get("/v1/messages", headers=send_only),
        ]
        # Canceling is part of sending.
        canceled = await api.client.delete(f"/v1/messages/{message_id}", headers=send_only)
    for response in responses:
        assert "read" in assert_problem(response, 403, "forbidden")["detail"]
    assert canceled.status_code == 200, canceled.text


async def test_operator_token_is_not_an_api_key(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    operator = {"Authorization": f"Bearer {await make_operator(db)}"}
    async with serve_api(settings, db) as api:
        listed = await api.client.get("/v1/messages", headers=operator)
        sent = await api.client.post("/v1/messages", headers=operator, json=EMAIL)
    assert_problem(listed, 401, "unauthorized")
    assert_problem(sent, 401, "unauthorized")
    assert await count_messages(db) == 0


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("api-key", id="api-key"),
        pytest.param("Bearer amxop_" + "A" * 43, id="unknown-operator-token"),
    ],
)
async def test_admin_api_needs_an_operator_token(
    settings: Settings, db: Database, account: AccountHandle, authorization: str | None
) -> None:
    if authorization == "api-key":
        authorization = account.headers["Authorization"]
    headers = {"Authorization": authorization} if authorization else {}
    async with serve_api(settings, db) as api:
        listed = await api.client.get("/admin/v1/accounts", headers=headers)
        created = await api.client.post(
            "/admin/v1/accounts",
            headers=headers,
            json={"business_name": "Other", "contact_name": "Kim", "email": "kim@other.example"},
        )
    for response in (listed, created):
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == 'Bearer realm="amnex"'


async def test_unknown_route_and_method_are_problems_too(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        missing = await api.client.get("/v1/nothing-here", headers=account.headers)
        wrong_method = await api.client.put("/v1/messages", headers=account.headers, json=EMAIL)
    assert_problem(missing, 404, "not_found")
    assert_problem(wrong_method, 405, "method_not_allowed")
