"""`/admin/v1`: named operators manage accounts, keys and senders; every action is audited."""

from __future__ import annotations

from typing import Any

import pytest
from api_checks import EMAIL, assert_problem, error_fields
from sqlalchemy import select

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.privacy.audit import AuditEntry
from support import AccountHandle, eventually, make_operator, serve_api

OPERATOR = "Dana Ops"
ACTOR = f"operator:{OPERATOR}"


@pytest.fixture
async def operator(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_operator(db, name=OPERATOR)}"}


async def audit_trail(db: Database, actor: str = ACTOR) -> list[tuple[str, str]]:
    """(action, target id) of every audit row by `actor`, oldest first."""
    async with db.read_session() as session:
        rows = await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.actor == actor)
            .order_by(AuditEntry.at, AuditEntry.id)
        )
        return [(row.action, row.target_id) for row in rows]


async def test_operator_creates_an_account_and_its_first_key_is_shown_once(
    settings: Settings, db: Database, operator: dict[str, str]
) -> None:
    async with serve_api(settings, db) as api:
        created = await api.client.post(
            "/admin/v1/accounts",
            headers=operator,
            json={
                "business_name": "Bakery Example",
                "contact_name": "Robin Baker",
                "email": "robin@bakery.example",
                "phone": "+13125550123",
                "rate_limit_per_s": 50,
            },
        )
        assert created.status_code == 201, created.text
        account = created.json()
        key = account["api_key"]
        # Reading contact data needs a reason (X-Amnex-Reason), kept in the audit entry.
        reading = {**operator, "X-Amnex-Reason": "onboarding check"}
        fetched = await api.client.get(f"/admin/v1/accounts/{account['id']}", headers=reading)
        keys = await api.client.get(f"/admin/v1/accounts/{account['id']}/keys", headers=operator)
        listed = await api.client.get("/admin/v1/accounts", headers=reading)
        # The key works at once (reading needs no sender).
        used = await api.client.get(
            "/v1/messages", headers={"Authorization": f"Bearer {key['key']}"}
        )

    assert account["id"].startswith("acc_")
    assert account["status"] == "active"
    assert account["settings"] == {"rate_limit_per_s": 50}
    assert key["key"].startswith("amx_")
    assert key["prefix"] == key["key"][: len(key["prefix"])]
    assert sorted(key["scopes"]) == ["manage", "read", "send"]
    # Shown once: never again in any answer.
    for response in (fetched, keys, listed):
        assert response.status_code == 200
        assert key["key"] not in response.text
    assert [k["id"] for k in keys.json()["data"]] == [key["id"]]
    assert account["id"] in [a["id"] for a in listed.json()["data"]]
    assert used.status_code == 200, used.text
    assert used.headers["ratelimit-limit"] == "50"
    # Reading an account's contact details is audited like a change; key lists are not.
    assert await audit_trail(db) == [
        ("account.create", account["id"]),
        ("api_key.create", key["id"]),
        ("account.read", account["id"]),
        ("account.list", "*"),
    ]


