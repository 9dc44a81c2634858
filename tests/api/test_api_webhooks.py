"""`/v1/webhook-endpoints` and `/v1/notices`: endpoints over HTTP — the secret shown once and
stored sealed, event-type and URL vetting (the SSRF guard's refusals as stable codes), PATCH
and re-enabling, deletion canceling what is owed, rotation with an overlap, test events,
replays, the delivery log, notices, other accounts' ids and the `manage` scope."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from api_checks import assert_problem, error_fields
from sqlalchemy import select

from amnex.accounts import service as accounts
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.privacy.audit import AuditEntry
from amnex.privacy.crypto import SecretBox
from amnex.webhooks.models import (
    Notice,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from amnex.webhooks.outbox import delivery_for
from amnex.webhooks.sender import live_secrets, secret_context
from amnex.webhooks.signing import SECRET_PREFIX, secret_key
from support import AccountHandle, make_account, serve_api

PATH = "/v1/webhook-endpoints"
HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def loopback(settings: Settings) -> Settings:
    """Settings that accept a receiver on this machine over http, as `amnex dev` does."""
    return settings.model_copy(update={"webhook_allow_loopback": True, "dev_mode": True})


async def key_with(db: Database, account: AccountHandle, *scopes: str) -> dict[str, str]:
    async with db.unit_of_work() as session:
        _, plaintext = await accounts.create_api_key(
            session, account_id=account.account_id, name="k", scopes=list(scopes), actor="test"
        )
    return {"Authorization": f"Bearer {plaintext}"}


async def stored_endpoint(db: Database, endpoint_id: str) -> WebhookEndpoint:
    async with db.read_session() as session:
        endpoint = await session.get(WebhookEndpoint, endpoint_id)
    assert endpoint is not None
    return endpoint


async def add_event(
    db: Database,
    account_id: str,
    *,
    type_: str = "message.delivered",
    at: datetime | None = None,
    subject_id: str = "msg_1",
    seq: int = 1,
) -> WebhookEvent:
    event = WebhookEvent(
        id=new_id("evt"),
        account_id=account_id,
        type=type_,
        subject_id=subject_id,
        seq=seq,
        data={"id": subject_id, "object": "message"},
        created_at=at or utc_now(),
    )
    async with db.unit_of_work() as session:
        session.add(event)
    return event


async def add_delivery(
    db: Database, event: WebhookEvent, endpoint_id: str, *, status: str = "pending"
) -> WebhookDelivery:
    delivery = delivery_for(event, endpoint_id=endpoint_id, callback_url=None, now=utc_now())
    delivery.status = status
    async with db.unit_of_work() as session:
        session.add(delivery)
    return delivery


async def deliveries_of(db: Database, endpoint_id: str) -> list[WebhookDelivery]:
    async with db.read_session() as session:
        rows = await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.id)
        )
        return list(rows)


async def audit_actions(db: Database, account_id: str) -> list[str]:
    async with db.read_session() as session:
        rows = await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.chain == account_id, AuditEntry.action.like("webhook_%"))
            .order_by(AuditEntry.seq)
        )
        return list(rows)


async def create(api: Any, account: AccountHandle, **body: Any) -> dict[str, Any]:
    response = await api.client.post(PATH, headers=account.headers, json={"url": HOOK, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_creating_an_endpoint_shows_its_secret_once_and_stores_it_sealed(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        created = await api.client.post(
            PATH, headers=account.headers, json={"url": HOOK, "description": "orders"}
        )
        body = created.json()
        fetched = await api.client.get(created.headers["location"], headers=account.headers)
        listed = await api.client.get(PATH, headers=account.headers)

    assert created.status_code == 201, created.text
    secret = body.pop("secret")
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret_key(secret)) == 32
    assert body == {
        "id": body["id"],
        "url": HOOK,
        "description": "orders",
        "event_types": None,
        "enabled": True,
        "disabled_reason": None,
        "failing_since": None,
        "max_concurrency": 4,
        "secret_rotation": None,
        "created_at": body["created_at"],
        "updated_at": body["created_at"],
    }
    assert created.headers["location"] == f"{PATH}/{body['id']}"
    assert fetched.json() == body
    assert listed.json() == {"data": [body], "next_cursor": None}
    assert secret not in fetched.text + listed.text
    stored = await stored_endpoint(db, body["id"])
    assert secret not in stored.secret
    box = SecretBox.from_settings(loopback)
    assert box.open(stored.secret, context=secret_context(body["id"])) == secret
    assert await audit_actions(db, account.account_id) == ["webhook_endpoint.create"]


@pytest.mark.parametrize(
    ("event_types", "field"),
    [
        pytest.param(["message.delivered", "message.exploded"], "event_types[1]", id="unknown"),
        pytest.param(["nope", "message.sent"], "event_types[0]", id="first"),
        pytest.param([], "event_types", id="empty"),
    ],
)
async def test_event_types_must_be_known_types(
    loopback: Settings,
    db: Database,
    account: AccountHandle,
    event_types: list[str],
    field: str,
) -> None:
    async with serve_api(loopback, db) as api:
        refused = await api.client.post(
            PATH, headers=account.headers, json={"url": HOOK, "event_types": event_types}
        )
        listed = await api.client.get(PATH, headers=account.headers)

    problem = assert_problem(refused, 422, "validation_failed")
    assert problem["field"] == field
    assert listed.json()["data"] == []


async def test_event_types_are_kept_once_each_and_null_means_all(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        some = await create(
            api, account, event_types=["message.sent", "optout.created", "message.sent"]
        )
        every = await create(api, account, event_types=None)

    assert some["event_types"] == ["message.sent", "optout.created"]
    assert every["event_types"] is None


async def test_plain_http_is_refused_outside_dev_mode(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        plain = await api.client.post(
            PATH, headers=account.headers, json={"url": "http://93.184.215.14/hook"}
        )
        not_http = await api.client.post(
            PATH, headers=account.headers, json={"url": "ftp://93.184.215.14/hook"}
        )
        malformed = await api.client.post(
            PATH, headers=account.headers, json={"url": "https://0x7f.1/hook"}
        )

    assert assert_problem(plain, 422, "webhook_url_not_https")["field"] == "url"
    assert assert_problem(not_http, 422, "webhook_url_invalid")["field"] == "url"
    assert_problem(malformed, 422, "webhook_url_invalid")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("http://10.0.0.1/hook", "destination_private", id="private"),
        pytest.param("http://169.254.169.254/latest", "destination_metadata", id="metadata"),
        pytest.param("http://127.0.0.1/hook", "destination_loopback", id="loopback"),
        pytest.param("http://[::ffff:10.1.2.3]/hook", "destination_private", id="mapped"),
    ],
)
async def test_urls_that_reach_forbidden_addresses_are_refused_with_the_reason(
    settings: Settings, db: Database, account: AccountHandle, url: str, reason: str
) -> None:
    dev = settings.model_copy(update={"dev_mode": True})
    async with serve_api(dev, db) as api:
        refused = await api.client.post(PATH, headers=account.headers, json={"url": url})

    problem = assert_problem(refused, 422, "webhook_url_unsafe")
    assert problem["reason"] == reason
    assert problem["field"] == "url"


async def test_metadata_addresses_stay_refused_when_private_networks_are_allowed(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    allowing = settings.model_copy(
        update={"dev_mode": True, "webhook_allow_private": True, "webhook_allow_loopback": True}
    )
    async with serve_api(allowing, db) as api:
        private = await api.client.post(
            PATH, headers=account.headers, json={"url": "http://10.0.0.1/hook"}
        )
        metadata = await api.client.post(
            PATH, headers=account.headers, json={"url": "http://169.254.169.254/"}
        )

    assert private.status_code == 201, private.text
    assert assert_problem(metadata, 422, "webhook_url_unsafe")["reason"] == "destination_metadata"


async def test_a_host_that_does_not_resolve_is_refused(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        refused = await api.client.post(
            PATH, headers=account.headers, json={"url": "https://no-such-host.invalid/hook"}
        )

    assert assert_problem(refused, 422, "webhook_url_unresolvable")["field"] == "url"


@pytest.mark.no_master_key
async def test_without_a_master_key_no_endpoint_is_made(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        refused = await api.client.post(PATH, headers=account.headers, json={"url": HOOK})
        listed = await api.client.get(PATH, headers=account.headers)

    assert_problem(refused, 503, "master_key_missing")
    assert listed.json()["data"] == []


async def test_patch_changes_an_endpoint_and_enabling_it_again_clears_why_it_stopped(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        created = await create(api, account, description="old")
        path = f"{PATH}/{created['id']}"
        # Given the sender disabled the endpoint after a day of failures
        async with db.unit_of_work() as session:
            endpoint = await session.get(WebhookEndpoint, created["id"])
            assert endpoint is not None
            endpoint.enabled = False
            endpoint.disabled_reason = "failing"
            endpoint.failing_since = utc_now() - timedelta(days=1)
        disabled = (await api.client.get(path, headers=account.headers)).json()
        # When the client fixes its receiver and enables it again
        patched = await api.client.patch(
            path,
            headers=account.headers,
            json={
                "enabled": True,
                "event_types": ["message.failed"],
                "description": None,
                "max_concurrency": 10,
                "url": "http://127.0.0.1:10/other",
            },
        )
        unchanged = await api.client.patch(path, headers=account.headers, json={})
        all_types = await api.client.patch(
            path, headers=account.headers, json={"event_types": None}
        )
        unsafe = await api.client.patch(
            path, headers=account.headers, json={"url": "http://10.0.0.1/hook"}
        )
        null_url = await api.client.patch(path, headers=account.headers, json={"url": None})
        too_many = await api.client.patch(
            path, headers=account.headers, json={"max_concurrency": 21}
        )
        bad_type = await api.client.patch(
            path, headers=account.headers, json={"event_types": ["message.sent", "x"]}
        )

    assert disabled["enabled"] is False
    assert disabled["disabled_reason"] == "failing"
    assert disabled["failing_since"] is not None
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["enabled"] is True
    assert body["disabled_reason"] is None
    assert body["failing_since"] is None
    assert body["event_types"] == ["message.failed"]
    assert body["description"] is None
    assert body["max_concurrency"] == 10
    assert body["url"] == "http://127.0.0.1:10/other"
    assert body["updated_at"] >= created["updated_at"]
    assert "secret" not in body
    assert unchanged.json() == body
    assert all_types.json()["event_types"] is None
    assert_problem(unsafe, 422, "webhook_url_unsafe")
    assert assert_problem(null_url, 422, "validation_failed")["field"] == "url"
    assert "max_concurrency" in error_fields(assert_problem(too_many, 422, "validation_failed"))
    assert assert_problem(bad_type, 422, "validation_failed")["field"] == "event_types[1]"
    assert (await stored_endpoint(db, created["id"])).url == "http://127.0.0.1:10/other"
    assert await audit_actions(db, account.account_id) == [
        "webhook_endpoint.create",
        "webhook_endpoint.update",
        "webhook_endpoint.update",
    ]


async def test_disabling_an_endpoint_cancels_what_it_is_still_owed(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        created = await create(api, account)
        event = await add_event(db, account.account_id)
        pending = await add_delivery(db, event, created["id"])
        disabled = await api.client.patch(
            f"{PATH}/{created['id']}", headers=account.headers, json={"enabled": False}
        )

    assert disabled.json()["enabled"] is False
    assert disabled.json()["disabled_reason"] == "manual"
    assert [(d.id, d.status) for d in await deliveries_of(db, created["id"])] == [
        (pending.id, "canceled")
    ]


async def test_deleting_an_endpoint_cancels_its_pending_deliveries(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        created = await create(api, account)
        kept = await create(api, account)
        event = await add_event(db, account.account_id)
        pending = await add_delivery(db, event, created["id"])
        delivered = await add_delivery(db, event, created["id"], status="delivered")
        await add_delivery(db, event, kept["id"])
        path = f"{PATH}/{created['id']}"
        deleted = await api.client.delete(path, headers=account.headers)
        gone = await api.client.get(path, headers=account.headers)
        again = await api.client.delete(path, headers=account.headers)

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(gone, 404, "not_found")
    assert_problem(again, 404, "not_found")
    statuses = {d.id: d.status for d in await deliveries_of(db, created["id"])}
    assert statuses == {pending.id: "canceled", delivered.id: "delivered"}
    assert [d.status for d in await deliveries_of(db, kept["id"])] == ["pending"]
    assert "webhook_endpoint.delete" in await audit_actions(db, account.account_id)


async def test_rotation_keeps_the_old_secret_signing_until_the_overlap_ends(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    box = SecretBox.from_settings(loopback)
    async with serve_api(loopback, db) as api:
        created = await create(api, account)
        path = f"{PATH}/{created['id']}"
        before = utc_now()
        rotated = await api.client.post(
            f"{path}/rotate-secret", headers=account.headers, json={"overlap_s": 3600}
        )
        fetched = await api.client.get(path, headers=account.headers)
        stored = await stored_endpoint(db, created["id"])
        # A second rotation without overlap drops every older secret at once
        abrupt = await api.client.post(
            f"{path}/rotate-secret", headers=account.headers, json={"overlap_s": 0}
        )
        after_abrupt = await stored_endpoint(db, created["id"])
        await api.client.post(f"{path}/rotate-secret", headers=account.headers)
        after_default = await stored_endpoint(db, created["id"])
        too_long = await api.client.post(
            f"{path}/rotate-secret", headers=account.headers, json={"overlap_s": 604801}
        )

    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    new = body["secret"]
    old = created["secret"]
    assert new.startswith(SECRET_PREFIX)
    assert new != old
    context = secret_context(created["id"])
    assert box.open(stored.secret, context=context) == new
    assert stored.previous_secret is not None
    assert box.open(stored.previous_secret, context=context) == old
    assert stored.previous_secret_expires_at is not None
    expected = before + timedelta(seconds=3600)
    assert abs((stored.previous_secret_expires_at - expected).total_seconds()) < 30
    assert live_secrets(box, stored, utc_now()) == [new, old]
    assert live_secrets(box, stored, expected + timedelta(seconds=31)) == [new]
    assert body["secret_rotation"]["previous_expires_at"] is not None
    assert fetched.json()["secret_rotation"] == body["secret_rotation"]
    assert "secret" not in fetched.json()
    assert new not in fetched.text
    assert abrupt.json()["secret_rotation"] is None
    assert after_abrupt.previous_secret is None
    assert live_secrets(box, after_abrupt, utc_now()) == [abrupt.json()["secret"]]
    assert after_default.previous_secret_expires_at is not None
    default_overlap = after_default.previous_secret_expires_at - utc_now()
    assert timedelta(hours=23) < default_overlap <= timedelta(hours=24)
    assert "overlap_s" in error_fields(assert_problem(too_long, 422, "validation_failed"))


async def test_a_test_event_makes_one_delivery_to_that_endpoint_only(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        created = await create(api, account)
        other = await create(api, account)
        sent = await api.client.post(f"{PATH}/{created['id']}/test", headers=account.headers)
        await api.client.patch(
            f"{PATH}/{other['id']}", headers=account.headers, json={"enabled": False}
        )
        to_disabled = await api.client.post(f"{PATH}/{other['id']}/test", headers=account.headers)

    assert sent.status_code == 202, sent.text
    answer = sent.json()
    async with db.read_session() as session:
        event = await session.get(WebhookEvent, answer["event_id"])
    assert event is not None
    assert event.type == "webhook.test"
    assert event.account_id == account.account_id
    assert (event.subject_id, event.seq) == (created["id"], 0)
    assert event.data["object"] == "webhook_test"
    assert event.data["endpoint_id"] == created["id"]
    assert event.data["message"]
    [delivery] = await deliveries_of(db, created["id"])
    assert (delivery.id, delivery.event_id, delivery.status) == (
        answer["delivery_id"],
        event.id,
        "pending",
    )
    assert await deliveries_of(db, other["id"]) == []
    assert_problem(to_disabled, 409, "conflict")


async def test_replay_delivers_again_the_wanted_events_of_the_window_only(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other")
    now = utc_now()
    async with serve_api(loopback, db) as api:
        created = await create(api, account, event_types=["message.delivered", "optout.created"])
        too_early = await add_event(db, account.account_id, at=now - timedelta(hours=5))
        first = await add_event(db, account.account_id, at=now - timedelta(hours=3))
        second = await add_event(
            db, account.account_id, type_="optout.created", at=now - timedelta(hours=2)
        )
        await add_event(db, account.account_id, type_="message.sent", at=now - timedelta(hours=2))
        await add_event(db, account.account_id, type_="webhook.test", at=now - timedelta(hours=2))
        await add_event(db, other.account_id, at=now - timedelta(hours=2))
        too_late = await add_event(db, account.account_id, at=now - timedelta(minutes=30))
        # Already delivered once: the replay is a new delivery of the same event
        await add_delivery(db, first, created["id"], status="delivered")
        path = f"{PATH}/{created['id']}/replay"
        replayed = await api.client.post(
            path,
            headers=account.headers,
            json={
                "since": (now - timedelta(hours=4)).isoformat(),
                "until": (now - timedelta(hours=1)).isoformat(),
            },
        )
        only_optouts = await api.client.post(
            path,
            headers=account.headers,
            json={
                "since": (now - timedelta(hours=4)).isoformat(),
                "event_types": ["optout.created"],
            },
        )
        backwards = await api.client.post(
            path,
            headers=account.headers,
            json={"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()},
        )
        too_wide = await api.client.post(
            path, headers=account.headers, json={"since": (now - timedelta(days=8)).isoformat()}
        )
        naive = await api.client.post(
            path, headers=account.headers, json={"since": "2025-01-01T00:00:00"}
        )
        bad_type = await api.client.post(
            path,
            headers=account.headers,
            json={"since": now.isoformat(), "event_types": ["message.nope"]},
        )

    assert replayed.status_code == 202, replayed.text
    assert replayed.json() == {"deliveries": 2}
    assert only_optouts.json() == {"deliveries": 1}
    pending = [d.event_id for d in await deliveries_of(db, created["id"]) if d.status == "pending"]
    assert sorted(pending) == sorted([first.id, second.id, second.id])
    assert too_early.id not in pending
    assert too_late.id not in pending
    assert assert_problem(backwards, 422, "validation_failed")["field"] == "since"
    assert assert_problem(too_wide, 422, "validation_failed")["field"] == "until"
    assert "since" in error_fields(assert_problem(naive, 422, "validation_failed"))
    assert assert_problem(bad_type, 422, "validation_failed")["field"] == "event_types[0]"


async def test_the_delivery_log_lists_attempts_and_deliveries_newest_first(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        created = await create(api, account)
        other = await create(api, account)
        first = await add_event(db, account.account_id, subject_id="msg_a")
        second = await add_event(db, account.account_id, type_="message.failed")
        failed = await add_delivery(db, first, created["id"], status="failed")
        pending = await add_delivery(db, second, created["id"])
        await add_delivery(db, second, other["id"])
        now = utc_now()
        async with db.unit_of_work() as session:
            for number, (delivery, outcome, code) in enumerate(
                [
                    (failed, "http_error", 503),
                    (failed, "timeout", None),
                    (pending, "http_error", 500),
                    (failed, "http_error", 404),
                ],
                start=1,
            ):
                session.add(
                    WebhookAttempt(
                        delivery_id=delivery.id,
                        event_id=delivery.event_id,
                        account_id=account.account_id,
                        endpoint_id=created["id"],
                        at=now + timedelta(seconds=number),
                        attempt=number,
                        outcome=outcome,
                        status_code=code,
                        latency_ms=10 * number,
                        detail=None if code else "read timeout",
                    )
                )
            session.add(
                WebhookAttempt(
                    delivery_id="whd_x",
                    event_id=second.id,
                    account_id=account.account_id,
                    endpoint_id=other["id"],
                    at=now,
                    attempt=1,
                    outcome="delivered",
                    status_code=200,
                    latency_ms=5,
                    detail=None,
                )
            )
        base = f"{PATH}/{created['id']}"
        page1 = (await api.client.get(f"{base}/attempts?limit=3", headers=account.headers)).json()
        page2 = (
            await api.client.get(
                f"{base}/attempts?limit=3&cursor={page1['next_cursor']}", headers=account.headers
            )
        ).json()
        of_first = (
            await api.client.get(f"{base}/attempts?event_id={first.id}", headers=account.headers)
        ).json()
        bad_cursor = await api.client.get(f"{base}/attempts?cursor=%21%21", headers=account.headers)
        deliveries = (await api.client.get(f"{base}/deliveries", headers=account.headers)).json()
        only_failed = (
            await api.client.get(f"{base}/deliveries?status=failed", headers=account.headers)
        ).json()
        bad_status = await api.client.get(f"{base}/deliveries?status=lost", headers=account.headers)

    assert [a["status_code"] for a in page1["data"]] == [404, 500, None]
    assert page1["data"][0] == {
        "id": page1["data"][0]["id"],
        "delivery_id": failed.id,
        "event_id": first.id,
        "at": page1["data"][0]["at"],
        "attempt": 4,
        "outcome": "http_error",
        "status_code": 404,
        "latency_ms": 40,
        "detail": None,
    }
    assert page1["data"][2]["detail"] == "read timeout"
    assert [a["status_code"] for a in page2["data"]] == [503]
    assert page2["next_cursor"] is None
    assert [a["attempt"] for a in of_first["data"]] == [4, 2, 1]
    assert_problem(bad_cursor, 400, "invalid_request")
    assert [d["id"] for d in deliveries["data"]] == sorted([pending.id, failed.id], reverse=True)
    assert next(d for d in deliveries["data"] if d["id"] == pending.id) == {
        "id": pending.id,
        "event_id": second.id,
        "event_type": "message.failed",
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": pending.created_at.isoformat().replace("+00:00", "Z"),
        "last_outcome": None,
        "last_status_code": None,
        "created_at": pending.created_at.isoformat().replace("+00:00", "Z"),
    }
    assert [d["id"] for d in only_failed["data"]] == [failed.id]
    assert_problem(bad_status, 422, "validation_failed")


async def test_endpoints_page_newest_first(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(loopback, db) as api:
        made = [(await create(api, account))["id"] for _ in range(3)]
        page1 = (await api.client.get(f"{PATH}?limit=2", headers=account.headers)).json()
        page2 = (
            await api.client.get(
                f"{PATH}?limit=2&cursor={page1['next_cursor']}", headers=account.headers
            )
        ).json()

    assert [e["id"] for e in page1["data"] + page2["data"]] == sorted(made, reverse=True)
    assert page2["next_cursor"] is None


async def test_notices_are_listed_newest_first_and_marked_read(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other")
    now = utc_now()
    notices = []
    # Ids sort by time (to the millisecond): sorted, they are made in this order.
    ids = sorted(new_id("ntc") for _ in range(3))
    async with db.unit_of_work() as session:
        for notice_id, owner, title in zip(
            ids, (account, account, other), ("first", "second", "theirs"), strict=True
        ):
            notice = Notice(
                id=notice_id,
                account_id=owner.account_id,
                kind="webhook_endpoint.disabled",
                title=title,
                detail={"endpoint_id": "whe_x", "reason": "gone"},
                created_at=now,
                read_at=None,
            )
            session.add(notice)
            notices.append(notice)
    first, second, theirs = notices
    async with serve_api(settings, db) as api:
        listed = (await api.client.get("/v1/notices", headers=account.headers)).json()
        read = await api.client.post(f"/v1/notices/{first.id}/read", headers=account.headers)
        read_again = await api.client.post(f"/v1/notices/{first.id}/read", headers=account.headers)
        unread = (await api.client.get("/v1/notices?unread=true", headers=account.headers)).json()
        not_mine = await api.client.post(f"/v1/notices/{theirs.id}/read", headers=account.headers)

    assert [n["title"] for n in listed["data"]] == ["second", "first"]
    assert listed["data"][0] == {
        "id": second.id,
        "kind": "webhook_endpoint.disabled",
        "title": "second",
        "detail": {"endpoint_id": "whe_x", "reason": "gone"},
        "created_at": listed["data"][0]["created_at"],
        "read_at": None,
    }
    assert read.status_code == 200, read.text
    assert read.json()["read_at"] is not None
    assert read_again.json()["read_at"] == read.json()["read_at"]
    assert [n["id"] for n in unread["data"]] == [second.id]
    assert_problem(not_mine, 404, "not_found")


async def test_another_accounts_endpoint_is_not_found(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other")
    async with serve_api(loopback, db) as api:
        created = await create(api, account)
        path = f"{PATH}/{created['id']}"
        since = {"since": (utc_now() - timedelta(hours=1)).isoformat()}
        answers = [
            await api.client.get(path, headers=other.headers),
            await api.client.patch(path, headers=other.headers, json={"enabled": False}),
            await api.client.post(f"{path}/rotate-secret", headers=other.headers),
            await api.client.post(f"{path}/test", headers=other.headers),
            await api.client.post(f"{path}/replay", headers=other.headers, json=since),
            await api.client.get(f"{path}/attempts", headers=other.headers),
            await api.client.get(f"{path}/deliveries", headers=other.headers),
            await api.client.delete(path, headers=other.headers),
            await api.client.get(f"{PATH}/whe_nonsense", headers=account.headers),
        ]
        theirs = (await api.client.get(PATH, headers=other.headers)).json()
        still = await api.client.get(path, headers=account.headers)

    for answer in answers:
        assert_problem(answer, 404, "not_found")
    assert theirs["data"] == []
    assert still.json()["enabled"] is True


async def test_every_webhook_route_needs_the_manage_scope(
    loopback: Settings, db: Database, account: AccountHandle
) -> None:
    sender = await key_with(db, account, "send", "read")
    async with serve_api(loopback, db) as api:
        created = await create(api, account)
        path = f"{PATH}/{created['id']}"
        answers = [
            await api.client.post(PATH, headers=sender, json={"url": HOOK}),
            await api.client.get(PATH, headers=sender),
            await api.client.get(path, headers=sender),
            await api.client.patch(path, headers=sender, json={"enabled": False}),
            await api.client.post(f"{path}/rotate-secret", headers=sender),
            await api.client.post(f"{path}/test", headers=sender),
            await api.client.post(f"{path}/replay", headers=sender, json={"since": "x"}),
            await api.client.get(f"{path}/attempts", headers=sender),
            await api.client.get(f"{path}/deliveries", headers=sender),
            await api.client.delete(path, headers=sender),
            await api.client.get("/v1/notices", headers=sender),
            await api.client.post("/v1/notices/ntc_x/read", headers=sender),
        ]

    for answer in answers:
        assert_problem(answer, 403, "forbidden")
    assert (await stored_endpoint(db, created["id"])).enabled is True
