"""API: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from amnex.api.deps import runtime
from amnex.api.problems import problem_response
from amnex.health import (
    NOT_READY_HEADERS,
    check_database,
    check_redis,
    is_ready,
    not_ready_problem,
)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="The database (and Redis, when configured) answer")
async def readyz(request: Request) -> Response:
    rt = runtime(request)
    checks = {"database": await check_database(rt.db)}
    if rt.settings.redis_url:
        checks["redis"] = await check_redis(rt.limiter.check_storage)
    if is_ready(checks):
        return JSONResponse({"status": "ok", "checks": checks})
    return problem_response(request, headers=dict(NOT_READY_HEADERS), **not_ready_problem(checks))


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    # A fresh queue sample (a few index reads, counts capped) so that the queue gauges are
    # those of the scrape; the accept path keeps reading the background sample. If the
    # database is away the page still renders, with those gauges NaN.
    await runtime(request).backpressure.refresh()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
