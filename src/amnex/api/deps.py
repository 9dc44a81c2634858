"""API: dependencies — the runtime, key and operator authentication with scopes and rate limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response

from amnex.accounts.service import KeyContext, OperatorContext
from amnex.errors import PermissionDenied, RateLimited
from amnex.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def require_scope(scope: str) -> Callable[[Request], Awaitable[KeyContext]]:
    async def authenticate(request: Request) -> KeyContext:
        rt = runtime(request)
        ctx = await rt.auth.api_key(request.headers.get("authorization"))
        if scope not in ctx.scopes:
            raise PermissionDenied(f"this API key lacks the `{scope}` scope")
        per_s = (
            ctx.rate_limit_per_s
            or ctx.account_settings.get("rate_limit_per_s")
            or rt.settings.default_rate_limit_per_s
        )
        decision = await rt.limiter.hit(ctx.key_id, int(per_s))
        request.state.rate_headers = decision.headers()
        if not decision.allowed:
            raise RateLimited(
                f"more than {decision.limit} requests per second for this key",
                retry_after_s=decision.reset_s,
            )
        return ctx

    return authenticate


async def require_operator(request: Request) -> OperatorContext:
    return await runtime(request).auth.operator(request.headers.get("authorization"))


def json_response(
    request: Request,
    model: BaseModel,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """Serialise once with pydantic (aliases applied) and attach the rate-limit headers."""
    merged = dict(getattr(request.state, "rate_headers", {}))
    merged.update(headers or {})
    return Response(
        model.model_dump_json(by_alias=True),
        status_code=status_code,
        media_type="application/json",
        headers=merged,
    )
