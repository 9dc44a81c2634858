"""End to end over real sockets: API → store → worker → SMTP sink → delivered."""

from __future__ import annotations

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.simulators.smtp_sink import SmtpSink
from support import AccountHandle, serve_api, serve_system, wait_for_status


async def test_email_is_accepted_delivered_and_its_events_are_in_order(
    settings: Settings, db: Database, sink: SmtpSink, account: AccountHandle
) -> None:
    async with serve_system(settings, db) as api:
        # Given an account with a default email sender
        # When it sends an email through the HTTP API
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={
                "channel": "email",
                "to": "alex@example.com",
                "subject": "Your order",
                "body": "It ships today.",
                "html": "<p>It ships today.</p>",
                "metadata": {"order": "A-1"},
            },
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["status"] == "queued"
        assert response.headers["location"] == f"/v1/messages/{created['id']}"

        # Then the worker delivers it to the SMTP server and it turns delivered
        message = await wait_for_status(api.client, account, created["id"], {"delivered"})
        assert message["delivered_at"] is not None
        assert message["attempts"] == 1
        received = [m for m in sink.messages() if m["x_amnex_message_id"] == created["id"]]
        assert len(received) == 1
        assert received[0]["rcpt_tos"] == ["alex@example.com"]
        assert received[0]["subject"] == "Your order"
        assert received[0]["from"] == "news@shop.example"

        # And every transition is an event, in order, with its time
        events = (
            await api.client.get(f"/v1/messages/{created['id']}/events", headers=account.headers)
        ).json()["data"]
        assert [e["status"] for e in events] == ["queued", "sending", "delivered"]
        assert [e["seq"] for e in events] == [1, 2, 3]
        times = [e["at"] for e in events]
        assert times == sorted(times)

        # And the operator sees it in the metrics; the service reports itself ready
        metrics = (await api.client.get("/metrics")).text
        ready = await api.client.get("/readyz")
        health = await api.client.get("/healthz")
    assert 'amnex_messages_accepted_total{channel="email"}' in metrics
    assert 'amnex_messages_delivered_total{channel="email"}' in metrics
    assert "amnex_queue_depth 0.0" in metrics
    assert 'amnex_api_request_duration_seconds_count{method="POST",route="/v1/messages"' in metrics
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"
    assert health.json() == {"status": "ok"}


async def test_readyz_reports_a_database_that_is_away(settings: Settings, db: Database) -> None:
    away = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
    )
    broken = Database(away)
    try:
        async with serve_api(away, broken) as api:
            response = await api.client.get("/readyz")
    finally:
        await broken.dispose()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_ready"
    assert response.json()["checks"]["database"].startswith("unavailable")
