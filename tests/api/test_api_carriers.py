"""`/admin/v1` connectors and routes: operators connect carriers and decide where SMS goes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_checks import assert_problem, error_fields
from pydantic import SecretStr
from sqlalchemy import select, text

from amnex.api.routes.carriers import SmppSettings
from amnex.carriers import service
from amnex.carriers.models import Connector
from amnex.channels.smpp.config import SmppConnectorConfig
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.privacy.audit import AuditEntry
from amnex.privacy.crypto import SecretBox, generate_key
from support import AccountHandle, make_account, make_operator, serve_api

OPERATOR = "Dana Ops"
ACTOR = f"operator:{OPERATOR}"
PASSWORD = "pw4Smsc"  # looked for in every answer, stored row and audit entry
CONNECTOR: dict[str, Any] = {
    "name": "Carrier A",
    "host": "smsc.carrier-a.example",
    "port": 2775,
    "system_id": "amnex",
    "password": PASSWORD,
}
SMS = {"channel": "sms", "to": "+13125550100", "body": "Your code is 1234"}


@pytest.fixture
def keyed_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"master_key": SecretStr(generate_key())})


@pytest.fixture
async def operator(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_operator(db, name=OPERATOR)}"}


async def audit_rows(db: Database) -> list[AuditEntry]:
    async with db.read_session() as session:
        rows = await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.actor == ACTOR)
            .order_by(AuditEntry.at, AuditEntry.id)
        )
        return list(rows)


async def audit_trail(db: Database) -> list[tuple[str, str]]:
    return [(row.action, row.target_id) for row in await audit_rows(db)]


async def stored_secrets(db: Database) -> list[str | None]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(text("SELECT secret FROM connectors"))).scalars())


async def test_operator_creates_reads_changes_and_deletes_a_connector(
    keyed_settings: Settings, db: Database, operator: dict[str, str]
) -> None:
    async with serve_api(keyed_settings, db) as api:
        created = await api.client.post(
            "/admin/v1/connectors",
            headers=operator,
            json={**CONNECTOR, "binds": 2, "throughput_per_s": 50, "split": "sar"},
        )
        assert created.status_code == 201, created.text
        connector = created.json()
        path = f"/admin/v1/connectors/{connector['id']}"
        listed = await api.client.get("/admin/v1/connectors", headers=operator)
        fetched = await api.client.get(path, headers=operator)
        changed = await api.client.patch(
            path,
            headers=operator,
            json={"window": 10, "password": "newpw1", "enabled": False},
        )
        deleted = await api.client.delete(path, headers=operator)
        gone = await api.client.get(path, headers=operator)
        deleted_again = await api.client.delete(path, headers=operator)

    assert connector["id"].startswith("con_")
    assert connector["name"] == "Carrier A"
    assert connector["kind"] == "smpp"
    assert connector["enabled"] is True
    assert connector["password_set"] is True
    config = connector["config"]
    assert config["host"] == "smsc.carrier-a.example"
    assert config["system_id"] == "amnex"
    assert (config["binds"], config["throughput_per_s"], config["split"]) == (2, 50, "sar")
    assert config["window"] == 50  # defaults are filled in and shown
    assert {"id", "name", "password"}.isdisjoint(config)
    assert [c["id"] for c in listed.json()["data"]] == [connector["id"]]
    assert fetched.json() == connector
    assert changed.status_code == 200, changed.text
    after = changed.json()
    assert after["config"] == {**config, "window": 10}
    assert after["enabled"] is False
    assert after["password_set"] is True
    for response in (created, listed, fetched, changed):
        assert PASSWORD not in response.text
        assert "newpw1" not in response.text
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(gone, 404, "not_found")
    assert_problem(deleted_again, 404, "not_found")
    rows = await audit_rows(db)
    assert [(r.action, r.target_id) for r in rows] == [
        ("connector.create", connector["id"]),
        ("connector.update", connector["id"]),
        ("connector.delete", connector["id"]),
    ]
    assert rows[1].detail == {"changed": ["window", "password", "enabled"]}
    for row in rows:
        assert PASSWORD not in json.dumps(row.detail)
        assert "newpw1" not in json.dumps(row.detail)


async def test_the_password_is_stored_sealed_and_opens_only_with_the_master_key(
    keyed_settings: Settings, db: Database, operator: dict[str, str]
) -> None:
    async with serve_api(keyed_settings, db) as api:
        created = await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
        assert created.status_code == 201, created.text

    [secret] = await stored_secrets(db)
    assert secret is not None
    assert PASSWORD not in secret
    assert secret.startswith("v1.")
    async with db.read_session() as session:
        row = await session.get(Connector, created.json()["id"])
        assert row is not None
        opened = service.connector_runtime_config(SecretBox.from_settings(keyed_settings), row)
    assert opened.password == PASSWORD


@pytest.mark.no_master_key
async def test_a_password_needs_a_master_key_and_nothing_is_stored_without_one(
    settings: Settings, db: Database, operator: dict[str, str]
) -> None:
    settings = settings.model_copy(update={"master_key": None})
    async with serve_api(settings, db) as api:
        refused = await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
        without_password = await api.client.post(
            "/admin/v1/connectors", headers=operator, json={**CONNECTOR, "password": ""}
        )

    assert_problem(refused, 503, "master_key_missing")
    assert "Retry-After" in refused.headers
    assert without_password.status_code == 201, without_password.text
    assert without_password.json()["password_set"] is False
    assert await stored_secrets(db) == [None]
    assert await audit_trail(db) == [("connector.create", without_password.json()["id"])]


def test_the_connector_body_accepts_exactly_the_smpp_settings() -> None:
    settings = set(SmppSettings.model_fields)

    assert settings == set(SmppConnectorConfig.model_fields) - {"id", "name", "password"} - {
        "host",
        "port",
        "system_id",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"port": 0}, "port", id="port-zero"),
        pytest.param({"port": 70000}, "port", id="port-too-high"),
        pytest.param({"window": 0}, "window", id="window-zero"),
        pytest.param({"binds": 33}, "binds", id="too-many-binds"),
        pytest.param({"system_id": "a-system-id-too-long"}, "system_id", id="system-id-too-long"),
        pytest.param({"password": "longer-than-8"}, "password", id="password-too-long"),
        pytest.param({"bind_type": "both"}, "bind_type", id="unknown-bind-type"),
        pytest.param({"throughput_per_s": -1}, "throughput_per_s", id="negative-throughput"),
        pytest.param({"colour": "blue"}, "colour", id="unknown-field"),
        pytest.param({"id": new_id("con")}, "id", id="id-not-settable"),
        pytest.param({"host": ""}, "host", id="empty-host"),
    ],
)
async def test_a_connector_with_a_bad_setting_is_refused_naming_the_field(
    keyed_settings: Settings,
    db: Database,
    operator: dict[str, str],
    change: dict[str, Any],
    field: str,
) -> None:
    async with serve_api(keyed_settings, db) as api:
        response = await api.client.post(
            "/admin/v1/connectors", headers=operator, json={**CONNECTOR, **change}
        )

    assert field in error_fields(assert_problem(response, 422, "validation_failed"))
    assert await stored_secrets(db) == []
    assert await audit_trail(db) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"window": 0}, "window", id="window-zero"),
        pytest.param({"port": None}, "port", id="port-null"),
        pytest.param({"reconnect_max_s": 0.5, "reconnect_min_s": 2}, "", id="backoff-order"),
        pytest.param({"name": "Renamed"}, "name", id="name-not-changeable"),
    ],
)
async def test_a_bad_change_to_a_connector_is_refused_and_changes_nothing(
    keyed_settings: Settings,
    db: Database,
    operator: dict[str, str],
    change: dict[str, Any],
    field: str,
) -> None:
    async with serve_api(keyed_settings, db) as api:
        created = (
            await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
        ).json()
        path = f"/admin/v1/connectors/{created['id']}"
        response = await api.client.patch(path, headers=operator, json=change)
        after = await api.client.get(path, headers=operator)

    assert field in error_fields(assert_problem(response, 422, "validation_failed"))
    assert after.json() == created
    assert await audit_trail(db) == [("connector.create", created["id"])]


async def test_two_connectors_cannot_share_a_name(
    keyed_settings: Settings, db: Database, operator: dict[str, str]
) -> None:
    async with serve_api(keyed_settings, db) as api:
        first = await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
        second = await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
    assert first.status_code == 201
    assert_problem(second, 409, "conflict")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", f"/admin/v1/connectors/{new_id('con')}", None, id="get-connector"),
        pytest.param(
            "PATCH", f"/admin/v1/connectors/{new_id('con')}", {"window": 5}, id="patch-connector"
        ),
        pytest.param("DELETE", f"/admin/v1/connectors/{new_id('con')}", None, id="del-connector"),
        pytest.param("GET", "/admin/v1/connectors/not-an-id", None, id="malformed-connector"),
        pytest.param("DELETE", f"/admin/v1/routes/{new_id('rte')}", None, id="delete-route"),
        pytest.param("DELETE", "/admin/v1/routes/rte_nope", None, id="malformed-route"),
    ],
)
async def test_an_unknown_connector_or_route_is_not_found(
    keyed_settings: Settings,
    db: Database,
    operator: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    async with serve_api(keyed_settings, db) as api:
        response = await api.client.request(method, path, headers=operator, json=body)
    assert_problem(response, 404, "not_found")
    assert await audit_trail(db) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/admin/v1/connectors", id="list-connectors"),
        pytest.param("POST", "/admin/v1/connectors", id="create-connector"),
        pytest.param("GET", "/admin/v1/routes", id="list-routes"),
        pytest.param("POST", "/admin/v1/routes", id="create-route"),
    ],
)
async def test_carrier_admin_needs_an_operator_token(
    keyed_settings: Settings, db: Database, account: AccountHandle, method: str, path: str
) -> None:
    async with serve_api(keyed_settings, db) as api:
        anonymous = await api.client.request(method, path, json={})
        with_api_key = await api.client.request(method, path, headers=account.headers, json={})
    assert_problem(anonymous, 401, "unauthorized")
    assert_problem(with_api_key, 401, "unauthorized")


async def test_operator_adds_lists_and_removes_routes(
    keyed_settings: Settings, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    async with serve_api(keyed_settings, db) as api:
        primary = (
            await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
        ).json()
        backup = (
            await api.client.post(
                "/admin/v1/connectors", headers=operator, json={**CONNECTOR, "name": "Carrier B"}
            )
        ).json()
        platform = await api.client.post(
            "/admin/v1/routes",
            headers=operator,
            json={"channel": "sms", "connector_ids": [primary["id"], backup["id"]]},
        )
        assert platform.status_code == 201, platform.text
        own = await api.client.post(
            "/admin/v1/routes",
            headers=operator,
            json={
                "channel": "sms",
                "connector_ids": [backup["id"]],
                "account_id": account.account_id,
                "country": "us",
                "prefix": "+1312",
                "priority": 5,
            },
        )
        assert own.status_code == 201, own.text
        listed = await api.client.get("/admin/v1/routes", headers=operator)
        in_use = await api.client.delete(f"/admin/v1/connectors/{backup['id']}", headers=operator)
        removed = await api.client.delete(f"/admin/v1/routes/{own.json()['id']}", headers=operator)
        still_in_use = await api.client.delete(
            f"/admin/v1/connectors/{backup['id']}", headers=operator
        )
        await api.client.delete(f"/admin/v1/routes/{platform.json()['id']}", headers=operator)
        free = await api.client.delete(f"/admin/v1/connectors/{backup['id']}", headers=operator)
        relisted = await api.client.get("/admin/v1/routes", headers=operator)

    route = own.json()
    assert route["id"].startswith("rte_")
    assert route["account_id"] == account.account_id
    assert (route["country"], route["prefix"], route["priority"]) == ("US", "1312", 5)
    assert route["connector_ids"] == [backup["id"]]
    assert platform.json()["connector_ids"] == [primary["id"], backup["id"]]
    assert platform.json()["account_id"] is None
    assert platform.json()["prefix"] == ""
    assert {r["id"] for r in listed.json()["data"]} == {platform.json()["id"], route["id"]}
    assert_problem(in_use, 409, "conflict")
    assert removed.status_code == 204
    assert_problem(still_in_use, 409, "conflict")
    assert free.status_code == 204
    assert relisted.json() == {"data": []}
    assert [action for action, _ in await audit_trail(db)] == [
        "connector.create",
        "connector.create",
        "route.create",
        "route.create",
        "route.delete",
        "route.delete",
        "connector.delete",
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"connector_ids": ["{unknown}"]}, "connector_ids", id="unknown-connector"),
        pytest.param({"connector_ids": []}, "connector_ids", id="no-connector"),
        pytest.param({"connector_ids": ["{known}", "{known}"]}, "connector_ids", id="twice"),
        pytest.param({"channel": "email"}, "channel", id="email-is-not-routed"),
        pytest.param({"country": "USA"}, "country", id="bad-country"),
        pytest.param({"prefix": "1-312"}, "prefix", id="bad-prefix"),
        pytest.param({"account_id": "{account}"}, "account_id", id="unknown-account"),
    ],
)
async def test_a_bad_route_is_refused_naming_the_field(
    keyed_settings: Settings,
    db: Database,
    operator: dict[str, str],
    change: dict[str, Any],
    field: str,
) -> None:
    async with serve_api(keyed_settings, db) as api:
        known = (
            await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
        ).json()["id"]
        names = {"known": known, "unknown": new_id("con"), "account": new_id("acc")}
        body: dict[str, Any] = {"channel": "sms", "connector_ids": [known]}
        for key, value in change.items():
            body[key] = (
                [v.format(**names) for v in value]
                if isinstance(value, list)
                else value.format(**names)
            )
        response = await api.client.post("/admin/v1/routes", headers=operator, json=body)
        listed = await api.client.get("/admin/v1/routes", headers=operator)

    problem = assert_problem(response, 422, "validation_failed")
    assert problem["field"] == field
    assert listed.json() == {"data": []}


async def test_an_account_can_send_sms_as_soon_as_a_route_reaches_the_number(
    keyed_settings: Settings, db: Database, account: AccountHandle, operator: dict[str, str]
) -> None:
    async with serve_api(keyed_settings, db) as api:
        before = await api.client.post("/v1/messages", headers=account.headers, json=SMS)

        # When the operator connects a carrier and routes US numbers in 312 to it
        connector = (
            await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
        ).json()
        route = await api.client.post(
            "/admin/v1/routes",
            headers=operator,
            json={"channel": "sms", "connector_ids": [connector["id"]], "prefix": "1312"},
        )
        assert route.status_code == 201, route.text

        # Then the same process routes with it at once, for matching numbers only
        after = await api.client.post("/v1/messages", headers=account.headers, json=SMS)
        elsewhere = await api.client.post(
            "/v1/messages", headers=account.headers, json={**SMS, "to": "+14155550100"}
        )

        # And a disabled connector, or a removed route, stops it again
        await api.client.patch(
            f"/admin/v1/connectors/{connector['id']}", headers=operator, json={"enabled": False}
        )
        disabled = await api.client.post("/v1/messages", headers=account.headers, json=SMS)
        await api.client.patch(
            f"/admin/v1/connectors/{connector['id']}", headers=operator, json={"enabled": True}
        )
        enabled = await api.client.post("/v1/messages", headers=account.headers, json=SMS)
        await api.client.delete(f"/admin/v1/routes/{route.json()['id']}", headers=operator)
        removed = await api.client.post("/v1/messages", headers=account.headers, json=SMS)

    assert_problem(before, 422, "no_route")
    assert after.status_code == 201, after.text
    assert after.json()["channel"] == "sms"
    assert after.json()["to"] == "+13125550100"
    assert_problem(elsewhere, 422, "no_route")
    assert_problem(disabled, 422, "no_route")
    assert enabled.status_code == 201, enabled.text
    assert_problem(removed, 422, "no_route")


async def test_sms_to_a_landline_needs_a_route_that_allows_landlines(
    keyed_settings: Settings, db: Database, operator: dict[str, str]
) -> None:
    account = await make_account(
        db, sms_number="+447400123456", compliance={"allowed_countries": ["GB"]}
    )
    landline = {**SMS, "to": "+442079460018"}  # a London number: FIXED_LINE
    async with serve_api(keyed_settings, db) as api:
        connector = (
            await api.client.post("/admin/v1/connectors", headers=operator, json=CONNECTOR)
        ).json()
        await api.client.post(
            "/admin/v1/routes",
            headers=operator,
            json={"channel": "sms", "connector_ids": [connector["id"]], "prefix": "44"},
        )
        refused = await api.client.post("/v1/messages", headers=account.headers, json=landline)
        mobile = await api.client.post(
            "/v1/messages", headers=account.headers, json={**SMS, "to": "+447400123457"}
        )
        route = await api.client.post(
            "/admin/v1/routes",
            headers=operator,
            json={
                "channel": "sms",
                "connector_ids": [connector["id"]],
                "prefix": "4420",
                "allow_landline": True,
            },
        )
        accepted = await api.client.post("/v1/messages", headers=account.headers, json=landline)
    problem = assert_problem(refused, 422, "number_type_not_allowed")
    assert problem["rule"] == "number_type"
    assert mobile.status_code == 201, mobile.text
    assert route.json()["allow_landline"] is True
    assert accepted.status_code == 201, accepted.text


async def test_a_number_belongs_to_one_account_only(
    keyed_settings: Settings, db: Database, operator: dict[str, str]
) -> None:
    number = "+13125560177"
    first = await make_account(db, name="First", sms_number=number)
    second = await make_account(db, name="Second")
    async with serve_api(keyed_settings, db) as api:
        taken = await api.client.post(
            f"/admin/v1/accounts/{second.account_id}/senders",
            headers=operator,
            json={"channel": "sms", "address": number},
        )
        first_senders = await api.client.get(
            f"/admin/v1/accounts/{first.account_id}/senders", headers=operator
        )

    assert_problem(taken, 409, "conflict")
    assert number in [s["address"] for s in first_senders.json()["data"]]
    assert await audit_trail(db) == []


async def test_changing_a_connector_sealed_under_another_master_key_asks_for_its_password(
    keyed_settings: Settings, db: Database, operator: dict[str, str]
) -> None:
    # Given a connector whose password was sealed under an earlier master key
    async with db.unit_of_work() as session:
        old_box = SecretBox.from_settings(
            keyed_settings.model_copy(update={"master_key": SecretStr(generate_key())})
        )
        connector = await service.create_connector(
            session,
            old_box,
            name="Old key",
            config={"host": "127.0.0.1", "port": 2775, "system_id": "amnex"},
            password="secret",
            actor="test",
        )
    async with serve_api(keyed_settings, db) as api:
        path = f"/admin/v1/connectors/{connector.id}"
        # When a setting is changed without the password, it is refused precisely
        refused = await api.client.patch(path, headers=operator, json={"window": 10})
        assert_problem(refused, 422, "validation_failed")
        assert refused.json()["field"] == "password"
        # And with the password given again, the change and the new seal are stored
        changed = await api.client.patch(
            path, headers=operator, json={"window": 10, "password": "secret"}
        )
    assert changed.status_code == 200, changed.text
    assert changed.json()["config"]["window"] == 10
