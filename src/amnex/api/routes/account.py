"""API: `/v1/account` — what an account may know about its own set-up (its retention)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from amnex.accounts import service
from amnex.api.deps import json_response, runtime
from amnex.api.routes.optouts import ReadKey
from amnex.privacy.retention_settings import RetentionView, retention_of, retention_view

router = APIRouter(prefix="/v1/account", tags=["account"])


@router.get(
    "/retention",
    response_model=RetentionView,
    description="How long the account's message content and metadata are kept: the periods "
    "the purge applies, the account's own settings, the defaults and the operator's limits.",
)
async def get_account_retention(request: Request, ctx: ReadKey) -> Response:
    rt = runtime(request)
    # Read from the row, not the key's cached context: another API process may have just
    # changed the settings.
    async with rt.db.read_session() as session:
        account = await service.get_account_or_raise(session, ctx.account_id)
        retention = retention_of(account.settings)
    return json_response(request, retention_view(retention, rt.settings))
