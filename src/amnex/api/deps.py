"""API: dependencies — the runtime, key and operator authentication with scopes and rate limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from amnex.accounts.service import KeyContext, OperatorContext
from amnex.errors import (
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    ReasonRequired,
    UnsupportedMediaType,
)
from amnex.privacy.audit import REASON_MAX_LENGTH
from amnex.privacy.keys import prepare_keys
from amnex.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def authorize(request: Request, scope: str) -> KeyContext:
    """The API key's context, if it holds `scope` and is within its rate limit."""
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
    # The account's data key, before any transaction may seal an address with it (created
    # here if the account has none yet; a dictionary look-up once loaded).
    await prepare_keys((ctx.account_id,))
    return ctx


def require_scope(scope: str) -> Callable[[Request], Awaitable[KeyContext]]:
    """`authorize` as a FastAPI dependency."""

    async def authenticate(request: Request) -> KeyContext:
        return await authorize(request, scope)

    return authenticate


_JSON_TYPES = ("application/json", "application/problem+json")
M = TypeVar("M", bound=BaseModel)


async def json_body(request: Request, model: type[M]) -> M:
    """Parse and validate a JSON body with pydantic's own JSON parser.

    The hot `POST /v1/messages` reads its body here rather than through a FastAPI body
    parameter, so that credentials are checked before the body is even read and the body is
    parsed once. Errors take the same problem+json shape as FastAPI's.
    """
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not {media}")
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("the body must be a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


async def require_operator(request: Request) -> OperatorContext:
    return await runtime(request).auth.operator(request.headers.get("authorization"))


REASON_HEADER = "X-Amnex-Reason"


async def require_reason(request: Request) -> str:
    """Why an operator reads personal data: the `X-Amnex-Reason` header, recorded in the
    audit entry of the read (e.g. a ticket number). Missing or blank: 400 `reason_required`.

    Declare it after the operator dependency, so an unauthenticated request is a 401 first.
    """
    reason = " ".join(request.headers.get(REASON_HEADER, "").split())
    if not reason:
        raise ReasonRequired(
            f"reading personal data through the operator API needs a {REASON_HEADER} header "
            "saying why (a ticket number, say); it is kept in the audit log"
        )
    if len(reason) > REASON_MAX_LENGTH:
        raise InvalidRequest(
            f"{REASON_HEADER}: at most {REASON_MAX_LENGTH} characters", field=REASON_HEADER
        )
    return reason


# The reason as a route parameter: `reason: Reason`.
Reason = Annotated[str, Depends(require_reason)]


def json_response(
    request: Request,
    model: BaseModel | bytes,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """Serialise once with pydantic (aliases applied), or send JSON bytes as they are, and
    attach the rate-limit headers."""
    rate_headers: dict[str, str] | None = request.scope.get("state", {}).get("rate_headers")
    merged = {**rate_headers, **headers} if rate_headers and headers else (rate_headers or headers)
    return Response(
        model if isinstance(model, bytes) else model.model_dump_json(by_alias=True),
        status_code=status_code,
        media_type="application/json",
        headers=merged,
    )
