"""API: `/_dev/` — the local simulators, inspectable without auth. Mounted by `amnex dev` only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from amnex.api.deps import runtime
from amnex.errors import NotFound

router = APIRouter(prefix="/_dev", tags=["dev"], include_in_schema=False)


@router.get("/smtp/messages")
async def smtp_messages(request: Request) -> dict[str, Any]:
    sink = runtime(request).simulators.get("smtp")
    if sink is None:
        raise NotFound("the SMTP sink is not running")
    return {"data": sink.messages()}
