"""API: every error as RFC 9457 `application/problem+json` with a stable `code`."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from amnex.db.engine import is_transient_db_error
from amnex.errors import (
    AmnexError,
    DatabaseUnavailable,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    ValidationFailed,
)
from amnex.privacy.logsafe import failure_summary

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_body(
    *, code: str, status: int, title: str, detail: str, instance: str | None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:amnex:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(
    request: Request | None,
    *,
    code: str,
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = problem_body(
        code=code,
        status=status,
        title=title,
        detail=detail,
        instance=request.url.path if request is not None else None,
        **extra,
    )
    merged = dict(getattr(request.state, "rate_headers", {}) if request is not None else {})
    merged.update(headers or {})
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=merged,
    )


def error_response(request: Request | None, exc: AmnexError) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited | ServiceUnavailable):
        headers["Retry-After"] = str(max(1, exc.retry_after_s))
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="amnex"'
    return problem_response(
        request,
        code=exc.code,
        status=exc.status,
        title=exc.title,
        detail=exc.detail,
        headers=headers,
        **exc.extra,
    )


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def validation_problem(request: Request, exc: RequestValidationError) -> Response:
    errors = list(exc.errors())
    for error in errors:
        kind = error.get("type", "")
        loc = tuple(error.get("loc", ()))
        if kind == "json_invalid":
            ctx = error.get("ctx") or {}
            return error_response(
                request,
                InvalidRequest(f"malformed JSON: {ctx.get('error', 'cannot parse the body')}"),
            )
        if loc == ("body",) and kind in (
            "missing",
            "model_attributes_type",
            "dict_type",
            "model_type",
        ):
            return error_response(request, InvalidRequest("the body must be a JSON object"))
    fields = [
        {
            "field": _field_of(tuple(e.get("loc", ()))),
            "code": e.get("type", "invalid"),
            "message": "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", ""),
        }
        for e in errors
    ]
    detail = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields)
    return error_response(request, ValidationFailed(detail, errors=fields))


def install_problem_handlers(app: FastAPI) -> None:
    async def on_amnex_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, AmnexError):  # pragma: no cover - registered for AmnexError
            raise exc
        return error_response(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):  # pragma: no cover
            raise exc
        return validation_problem(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        if exc.status_code == 404:
            return error_response(request, NotFound(f"no route {request.url.path}"))
        if exc.status_code == 405:
            return problem_response(
                request,
                code="method_not_allowed",
                status=405,
                title="Method not allowed",
                detail=f"{request.method} is not allowed on {request.url.path}",
                headers=dict(exc.headers or {}),
            )
        return problem_response(
            request,
            code="invalid_request" if exc.status_code < 500 else "internal_error",
            status=exc.status_code,
            title="Request failed",
            detail=str(exc.detail),
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error(
            "unhandled error on %s %s: %s",
            request.method,
            request.url.path,
            failure_summary(exc),
        )
        return problem_response(
            request,
            code="internal_error",
            status=500,
            title="Internal error",
            detail="an unexpected error occurred and was logged",
        )

    async def on_database_error(request: Request, exc: Exception) -> Response:
        # A database that is down, restarting or locked is a 503 the client may retry, on
        # every route (the accept path has its own retries; reads and cancels do not). A
        # refused or timed-out connection can surface as a bare OSError from the driver:
        # the database is the only network peer a request waits on (Redis fails open).
        transient = isinstance(exc, OSError) or (
            isinstance(exc, DBAPIError) and is_transient_db_error(exc)
        )
        if transient:
            cause = exc.orig if isinstance(exc, DBAPIError) else exc
            log.warning(
                "database unavailable on %s %s: %s",
                request.method,
                request.url.path,
                type(cause).__name__,
            )
            return error_response(
                request, DatabaseUnavailable("the database did not answer; retry shortly")
            )
        return await on_unexpected(request, exc)

    app.add_exception_handler(AmnexError, on_amnex_error)
    app.add_exception_handler(DBAPIError, on_database_error)
    app.add_exception_handler(OSError, on_database_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
