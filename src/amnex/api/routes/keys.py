"""API: `/v1/api-keys` — an account manages its own API keys with a `manage`-scoped key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from amnex.accounts import service
from amnex.accounts.service import KeyContext
from amnex.api.deps import json_response, require_scope, runtime
from amnex.api.routes.admin import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, Page, key_out

router = APIRouter(prefix="/v1", tags=["api keys"])

ManageKey = Annotated[KeyContext, Depends(require_scope("manage"))]


def _actor(ctx: KeyContext) -> str:
    return f"api_key:{ctx.key_id}"


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_key(request: Request, body: ApiKeyCreate, ctx: ManageKey) -> Response:
    """Create a key for this account; the key itself is in the answer, once."""
    async with runtime(request).db.unit_of_work() as session:
        key, plaintext = await service.create_api_key(
            session,
            account_id=ctx.account_id,
            name=body.name,
            scopes=list(body.scopes),
            rate_limit_per_s=body.rate_limit_per_s,
            actor=_actor(ctx),
        )
        out = ApiKeyCreated(**key_out(key).model_dump(), key=plaintext)
    return json_response(request, out, status_code=201)


@router.get("/api-keys", response_model=Page[ApiKeyOut])
async def list_keys(request: Request, ctx: ManageKey) -> Response:
    """This account's keys (never the keys themselves)."""
    async with runtime(request).db.read_session() as session:
        keys = await service.list_api_keys(session, ctx.account_id)
        return json_response(request, Page[ApiKeyOut](data=[key_out(k) for k in keys]))


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut)
async def revoke_key(request: Request, key_id: str, ctx: ManageKey) -> Response:
    """Revoke one of this account's keys; it stops working at once on this server."""
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        key = await service.revoke_api_key(
            session, account_id=ctx.account_id, key_id=key_id, actor=_actor(ctx)
        )
        out = key_out(key)
    rt.auth.forget()
    return json_response(request, out)
