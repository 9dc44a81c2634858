"""API: `create_app(runtime)` — the FastAPI application for `amnex serve` and `amnex dev`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match, Route
from starlette.types import Scope

from amnex import __version__
from amnex.api.edge import EdgeMiddleware
from amnex.api.problems import install_problem_handlers
from amnex.api.routes import (
    account,
    admin,
    audit,
    carriers,
    consents,
    dev,
    health,
    keys,
    messages,
    optouts,
    privacy,
    subject_requests,
    unsubscribe,
    webhooks,
)
from amnex.runtime import Runtime

DESCRIPTION = """Send SMS, MMS, email and push notifications through one API.

Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457
`application/problem+json` documents with a stable `code`."""


def create_app(rt: Runtime, *, manage_lifecycle: bool = True) -> FastAPI:
    """The app over a built Runtime. With `manage_lifecycle`, app start-up starts it and
    shutdown closes it; `amnex dev` and tests that share the runtime pass False."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await rt.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await rt.close()

    app = FastAPI(
        title="Amnex",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.runtime = rt
    install_problem_handlers(app)
    app.include_router(messages.router)
    app.include_router(keys.router)
    app.include_router(admin.router)
    app.include_router(carriers.router)
    app.include_router(optouts.router)
    app.include_router(optouts.admin_router)
    app.include_router(consents.router)
    app.include_router(audit.router)
    app.include_router(audit.admin_router)
    app.include_router(unsubscribe.router)
    for router in privacy.routers(rt.settings):
        app.include_router(router)
    for router in subject_requests.routers(rt.settings):
        app.include_router(router)
    app.include_router(health.router)
    app.include_router(account.router)
    app.include_router(webhooks.router)
    if rt.settings.dev_mode:
        app.include_router(dev.router)
    # The accept path, `POST /v1/messages`, is also mounted as a plain Starlette route ahead of
    # FastAPI's: its endpoint reads the request itself (deps.authorize, deps.json_body), so
    # FastAPI's per-request dependency machinery (about 60 µs, a fifth of the path's budget)
    # buys nothing there. The FastAPI route with the same endpoint describes it in OpenAPI;
    # exception handlers and middleware apply to both alike.
    app.router.routes.insert(
        0, _FastRoute("/v1/messages", messages.send_message, methods=["POST"], name="send_message")
    )
    app.add_middleware(EdgeMiddleware, settings=rt.settings)
    _add_openapi_components(app, messages.OPENAPI_COMPONENTS)
    return app


class _FastRoute(Route):
    """A Starlette route that, like FastAPI's, records itself in the scope (metrics label)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL:
            child["route"] = self
        return match, child


def _add_openapi_components(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Publish schemas of bodies that routes read by hand (FastAPI cannot see them)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            spec["components"].setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`amx_…`) or, for /admin/v1, an operator token.",
            }
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
