"""API: `/_dev/` — the local simulators, inspectable without auth. Mounted by `amnex dev` only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from amnex.api.deps import runtime
from amnex.channels.smpp.pdu import CommandStatus
from amnex.errors import NotFound, ServiceUnavailable
from amnex.simulators.smsc import NoReceiverBound, SmscSimulator

router = APIRouter(prefix="/_dev", tags=["dev"], include_in_schema=False)


class InjectMo(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", min_length=1, max_length=21)
    to: str = Field(min_length=1, max_length=21)
    text: str = Field(min_length=1, max_length=1600)


def _smsc(request: Request) -> SmscSimulator:
    sim = runtime(request).simulators.get("smsc")
    if not isinstance(sim, SmscSimulator):
        raise NotFound("the SMSC simulator is not running")
    return sim


@router.get("/smtp/messages")
async def smtp_messages(request: Request) -> dict[str, Any]:
    sink = runtime(request).simulators.get("smtp")
    if sink is None:
        raise NotFound("the SMTP sink is not running")
    return {"data": sink.messages()}


@router.get("/smsc/messages")
async def smsc_messages(request: Request) -> dict[str, Any]:
    """Every submit_sm the simulator received, oldest first, with decoded text and parts."""
    return {"data": _smsc(request).messages()}


@router.post("/smsc/mo")
async def smsc_mo(request: Request, body: InjectMo) -> dict[str, Any]:
    """Send an inbound SMS from the simulator; answers once Amnex answered the deliver_sm,
    i.e. once the inbound message is durably stored (or refused)."""
    sim = _smsc(request)
    try:
        status = await sim.inject_mo(
            body.from_.removeprefix("+"), body.to.removeprefix("+"), body.text
        )
    except NoReceiverBound as exc:
        raise ServiceUnavailable(f"no SMPP bind is up yet: {exc}", retry_after_s=1) from exc
    except ConnectionError as exc:
        raise ServiceUnavailable(
            "the SMPP bind dropped before it answered", retry_after_s=1
        ) from exc
    try:
        name = CommandStatus(status).name
    except ValueError:
        name = hex(status)
    return {"stored": status == CommandStatus.ESME_ROK, "command_status": name}
