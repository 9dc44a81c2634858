"""`/admin/v1/accounts/{id}/compliance`: operators read and change an account's compliance
settings; every call is audited and a change applies to the account's next send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from api_checks import assert_problem, error_fields, stored_counts
from sqlalchemy import select

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.privacy.audit import AuditEntry
from amnex.simulators.smsc import SmscSimulator
from support import (
    AccountHandle,
    ApiServer,
    add_smpp_route,
    make_operator,
    serve_api,
    with_master_key,
)

OPERATOR = "Dana Ops"
ACTOR = f"operator:{OPERATOR}"

# Every setting of docs/compliance.md's table, with its default for a new account
# (`allowed_countries` null: the account's home country; `brand_name` null: its business name).
DEFAULTS: dict[str, Any] = {
    "allowed_countries": None,
    "allow_landline_sms": False,
    "require_marketing_consent": True,
    "marketing_hours": None,
    "link_shorteners": "flag",
    "extra_shorteners": [],
    "brand_name": None,
    "require_opt_out_language": True,
    "postal_address": None,
    "postal_address_pattern": None,
    "opt_out_keywords": [],
    "opt_in_keywords": [],
    "help_keywords": [],
    "opt_out_reply": None,
    "opt_in_reply": None,
    "help_reply": None,
    "help_contact": None,
    "daily_cap": None,
    "prefix_velocity_per_minute": None,
}


@pytest.fixture
async def operator(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_operator(db, name=OPERATOR)}"}


@pytest.fixture
async def api(settings: Settings, db: Database, smsc: SmscSimulator) -> AsyncIterator[ApiServer]:
    sms_settings = with_master_key(settings)
    await add_smpp_route(db, sms_settings, host=smsc.host, port=smsc.port)
    async with serve_api(sms_settings, db) as server:
        yield server


def path(account: AccountHandle) -> str:
    return f"/admin/v1/accounts/{account.account_id}/compliance"


async def audit_trail(db: Database) -> list[tuple[str, str, dict[str, Any]]]:
    """(action, target id, detail) of every audit row by the operator, oldest first."""
    async with db.read_session() as session:
        rows = await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.actor == ACTOR)
            .order_by(AuditEntry.at, AuditEntry.id)
        )
        return [(row.action, row.target_id, row.detail or {}) for row in rows]


async def test_a_new_account_has_every_setting_at_its_default(
    db: Database, api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    response = await api.client.get(path(account), headers=operator)

    assert response.status_code == 200, response.text
    assert response.json() == DEFAULTS
    assert await audit_trail(db) == [("account.compliance.read", account.account_id, {})]


async def test_patch_changes_the_given_fields_keeps_the_others_and_null_restores_a_default(
    db: Database, api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    first = await api.client.patch(
        path(account),
        headers=operator,
        json={
            "allowed_countries": ["us", "CA"],
            "marketing_hours": {"start": "09:00", "end": "20:00"},
            "daily_cap": 1000,
            "brand_name": "Shop",
        },
    )
    second = await api.client.patch(
        path(account), headers=operator, json={"link_shorteners": "block"}
    )
    third = await api.client.patch(
        path(account), headers=operator, json={"daily_cap": None, "brand_name": None}
    )
    fetched = await api.client.get(path(account), headers=operator)

    for response in (first, second, third, fetched):
        assert response.status_code == 200, response.text
    changed = {
        "allowed_countries": ["CA", "US"],
        "marketing_hours": {"start": "09:00:00", "end": "20:00:00"},
        "daily_cap": 1000,
        "brand_name": "Shop",
    }
    assert first.json() == {**DEFAULTS, **changed}
    assert second.json() == {**DEFAULTS, **changed, "link_shorteners": "block"}
    restored = {**DEFAULTS, **changed, "link_shorteners": "block", "daily_cap": None}
    assert third.json() == {**restored, "brand_name": None}
    assert fetched.json() == third.json()
    target = account.account_id
    assert await audit_trail(db) == [
        (
            "account.compliance.update",
            target,
            {"fields": ["allowed_countries", "brand_name", "daily_cap", "marketing_hours"]},
        ),
        ("account.compliance.update", target, {"fields": ["link_shorteners"]}),
        ("account.compliance.update", target, {"fields": ["brand_name", "daily_cap"]}),
        ("account.compliance.read", target, {}),
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"colour": None}, "colour", id="unknown-field-set-to-null"),
        pytest.param({"allowed_countries": ["XX"]}, "allowed_countries", id="unknown-country"),
        pytest.param(
            {"marketing_hours": {"start": "20:00", "end": "09:00"}},
            "marketing_hours",
            id="hours-end-before-start",
        ),
        pytest.param({"daily_cap": 0}, "daily_cap", id="daily-cap-zero"),
        pytest.param(
            {"postal_address_pattern": "Main St(reet"},
            "postal_address_pattern",
            id="pattern-not-a-regex",
        ),
        pytest.param({"link_shorteners": "sometimes"}, "link_shorteners", id="bad-choice"),
    ],
)
async def test_a_bad_change_fails_validation_and_changes_nothing(
    db: Database,
    api: ApiServer,
    account: AccountHandle,
    operator: dict[str, str],
    change: dict[str, Any],
    field: str,
) -> None:
    # Given settings that differ from the defaults
    kept = await api.client.patch(path(account), headers=operator, json={"daily_cap": 50})
    assert kept.status_code == 200, kept.text

    # When a change carries a bad field next to a good one
    response = await api.client.patch(
        path(account), headers=operator, json={**change, "help_contact": "help@shop.example"}
    )

    # Then it is refused with the field named, and neither field changed
    problem = assert_problem(response, 422, "validation_failed")
    assert any(name.split(".")[0] == field for name in error_fields(problem)), problem
    fetched = await api.client.get(path(account), headers=operator)
    assert fetched.json() == {**DEFAULTS, "daily_cap": 50}
    assert [action for action, _, _ in await audit_trail(db)] == [
        "account.compliance.update",
        "account.compliance.read",
    ]


@pytest.mark.parametrize("method", ["GET", "PATCH"])
async def test_compliance_settings_need_an_operator_token(
    db: Database, api: ApiServer, account: AccountHandle, method: str
) -> None:
    response = await api.client.request(
        method, path(account), headers=account.headers, json={"daily_cap": 5}
    )

    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="amnex"'
    assert account.account_id not in str(await audit_trail(db))


@pytest.mark.parametrize("method", ["GET", "PATCH"])
async def test_an_unknown_account_is_not_found(
    db: Database, api: ApiServer, operator: dict[str, str], method: str
) -> None:
    response = await api.client.request(
        method,
        f"/admin/v1/accounts/{new_id('acc')}/compliance",
        headers=operator,
        json={"daily_cap": 5},
    )

    assert_problem(response, 404, "not_found")
    assert await audit_trail(db) == []


async def test_allowed_countries_apply_to_the_accounts_next_send(
    db: Database, api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    canada = {"channel": "sms", "to": "+14165550100", "body": "Your code is 123456"}
    # Given a US account, whose key is cached by the API after its first request
    refused = await api.client.post("/v1/messages", headers=account.headers, json=canada)
    assert_problem(refused, 422, "destination_country_not_allowed")

    # When the operator allows Canada
    patched = await api.client.patch(
        path(account), headers=operator, json={"allowed_countries": ["US", "CA"]}
    )
    assert patched.status_code == 200, patched.text

    # Then the very next send to Canada is accepted
    accepted = await api.client.post("/v1/messages", headers=account.headers, json=canada)
    assert accepted.status_code == 201, accepted.text

    # And restoring the default (home country only) refuses it again
    restored = await api.client.patch(
        path(account), headers=operator, json={"allowed_countries": None}
    )
    assert restored.status_code == 200, restored.text
    again = await api.client.post("/v1/messages", headers=account.headers, json=canada)
    assert_problem(again, 422, "destination_country_not_allowed")
    assert await stored_counts(db) == (1, 1, 0)


async def test_a_shortener_policy_change_applies_to_the_accounts_next_send(
    db: Database, api: ApiServer, account: AccountHandle, operator: dict[str, str]
) -> None:
    link = {"channel": "sms", "to": "+12125550100", "body": "Track it: bit.ly/3abc"}
    flagged = await api.client.post("/v1/messages", headers=account.headers, json=link)

    blocking = await api.client.patch(
        path(account), headers=operator, json={"link_shorteners": "block"}
    )
    blocked = await api.client.post("/v1/messages", headers=account.headers, json=link)
    allowing = await api.client.patch(
        path(account), headers=operator, json={"link_shorteners": "allow"}
    )
    allowed = await api.client.post("/v1/messages", headers=account.headers, json=link)

    assert flagged.status_code == 201, flagged.text
    assert blocking.status_code == 200, blocking.text
    assert_problem(blocked, 422, "link_shortener_blocked")
    assert allowing.status_code == 200, allowing.text
    assert allowed.status_code == 201, allowed.text
    events = await api.client.get(
        f"/v1/messages/{allowed.json()['id']}/events", headers=account.headers
    )
    assert events.json()["data"][0]["detail"] is None  # allowed: not even flagged
    assert await stored_counts(db) == (2, 2, 0)
