"""Backpressure: `POST /v1/messages` refuses with `503 queue_full` while the due queue is full,
with `429 account_backlog_full` to an account whose own due backlog is (before the body is
read), and with `503 connector_backlog_full` an SMS routed to a carrier connector whose backlog
is — from a sample taken in the background, never a count per request.

Each test takes the samples itself (`backpressure.refresh()`); the background sampler is set to
a minute, so it never samples in between.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from api_checks import EMAIL, assert_problem, count_messages
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from amnex.api.backpressure import Backpressure
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.models import Message
from amnex.simulators.smsc import SmscSimulator
from support import (
    AccountHandle,
    add_smpp_route,
    eventually,
    make_account,
    serve_api,
    with_master_key,
)

QUIET_S = 60.0  # the background sampler's interval: longer than any of these tests


def limited(settings: Settings, **limits: Any) -> Settings:
    return settings.model_copy(
        update={
            "max_queue_depth": 0,
            "max_account_backlog": 0,
            "max_connector_backlog": 0,
            "backpressure_sample_s": QUIET_S,
            **limits,
        }
    )


async def send(client: httpx.AsyncClient, account: AccountHandle, **body: Any) -> httpx.Response:
    return await client.post("/v1/messages", headers=account.headers, json={**EMAIL, **body})


def sample_of(metrics: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


async def test_an_account_over_its_backlog_gets_429_while_other_accounts_still_send(
    settings: Settings, db: Database
) -> None:
    busy = await make_account(db, name="Busy Example")
    other = await make_account(db, name="Other Example")
    async with serve_api(limited(settings, max_account_backlog=2), db) as api:
        before = (await api.client.get("/metrics")).text
        # Given an account with two messages waiting (nothing dispatches them here)
        for _ in range(2):
            assert (await send(api.client, busy)).status_code == 201
        # And a sample taken since
        await api.runtime.backpressure.refresh()

        # When it sends a third, and another account sends one
        refused = await send(api.client, busy)
        accepted = await send(api.client, other)
        after = (await api.client.get("/metrics")).text

    # Then the busy account is refused, with Retry-After, and nothing of it is stored
    problem = assert_problem(refused, 429, "account_backlog_full")
    assert "2 or more messages" in problem["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert await count_messages(db, busy.account_id) == 2
    # And the other account is not held back by it
    assert accepted.status_code == 201, accepted.text
    # And the refusal is counted, as a backpressure refusal and as a rejection by code
    for name, labels in [
        ("amnex_backpressure_refusals_total", '{code="account_backlog_full"}'),
        ("amnex_messages_rejected_total", '{code="account_backlog_full"}'),
    ]:
        assert sample_of(after, name, labels) == sample_of(before, name, labels) + 1
    # And the account is still over its backlog at the scrape's own sample
    assert sample_of(after, "amnex_backpressure_accounts") == 1


async def test_a_full_queue_refuses_every_account_with_503_until_it_drains(
    settings: Settings, db: Database
) -> None:
    first = await make_account(db, name="First Example")
    second = await make_account(db, name="Second Example")
    async with serve_api(limited(settings, max_queue_depth=3), db) as api:
        # Given three due messages from two accounts, and a sample that saw them
        sent = [(first, await send(api.client, first)) for _ in range(2)]
        sent.append((second, await send(api.client, second)))
        sample = await api.runtime.backpressure.refresh()

        # When either account sends
        refused = [await send(api.client, first), await send(api.client, second)]

        # And once the queue drains (here: the messages are canceled) and is sampled again
        for owner, response in sent:
            message_id = response.json()["id"]
            canceled = await api.client.delete(f"/v1/messages/{message_id}", headers=owner.headers)
            assert canceled.status_code == 200, canceled.text
        await api.runtime.backpressure.refresh()
        again = await send(api.client, second)

    # Then both were refused with 503 queue_full and Retry-After; nothing was stored
    assert sample is not None
    assert sample.due == 3
    for response in refused:
        problem = assert_problem(response, 503, "queue_full")
        assert "3 or more messages" in problem["detail"]
        assert int(response.headers["retry-after"]) >= 1
    # And sending works again once the queue is below the limit
    assert again.status_code == 201, again.text
    assert await count_messages(db) == 4


async def test_a_refusal_comes_before_the_body_is_read(settings: Settings, db: Database) -> None:
    account = await make_account(db)
    async with serve_api(limited(settings, max_queue_depth=1), db) as api:
        assert (await send(api.client, account)).status_code == 201
        await api.runtime.backpressure.refresh()

        # When a body that could not even be parsed is sent to a full queue
        response = await api.client.post(
            "/v1/messages",
            headers={**account.headers, "Content-Type": "application/json"},
            content=b"{not json",
        )

    # Then the answer is the queue's, not the body's
    assert_problem(response, 503, "queue_full")


async def test_the_verdict_is_the_last_samples_and_no_count_runs_per_request(
    settings: Settings, db: Database
) -> None:
    account = await make_account(db)
    async with serve_api(limited(settings, max_account_backlog=1), db) as api:
        await api.runtime.backpressure.refresh()  # an empty queue
        # When the account sends past its backlog between two samples
        responses = [await send(api.client, account) for _ in range(3)]
        # Then every send was accepted: the accept path read the last sample, not the table
        assert [r.status_code for r in responses] == [201, 201, 201]

        # And the next sample refuses the account
        await api.runtime.backpressure.refresh()
        assert_problem(await send(api.client, account), 429, "account_backlog_full")


async def test_scheduled_messages_count_once_their_time_has_come(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    send_at = (utc_now() + timedelta(hours=1)).isoformat()
    async with serve_api(limited(settings, max_queue_depth=1), db) as api:
        # Given a message scheduled an hour from now
        scheduled = await send(api.client, account, send_at=send_at)
        assert scheduled.json()["status"] == "scheduled"

        # When the queue is sampled now
        now = await api.runtime.backpressure.refresh()
        # Then it is not due, so sending is open under a limit of one
        assert now is not None
        assert (now.due, now.oldest_due_at) == (0, None)
        assert (await send(api.client, account)).status_code == 201

        # And sampled as it will be in two hours, it is due with the message sent since
        later = await api.runtime.backpressure.sample(utc_now() + timedelta(hours=2))
    assert later.due == 2
    assert later.oldest_due_age_s > 3000


async def test_counting_stops_just_past_the_limit(settings: Settings, db: Database) -> None:
    account = await make_account(db)
    async with serve_api(limited(settings, max_queue_depth=2), db) as api:
        # Given four due messages, sent between samples, under a limit of two
        for _ in range(4):
            assert (await send(api.client, account)).status_code == 201
        # When the queue is sampled
        sample = await api.runtime.backpressure.refresh()
        metrics = (await api.client.get("/metrics")).text

    # Then the count stopped at the limit plus one: enough to know the queue is full
    assert sample is not None
    assert (sample.due, sample.due_cap) == (3, 3)
    assert sample_of(metrics, "amnex_queue_depth") == 3
    assert sample_of(metrics, "amnex_queue_oldest_due_age_seconds") >= 0


async def test_the_sampler_reports_pending_webhook_deliveries(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    loopback = limited(settings, webhook_allow_loopback=True, dev_mode=True)
    async with serve_api(loopback, db) as api:
        created = await api.client.post(
            "/v1/webhook-endpoints",
            headers=account.headers,
            json={"url": "http://127.0.0.1:9/hook"},
        )
        assert created.status_code == 201, created.text
        # When a test event is owed to the endpoint (no worker delivers it here)
        tested = await api.client.post(
            f"/v1/webhook-endpoints/{created.json()['id']}/test", headers=account.headers
        )
        assert tested.status_code == 202, tested.text
        metrics = (await api.client.get("/metrics")).text

    # Then the backlog gauge counts it
    assert sample_of(metrics, "amnex_webhook_backlog") == 1


async def test_the_runtime_runs_the_sampler_in_the_background(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    fast = settings.model_copy(update={"backpressure_sample_s": 0.05, "max_account_backlog": 1})
    async with serve_api(fast, db) as api:
        assert (await send(api.client, account)).status_code == 201

        # Then, with no one asking, a sample soon sees the message and refuses the account
        refused = await eventually(
            lambda: send(api.client, account), lambda r: r.status_code == 429
        )
    assert_problem(refused, 429, "account_backlog_full")


async def test_a_database_that_is_away_opens_no_refusal_and_blanks_the_gauges(
    settings: Settings,
) -> None:
    away = Database(
        settings.model_copy(update={"database_url": "postgresql+asyncpg://nobody@127.0.0.1:1/x"})
    )
    sampler = Backpressure(away, max_queue_depth=1, max_account_backlog=1, sample_s=QUIET_S)
    try:
        sample = await sampler.refresh()
    finally:
        await away.dispose()

    assert sample is None
    depth = REGISTRY.get_sample_value("amnex_queue_depth")
    assert depth is not None
    assert math.isnan(depth)
    sampler.check("acc_any")  # no sample, no refusal: the accept path answers for itself


@pytest.mark.parametrize(
    ("limits", "cap"),
    [({"max_queue_depth": 200_000}, 200_001), ({"max_queue_depth": 0}, 1_000_000)],
)
async def test_the_count_ceiling_follows_max_queue_depth(
    settings: Settings, db: Database, limits: dict[str, int], cap: int
) -> None:
    sampler = Backpressure.from_settings(db, settings.model_copy(update=limits))

    assert sampler.due_cap == cap


@pytest.mark.parametrize("waiting_for_a_retry", [False, True])
async def test_sms_to_a_connector_over_its_backlog_get_503_while_other_routes_still_send(
    settings: Settings,
    db: Database,
    account: AccountHandle,
    smsc: SmscSimulator,
    waiting_for_a_retry: bool,
) -> None:
    # Given two carriers, one for +1 415 numbers and one for +1 212, and two SMS waiting for the
    # first (no worker runs here)
    sms_settings = with_master_key(settings)
    busy = await add_smpp_route(
        db, sms_settings, host=smsc.host, port=smsc.port, name="busy", prefix="1415"
    )
    other = await add_smpp_route(
        db, sms_settings, host=smsc.host, port=smsc.port, name="other", prefix="1212"
    )
    async with serve_api(limited(sms_settings, max_connector_backlog=2), db) as api:
        before = (await api.client.get("/metrics")).text
        for n in range(2):
            response = await api.client.post(
                "/v1/messages", headers=account.headers, json=sms(f"+1415555010{n}")
            )
            assert response.status_code == 201, response.text
        if waiting_for_a_retry:  # what a carrier that is down leaves: queued, not yet due
            async with db.unit_of_work() as session:
                await session.execute(
                    update(Message)
                    .where(Message.connector_id == busy)
                    .values(next_attempt_at=utc_now() + timedelta(minutes=10))
                )
        sample = await api.runtime.backpressure.refresh()
        assert sample is not None
        assert sample.due == (0 if waiting_for_a_retry else 2)

        # When a third is sent to the busy carrier, one to the other carrier, and an email
        refused = await api.client.post(
            "/v1/messages", headers=account.headers, json=sms("+14155550109")
        )
        to_other = await api.client.post(
            "/v1/messages", headers=account.headers, json=sms("+12125550199")
        )
        email = await send(api.client, account)
        after = (await api.client.get("/metrics")).text

    # Then only the SMS for the busy carrier is refused, with Retry-After, and not stored
    problem = assert_problem(refused, 503, "connector_backlog_full")
    assert "2 or more messages" in problem["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert to_other.status_code == 201, to_other.text
    assert email.status_code == 201, email.text
    async with db.read_session() as session:
        stored = dict(
            (
                await session.execute(
                    select(Message.connector_id, func.count())
                    .where(Message.account_id == account.account_id)
                    .group_by(Message.connector_id)
                )
            ).all()
        )
    assert stored == {busy: 2, other: 1, None: 1}
    # And the refusal is counted, and the connector is over its backlog at the last sample
    labels = '{code="connector_backlog_full"}'
    for name in ("amnex_backpressure_refusals_total", "amnex_messages_rejected_total"):
        assert sample_of(after, name, labels) == sample_of(before, name, labels) + 1
    assert sample_of(after, "amnex_backpressure_connectors") == 1


def sms(to: str) -> dict[str, Any]:
    return {"channel": "sms", "to": to, "body": "Your code is 123456"}