async def test_operator_creates_lists_and_revokes_keys_and_each_action_is_audited(
    settings: Settings, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    keys_path = f"/admin/v1/accounts/{account.account_id}/keys"
    async with serve_api(settings, db) as api:
        created = await api.client.post(
            keys_path, headers=operator, json={"name": "reporting", "scopes": ["read"]}
        )
        assert created.status_code == 201, created.text
        key = created.json()
        reporting = {"Authorization": f"Bearer {key['key']}"}
        can_read = await api.client.get("/v1/messages", headers=reporting)
        cannot_send = await api.client.post("/v1/messages", headers=reporting, json=EMAIL)

        async def reporting_key() -> dict[str, Any]:
            listing = (await api.client.get(keys_path, headers=operator)).json()["data"]
            found: dict[str, Any] = next(k for k in listing if k["id"] == key["id"])
            return found

        # Use is recorded off the request path.
        await eventually(reporting_key, lambda k: k["last_used_at"] is not None)

        listed = await api.client.get(keys_path, headers=operator)
        revoked = await api.client.delete(f"{keys_path}/{key['id']}", headers=operator)
        # Revoking twice is harmless and not audited twice.
        again = await api.client.delete(f"{keys_path}/{key['id']}", headers=operator)
        after = await api.client.get("/v1/messages", headers=reporting)
        relisted = await api.client.get(keys_path, headers=operator)

    assert key["key"].startswith("amx_")
    assert key["scopes"] == ["read"]
    assert key["name"] == "reporting"
    assert can_read.status_code == 200
    assert_problem(cannot_send, 403, "forbidden")
    assert [k["name"] for k in listed.json()["data"]] == ["default", "reporting"]
    assert all("key" not in k for k in listed.json()["data"])
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert_problem(after, 401, "unauthorized")
    by_name = {k["name"]: k for k in relisted.json()["data"]}
    assert by_name["reporting"]["revoked_at"] is not None
    assert by_name["default"]["revoked_at"] is None
    assert await audit_trail(db) == [
        ("api_key.create", key["id"]),
        ("api_key.revoke", key["id"]),
    ]


async def test_operator_manages_senders_and_changes_apply_to_the_next_request(
    settings: Settings, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    senders_path = f"/admin/v1/accounts/{account.account_id}/senders"
    from_brand = {**EMAIL, "from": "hello@brand.example"}
    async with serve_api(settings, db) as api:
        before = await api.client.post("/v1/messages", headers=account.headers, json=from_brand)

        # When the operator verifies a whole domain for the account
        added = await api.client.post(
            senders_path, headers=operator, json={"channel": "email", "address": "@Brand.Example"}
        )
        assert added.status_code == 201, added.text
        sender = added.json()
        allowed = await api.client.post("/v1/messages", headers=account.headers, json=from_brand)
        duplicate = await api.client.post(
            senders_path, headers=operator, json={"channel": "email", "address": "@brand.example"}
        )

        # And makes a new address the default
        default = await api.client.post(
            senders_path,
            headers=operator,
            json={"channel": "email", "address": "orders@shop.example", "is_default": True},
        )
        defaulted = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
        listed = await api.client.get(senders_path, headers=operator)

        # And then removes the domain again
        deleted = await api.client.delete(f"{senders_path}/{sender['id']}", headers=operator)
        after = await api.client.post("/v1/messages", headers=account.headers, json=from_brand)
        deleted_again = await api.client.delete(f"{senders_path}/{sender['id']}", headers=operator)

    assert_problem(before, 422, "sender_not_allowed")
    assert sender["address"] == "@brand.example"
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["from"] == "hello@brand.example"
    assert_problem(duplicate, 409, "conflict")
    assert default.status_code == 201, default.text
    assert defaulted.json()["from"] == "orders@shop.example"
    senders = {s["address"]: s for s in listed.json()["data"] if s["channel"] == "email"}
    assert set(senders) == {"news@shop.example", "@brand.example", "orders@shop.example"}
    assert [a for a, s in senders.items() if s["is_default"]] == ["orders@shop.example"]
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(after, 422, "sender_not_allowed")
    assert_problem(deleted_again, 404, "not_found")
    assert await audit_trail(db) == [
        ("sender.create", sender["id"]),
        ("sender.create", default.json()["id"]),
        ("sender.delete", sender["id"]),
    ]


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        pytest.param("GET", "", None, id="get-account"),
        pytest.param("POST", "/keys", {"name": "k"}, id="create-key"),
        pytest.param("GET", "/keys", None, id="list-keys"),
        pytest.param("DELETE", f"/keys/{new_id('key')}", None, id="revoke-key"),
        pytest.param(
            "POST", "/senders", {"channel": "email", "address": "a@b.example"}, id="add-sender"
        ),
        pytest.param("GET", "/senders", None, id="list-senders"),
        pytest.param("DELETE", f"/senders/{new_id('snd')}", None, id="delete-sender"),
    ],
)
async def test_admin_action_on_an_unknown_account_is_not_found(
    settings: Settings,
    db: Database,
    operator: dict[str, str],
    method: str,
    suffix: str,
    body: dict[str, str] | None,
) -> None:
    path = f"/admin/v1/accounts/{new_id('acc')}{suffix}"
    async with serve_api(settings, db) as api:
        # With a reason, as reading the account needs one (the other actions ignore it).
        headers = {**operator, "X-Amnex-Reason": "support ticket"}
        response = await api.client.request(method, path, headers=headers, json=body)
    assert_problem(response, 404, "not_found")
    assert await audit_trail(db) == []


async def test_key_of_one_account_cannot_be_revoked_through_another(
    settings: Settings, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    async with serve_api(settings, db) as api:
        other = await api.client.post(
            "/admin/v1/accounts",
            headers=operator,
            json={"business_name": "Other", "contact_name": "Kim", "email": "kim@other.example"},
        )
        their_key = other.json()["api_key"]
        response = await api.client.delete(
            f"/admin/v1/accounts/{account.account_id}/keys/{their_key['id']}", headers=operator
        )
        still = await api.client.get(
            "/v1/messages", headers={"Authorization": f"Bearer {their_key['key']}"}
        )
    assert_problem(response, 404, "not_found")
    assert still.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        pytest.param(
            "/admin/v1/accounts",
            {"business_name": "X", "contact_name": "Y", "email": "not-an-email"},
            "email",
            id="account-email",
        ),
        pytest.param(
            "/admin/v1/accounts",
            {"business_name": "X", "contact_name": "Y", "email": "y@x.example", "plan": "gold"},
            "plan",
            id="account-unknown-field",
        ),
        pytest.param(
            "/admin/v1/accounts/{account}/keys",
            {"name": "k", "scopes": ["admin"]},
            "scopes.0",
            id="key-unknown-scope",
        ),
        pytest.param(
            "/admin/v1/accounts/{account}/senders",
            {"channel": "fax", "address": "a@b.example"},
            "channel",
            id="sender-unknown-channel",
        ),
    ],
)
async def test_admin_request_with_a_bad_body_fails_validation(
    settings: Settings,
    db: Database,
    account: AccountHandle,
    operator: dict[str, str],
    path: str,
    body: dict[str, object],
    field: str,
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            path.format(account=account.account_id), headers=operator, json=body
        )
    assert field in error_fields(assert_problem(response, 422, "validation_failed"))
    assert await audit_trail(db) == []


async def test_a_revoked_operator_token_stops_working(settings: Settings, db: Database) -> None:
    from amnex.accounts.service import revoke_operator

    token = await make_operator(db, name="Leaving Operator")
    headers = {"Authorization": f"Bearer {token}", "X-Amnex-Reason": "audit"}
    async with serve_api(settings, db) as api:
        before = await api.client.get("/admin/v1/accounts", headers=headers)
        async with db.unit_of_work() as session:
            await revoke_operator(session, name="Leaving Operator", actor="test")
        api.runtime.auth.forget()  # another process's revocation: honoured within the cache TTL
        after = await api.client.get("/admin/v1/accounts", headers=headers)
    assert before.status_code == 200
    assert_problem(after, 401, "unauthorized")
