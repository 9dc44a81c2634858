"""API: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from amnex.api.deps import runtime
from amnex.api.problems import problem_response

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="The database (and Redis, when configured) answer")
async def readyz(request: Request) -> Response:
    rt = runtime(request)
    checks: dict[str, str] = {}
    try:
        async with rt.db.read_session() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if rt.settings.redis_url:
        checks["redis"] = "ok" if await rt.limiter.check_storage() else "unavailable"
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    return problem_response(
        request,
        code="not_ready",
        status=503,
        title="Not ready",
        detail=", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"),
        headers={"Retry-After": "1"},
        checks=checks,
    )


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    # A fresh queue sample (a few index reads, counts capped) so that the queue gauges are
    # those of the scrape; the accept path keeps reading the background sample. If the
    # database is away the page still renders, with those gauges NaN.
    await runtime(request).backpressure.refresh()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
