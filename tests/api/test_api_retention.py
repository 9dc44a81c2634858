"""`/admin/v1/accounts/{id}/retention`: operators read and change an account's retention
within their limits, audited; `/v1/account/retention`: the account sees what applies to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from api_checks import assert_problem, error_fields
from sqlalchemy import select

from amnex.accounts.models import Account
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.privacy.audit import AuditEntry
from support import AccountHandle, ApiServer, make_account, make_operator, serve_api

OPERATOR = "Dana Ops"
ACTOR = f"operator:{OPERATOR}"
DEFAULTS: dict[str, Any] = {
    "content_days": 0,
    "failed_content_hours": None,
    "inbound_content_days": None,
    "metadata_days": None,
}
# What an account without settings gets, from the operator's default settings.
DEFAULT_PERIODS = {
    "content_days": 0,
    "failed_content_hours": 72,
    "inbound_content_days": 30,
    "metadata_days": 365,
}
LIMITS = {"max_content_retention_days": 30, "max_metadata_retention_days": 730}


@pytest.fixture
async def operator(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_operator(db, name=OPERATOR)}"}


@pytest.fixture
async def api(settings: Settings, db: Database) -> AsyncIterator[ApiServer]:
    async with serve_api(settings, db) as server:
        yield server


def path(account: AccountHandle) -> str:
    return f"/admin/v1/accounts/{account.account_id}/retention"


async def audit_trail(db: Database) -> list[tuple[str, str, dict[str, Any]]]:
    """(action, target id, detail) of every audit row by the operator, oldest first."""
    async with db.read_session() as session:
        rows = await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.actor == ACTOR)
            .order_by(AuditEntry.at, AuditEntry.id)
        )
        return [(row.action, row.target_id, row.detail or {}) for row in rows]


async def stored_settings(db: Database, account: AccountHandle) -> dict[str, Any]:
    async with db.read_session() as session:
        row = await session.get(Account, account.account_id)
        assert row is not None
        return dict(row.settings)


async def test_a_new_account_has_every_setting_at_its_default(
    db: Database, api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    response = await api.client.get(path(account), headers=operator)

    assert response.status_code == 200, response.text
    assert response.json() == DEFAULTS
    assert await audit_trail(db) == [("account.retention.read", account.account_id, {})]


async def test_patch_changes_the_given_fields_keeps_the_others_and_null_restores_a_default(
    db: Database, api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    first = await api.client.patch(
        path(account), headers=operator, json={"content_days": 7, "metadata_days": 90}
    )
    second = await api.client.patch(
        path(account), headers=operator, json={"failed_content_hours": 24}
    )
    third = await api.client.patch(path(account), headers=operator, json={"content_days": None})
    fetched = await api.client.get(path(account), headers=operator)

    for response in (first, second, third, fetched):
        assert response.status_code == 200, response.text
    assert first.json() == {**DEFAULTS, "content_days": 7, "metadata_days": 90}
    assert second.json() == {
        **DEFAULTS,
        "content_days": 7,
        "metadata_days": 90,
        "failed_content_hours": 24,
    }
    assert third.json() == {**DEFAULTS, "metadata_days": 90, "failed_content_hours": 24}
    assert fetched.json() == third.json()
    assert (await stored_settings(db, account))["retention"] == {
        "metadata_days": 90,
        "failed_content_hours": 24,
    }
    target = account.account_id
    assert await audit_trail(db) == [
        ("account.retention.update", target, {"fields": ["content_days", "metadata_days"]}),
        ("account.retention.update", target, {"fields": ["failed_content_hours"]}),
        ("account.retention.update", target, {"fields": ["content_days"]}),
        ("account.retention.read", target, {}),
    ]


async def test_restoring_every_default_leaves_no_retention_settings(
    db: Database, api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    await api.client.patch(path(account), headers=operator, json={"content_days": 3})
    restored = await api.client.patch(path(account), headers=operator, json={"content_days": 0})

    assert restored.json() == DEFAULTS
    assert "retention" not in await stored_settings(db, account)


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        pytest.param({"colour": "red"}, "colour", "unknown field", id="unknown-field"),
        pytest.param({"colour": None}, "colour", "unknown field", id="unknown-field-null"),
        pytest.param({"content_days": -1}, "content_days", "", id="negative"),
        pytest.param({"metadata_days": 0}, "metadata_days", "", id="metadata-zero"),
        pytest.param({"content_days": "a week"}, "content_days", "", id="not-a-number"),
        pytest.param(
            {"content_days": 31},
            "content_days",
            "at most 30 days (the operator's max_content_retention_days)",
            id="content-above-the-limit",
        ),
        pytest.param(
            {"failed_content_hours": 721},
            "failed_content_hours",
            "at most 720 hours (the operator's max_content_retention_days)",
            id="failed-above-the-limit",
        ),
        pytest.param(
            {"metadata_days": 731},
            "metadata_days",
            "at most 730 days (the operator's max_metadata_retention_days)",
            id="metadata-above-the-limit",
        ),
    ],
)
async def test_a_bad_change_fails_validation_and_changes_nothing(
    db: Database,
    api: ApiServer,
    account: AccountHandle,
    operator: dict[str, str],
    change: dict[str, Any],
    field: str,
    says: str,
) -> None:
    # Given settings that differ from the defaults
    kept = await api.client.patch(path(account), headers=operator, json={"metadata_days": 90})
    assert kept.status_code == 200, kept.text

    # When a change carries a bad field next to a good one
    response = await api.client.patch(
        path(account), headers=operator, json={**change, "inbound_content_days": 5}
    )

    # Then it is refused with the field (and the limit) named, and neither field changed
    problem = assert_problem(response, 422, "validation_failed")
    assert field in error_fields(problem), problem
    assert says in str(problem["errors"]), problem
    fetched = await api.client.get(path(account), headers=operator)
    assert fetched.json() == {**DEFAULTS, "metadata_days": 90}
    assert [action for action, _, _ in await audit_trail(db)] == [
        "account.retention.update",
        "account.retention.read",
    ]


@pytest.mark.parametrize("method", ["GET", "PATCH"])
async def test_retention_settings_need_an_operator_token(
    db: Database, api: ApiServer, account: AccountHandle, method: str
) -> None:
    response = await api.client.request(
        method, path(account), headers=account.headers, json={"content_days": 5}
    )

    assert_problem(response, 401, "unauthorized")
    assert await audit_trail(db) == []
    assert "retention" not in await stored_settings(db, account)


@pytest.mark.parametrize("method", ["GET", "PATCH"])
async def test_an_unknown_account_is_not_found(
    db: Database, api: ApiServer, operator: dict[str, str], method: str
) -> None:
    response = await api.client.request(
        method,
        f"/admin/v1/accounts/{new_id('acc')}/retention",
        headers=operator,
        json={"content_days": 5},
    )

    assert_problem(response, 404, "not_found")
    assert await audit_trail(db) == []


# The account's own view.


async def test_an_account_sees_its_defaults_and_the_operators_limits(
    api: ApiServer, account: AccountHandle
) -> None:
    response = await api.client.get("/v1/account/retention", headers=account.headers)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "effective": DEFAULT_PERIODS,
        "account": DEFAULTS,
        "defaults": DEFAULT_PERIODS,
        "limits": LIMITS,
    }


async def test_an_account_sees_a_change_at_once_as_the_periods_that_apply(
    api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    before = await api.client.get("/v1/account/retention", headers=account.headers)
    patched = await api.client.patch(
        path(account), headers=operator, json={"content_days": 7, "inbound_content_days": 2}
    )
    after = await api.client.get("/v1/account/retention", headers=account.headers)

    assert before.status_code == 200, before.text
    assert patched.status_code == 200, patched.text
    assert after.json()["account"] == {**DEFAULTS, "content_days": 7, "inbound_content_days": 2}
    assert after.json()["effective"] == {
        **DEFAULT_PERIODS,
        "content_days": 7,
        "inbound_content_days": 2,
    }


async def test_an_account_sees_its_value_capped_by_a_lowered_limit(
    settings: Settings, db: Database
) -> None:
    long = await make_account(db, name="Long", retention={"content_days": 20})
    lowered = settings.model_copy(update={"max_content_retention_days": 5})
    async with serve_api(lowered, db) as api:
        response = await api.client.get("/v1/account/retention", headers=long.headers)

    assert response.status_code == 200, response.text
    view = response.json()
    assert view["account"]["content_days"] == 20
    assert view["effective"]["content_days"] == 5
    assert view["limits"]["max_content_retention_days"] == 5


async def test_the_account_view_needs_the_read_scope(
    api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    created = await api.client.post(
        f"/admin/v1/accounts/{account.account_id}/keys",
        headers=operator,
        json={"name": "sender only", "scopes": ["send"]},
    )
    assert created.status_code == 201, created.text
    send_only = {"Authorization": f"Bearer {created.json()['key']}"}

    refused = await api.client.get("/v1/account/retention", headers=send_only)
    anonymous = await api.client.get("/v1/account/retention")
    operator_token = await api.client.get("/v1/account/retention", headers=operator)

    assert_problem(refused, 403, "forbidden")
    assert_problem(anonymous, 401, "unauthorized")
    assert_problem(operator_token, 401, "unauthorized")
