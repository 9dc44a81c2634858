"""`/healthz`, `/readyz` and `/metrics`: liveness, readiness of the database and Redis, and a
metrics page that lists every metric the Monitoring section of docs/deployment.md explains."""

from __future__ import annotations

import re
from pathlib import Path

from api_checks import assert_problem
from prometheus_client import REGISTRY, Metric

import amnex.channels.smpp.connector
import amnex.metrics
from amnex.config import Settings
from amnex.db.engine import Database
from support import free_socket, serve_api

# Modules that register metrics; imported so that the registry holds all of them.
METRIC_MODULES = (amnex.metrics, amnex.channels.smpp.connector)
DEPLOYMENT = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def test_healthz_answers_while_the_process_lives(settings: Settings, db: Database) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ok_when_everything_configured_answers(
    settings: Settings, db: Database
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.get("/readyz")

    assert response.status_code == 200
    expected = {"database": "ok"} | ({"redis": "ok"} if settings.redis_url else {})
    assert response.json() == {"status": "ok", "checks": expected}


async def test_readyz_is_503_when_the_database_is_away(settings: Settings) -> None:
    away = settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://nobody@127.0.0.1:{closed_port()}/none"}
    )
    broken = Database(away)
    try:
        async with serve_api(away, broken) as api:
            response = await api.client.get("/readyz")
            health = await api.client.get("/healthz")
            metrics = await api.client.get("/metrics")
    finally:
        await broken.dispose()

    problem = assert_problem(response, 503, "not_ready")
    assert problem["checks"]["database"].startswith("unavailable")
    assert response.headers["retry-after"] == "1"
    # The process itself is alive, and its metrics page still renders (queue gauges NaN)
    assert health.status_code == 200
    assert metrics.status_code == 200
    assert "amnex_queue_depth NaN" in metrics.text


async def test_readyz_is_503_when_the_configured_redis_is_away(
    settings: Settings, db: Database
) -> None:
    redis_away = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    async with serve_api(redis_away, db) as api:
        response = await api.client.get("/readyz")

    problem = assert_problem(response, 503, "not_ready")
    assert problem["checks"] == {"database": "ok", "redis": "unavailable"}
    assert "redis: unavailable" in problem["detail"]


def exposed_names(metric: Metric) -> str:
    return f"{metric.name}_total" if metric.type == "counter" else metric.name


def test_every_metric_is_explained_in_the_monitoring_section() -> None:
    registered = {exposed_names(m) for m in REGISTRY.collect() if m.name.startswith("amnex_")}
    text = DEPLOYMENT.read_text(encoding="utf-8")
    monitoring = text[text.index("## Monitoring") :]
    documented = set(re.findall(r"`(amnex_[a-z_]+)", monitoring))

    assert {
        "amnex_messages_accepted_total",
        "amnex_messages_delivered_total",
        "amnex_queue_depth",
        "amnex_api_request_duration_seconds",
        "amnex_backpressure_refusals_total",
    } <= registered
    assert registered - documented == set(), "metrics missing from docs/deployment.md"
    assert documented - registered == set(), "docs/deployment.md names unknown metrics"


async def test_the_metrics_page_shows_the_api_and_queue_metrics(
    settings: Settings, db: Database
) -> None:
    async with serve_api(settings, db) as api:
        await api.client.get("/healthz")
        page = (await api.client.get("/metrics")).text

    for name in (
        "amnex_queue_depth",
        "amnex_queue_oldest_due_age_seconds",
        "amnex_webhook_backlog",
        "amnex_backpressure_accounts",
        "amnex_backpressure_refusals_total",
        "amnex_receipt_lag_seconds",
        "amnex_purged_total",
    ):
        assert f"# HELP {name} " in page, name
    assert re.search(r'^amnex_api_request_duration_seconds_count\{method="GET"', page, re.M)
    assert re.search(r"^amnex_queue_depth 0\.0$", page, re.M)
