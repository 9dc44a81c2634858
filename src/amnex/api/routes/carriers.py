"""API: `/admin/v1` connectors and routes — operators connect carriers and say where SMS goes.

Validation of a connector's settings lives in one place, `SmppConnectorConfig` (through
`carriers.service`): the bodies here only name the fields, so a bad value comes back as
`422 validation_failed` naming the field either way. Every change is audited by the service,
and once it is committed this process reloads its route table, so its next request routes
with the change; other processes pick it up within `route_cache_ttl_s`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from amnex.api.deps import json_response, runtime
from amnex.api.routes.admin import Operator, Page
from amnex.carriers import service
from amnex.carriers.models import Connector, Route
from amnex.receipts.dlr import ReceiptIdFormat
from amnex.runtime import Runtime

router = APIRouter(prefix="/admin/v1", tags=["admin"])
log = logging.getLogger(__name__)


class SmppSettings(BaseModel):
    """Every `SmppConnectorConfig` field except id, name and password; checked by the service.

    A test keeps this list and `SmppConnectorConfig` in step.
    """

    model_config = ConfigDict(extra="forbid")

    system_type: str | None = None
    bind_type: Literal["transceiver", "transmitter", "receiver"] | None = None
    binds: int | None = Field(None, description="Connections (binds) to open, 1 to 32.")
    window: int | None = Field(None, description="Unanswered submit_sm per bind, 1 to 1000.")
    throughput_per_s: float | None = Field(None, description="Messages per second; 0 = no cap.")
    response_timeout_s: float | None = None
    enquire_link_interval_s: float | None = None
    reconnect_min_s: float | None = None
    reconnect_max_s: float | None = None
    throttle_backoff_s: float | None = None
    throttle_retries: int | None = None
    split: Literal["udh", "sar"] | None = None
    allow_latin1: bool | None = None
    source_ton: int | None = None
    source_npi: int | None = None
    dest_ton: int | None = None
    dest_npi: int | None = None
    registered_delivery: bool | None = None
    receipt_id_format: ReceiptIdFormat | None = None
    tls: bool | None = None
    tls_verify: bool | None = None
    tls_ca_file: str | None = None


# The body fields that are not SMPP settings.
_NOT_SETTINGS = frozenset({"name", "password", "enabled"})


class ConnectorCreate(SmppSettings):
    name: str = Field(min_length=1, max_length=100)
    host: str
    port: int
    system_id: str
    password: str = Field("", description="Sealed with the master key; never returned.")
    enabled: bool = True


class ConnectorUpdate(SmppSettings):
    host: str | None = None
    port: int | None = None
    system_id: str | None = None
    password: str | None = Field(None, description='A new password; "" removes it.')
    enabled: bool | None = None


class ConnectorOut(BaseModel):
    id: str
    name: str
    kind: str
    enabled: bool
    config: dict[str, Any]
    password_set: bool
    created_at: datetime
    updated_at: datetime


class RouteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(description="Today `sms`.")
    connector_ids: list[str] = Field(
        max_length=32, description="Tried in this order: the first that is up takes a message."
    )
    account_id: str | None = Field(None, description="Only this account's messages; else all.")
    country: str | None = Field(None, description="ISO 3166-1 alpha-2 region of the number.")
    prefix: str = Field("", max_length=16, description="Leading digits of the E.164 number.")
    priority: int = Field(0, ge=-1000, le=1000, description="Breaks ties; higher wins.")
    allow_landline: bool = Field(
        False, description="SMS to numbers typed as landlines may use this route."
    )


class RouteOut(BaseModel):
    id: str
    channel: str
    account_id: str | None
    country: str | None
    prefix: str
    connector_ids: list[str]
    priority: int
    allow_landline: bool
    created_at: datetime


def _config_of(body: SmppSettings) -> dict[str, Any]:
    """The settings the request gave (a given `null` included: the service judges it)."""
    return body.model_dump(exclude_unset=True, exclude=set(_NOT_SETTINGS))


def connector_out(connector: Connector) -> ConnectorOut:
    return ConnectorOut(**service.connector_out(connector))


def route_out(route: Route) -> RouteOut:
    return RouteOut(**service.route_out(route))


async def _refresh_routes(rt: Runtime) -> None:
    # After commit, and never failing the request: the change is stored, and a table that
    # could not be reloaded now is reloaded by the cache's own loop within its TTL.
    try:
        await rt.routes.refresh()
    except Exception as exc:
        log.warning("reloading routes after a change failed (%s)", type(exc).__name__)


@router.get("/connectors", response_model=Page[ConnectorOut])
async def list_connectors(request: Request, op: Operator) -> Response:
    async with runtime(request).db.read_session() as session:
        connectors = await service.list_connectors(session)
        return json_response(
            request, Page[ConnectorOut](data=[connector_out(c) for c in connectors])
        )


@router.post("/connectors", status_code=201, response_model=ConnectorOut)
async def create_connector(request: Request, body: ConnectorCreate, op: Operator) -> Response:
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        connector = await service.create_connector(
            session,
            rt.secret_box,
            name=body.name,
            config=_config_of(body),
            password=body.password,
            enabled=body.enabled,
            actor=op.actor,
        )
        out = connector_out(connector)
    await _refresh_routes(rt)
    return json_response(request, out, status_code=201)


@router.get("/connectors/{connector_id}", response_model=ConnectorOut)
async def get_connector(request: Request, connector_id: str, op: Operator) -> Response:
    async with runtime(request).db.read_session() as session:
        connector = await service.get_connector_or_raise(session, connector_id)
        return json_response(request, connector_out(connector))


@router.patch("/connectors/{connector_id}", response_model=ConnectorOut)
async def update_connector(
    request: Request, connector_id: str, body: ConnectorUpdate, op: Operator
) -> Response:
    rt = runtime(request)
    config = _config_of(body)
    async with rt.db.unit_of_work() as session:
        connector = await service.update_connector(
            session,
            rt.secret_box,
            connector_id,
            config=config or None,
            password=body.password,
            enabled=body.enabled,
            actor=op.actor,
        )
        out = connector_out(connector)
    await _refresh_routes(rt)
    return json_response(request, out)


@router.delete("/connectors/{connector_id}", status_code=204)
async def delete_connector(request: Request, connector_id: str, op: Operator) -> Response:
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        await service.delete_connector(session, connector_id, actor=op.actor)
    await _refresh_routes(rt)
    return Response(status_code=204)


@router.get("/routes", response_model=Page[RouteOut])
async def list_routes(request: Request, op: Operator) -> Response:
    async with runtime(request).db.read_session() as session:
        routes = await service.list_routes(session)
        return json_response(request, Page[RouteOut](data=[route_out(r) for r in routes]))


@router.post("/routes", status_code=201, response_model=RouteOut)
async def create_route(request: Request, body: RouteCreate, op: Operator) -> Response:
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        route = await service.create_route(
            session,
            channel=body.channel,
            connector_ids=body.connector_ids,
            account_id=body.account_id,
            country=body.country,
            prefix=body.prefix,
            priority=body.priority,
            allow_landline=body.allow_landline,
            actor=op.actor,
        )
        out = route_out(route)
    await _refresh_routes(rt)
    return json_response(request, out, status_code=201)


@router.delete("/routes/{route_id}", status_code=204)
async def delete_route(request: Request, route_id: str, op: Operator) -> Response:
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        await service.delete_route(session, route_id, actor=op.actor)
    await _refresh_routes(rt)
    return Response(status_code=204)
