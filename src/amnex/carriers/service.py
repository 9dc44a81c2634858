"""Carriers: creating, changing and reading connectors and routes (callers own the transaction).

A connector's password is sealed with the master key before it reaches the row and is never
returned by a read: `connector_out` says only whether one is set. Every change is written to
the audit log under the operator who made it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.accounts.service import get_account_or_raise
from amnex.carriers.models import Connector, Route
from amnex.channels.smpp.config import SmppConnectorConfig
from amnex.clock import utc_now
from amnex.db.ids import looks_like_id, new_id
from amnex.errors import Conflict, NotFound, ValidationFailed
from amnex.privacy.audit import record_audit
from amnex.privacy.crypto import CryptoError, SecretBox

ROUTED_CHANNELS = frozenset({"sms"})
_PREFIX = re.compile(r"\d{0,15}")
_COUNTRY = re.compile(r"[A-Z]{2}")
# Set by the connector's id and name, never part of `config`.
_IDENTITY_FIELDS = frozenset({"id", "name", "password"})


def _secret_context(connector_id: str) -> str:
    return f"connector:{connector_id}"


def _validated_config(
    connector_id: str, name: str, config: dict[str, Any], password: str
) -> SmppConnectorConfig:
    unexpected = _IDENTITY_FIELDS & config.keys()
    if unexpected:
        raise ValidationFailed(f"config: {', '.join(sorted(unexpected))} are not config fields")
    try:
        return SmppConnectorConfig.model_validate(
            {**config, "id": connector_id, "name": name, "password": password}
        )
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(p) for p in err["loc"]),
                "message": err["msg"],
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationFailed(
            "config: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            errors=errors,
        ) from None


def _stored_config(validated: SmppConnectorConfig) -> dict[str, Any]:
    return validated.model_dump(mode="json", exclude=set(_IDENTITY_FIELDS))


def connector_out(connector: Connector) -> dict[str, Any]:
    return {
        "id": connector.id,
        "name": connector.name,
        "kind": connector.kind,
        "enabled": connector.enabled,
        "config": dict(connector.config),
        "password_set": connector.secret is not None,
        "created_at": connector.created_at,
        "updated_at": connector.updated_at,
    }


def route_out(route: Route) -> dict[str, Any]:
    return {
        "id": route.id,
        "channel": route.channel,
        "account_id": route.account_id,
        "country": route.country,
        "prefix": route.prefix,
        "connector_ids": list(route.connector_ids),
        "priority": route.priority,
        "allow_landline": route.allow_landline,
        "created_at": route.created_at,
    }


async def get_connector_or_raise(session: AsyncSession, connector_id: str) -> Connector:
    connector = (
        await session.get(Connector, connector_id) if looks_like_id(connector_id, "con") else None
    )
    if connector is None:
        raise NotFound(f"no connector {connector_id}")
    return connector


async def list_connectors(session: AsyncSession) -> list[Connector]:
    return list(await session.scalars(select(Connector).order_by(Connector.name)))


async def create_connector(
    session: AsyncSession,
    box: SecretBox,
    *,
    name: str,
    config: dict[str, Any],
    password: str,
    enabled: bool = True,
    actor: str,
) -> Connector:
    """Add an SMPP connector; its password is sealed before it is stored."""
    name = name.strip()
    if not name:
        raise ValidationFailed("name: required", field="name")
    if await session.scalar(select(Connector.id).where(Connector.name == name)):
        raise Conflict(f"a connector named {name!r} exists")
    connector_id = new_id("con")
    validated = _validated_config(connector_id, name, config, password)
    now = utc_now()
    connector = Connector(
        id=connector_id,
        name=name,
        kind="smpp",
        enabled=enabled,
        config=_stored_config(validated),
        secret=box.seal(password, context=_secret_context(connector_id)) if password else None,
        created_at=now,
        updated_at=now,
    )
    session.add(connector)
    record_audit(
        session,
        actor=actor,
        action="connector.create",
        target_type="connector",
        target_id=connector_id,
        detail={"name": name},
    )
    return connector


async def update_connector(
    session: AsyncSession,
    box: SecretBox,
    connector_id: str,
    *,
    config: dict[str, Any] | None = None,
    password: str | None = None,
    enabled: bool | None = None,
    actor: str,
) -> Connector:
    """Change some settings (merged into the stored ones), the password, or `enabled`."""
    connector = await get_connector_or_raise(session, connector_id)
    changed: list[str] = []
    if config is not None or password is not None:
        if password is not None:
            current_password = password
        else:
            try:
                current_password = connector_password(box, connector)
            except CryptoError:
                # Sealed under another master key: the settings cannot be checked with it.
                raise ValidationFailed(
                    "password: the stored password does not open with this server's master "
                    "key; give the password again with the change",
                    field="password",
                ) from None
        merged = {**connector.config, **(config or {})}
        validated = _validated_config(connector.id, connector.name, merged, current_password)
        connector.config = _stored_config(validated)
        changed.extend(sorted((config or {}).keys()))
        if password is not None:
            connector.secret = (
                box.seal(password, context=_secret_context(connector.id)) if password else None
            )
            changed.append("password")
    if enabled is not None and enabled != connector.enabled:
        connector.enabled = enabled
        changed.append("enabled")
    connector.updated_at = utc_now()
    record_audit(
        session,
        actor=actor,
        action="connector.update",
        target_type="connector",
        target_id=connector.id,
        detail={"changed": changed},
    )
    return connector


async def delete_connector(session: AsyncSession, connector_id: str, *, actor: str) -> None:
    """Remove a connector; refused while a route still sends to it."""
    connector = await get_connector_or_raise(session, connector_id)
    used_by = [
        route.id
        for route in await session.scalars(select(Route))
        if connector.id in route.connector_ids
    ]
    if used_by:
        raise Conflict(
            f"routes {', '.join(used_by)} send to this connector; remove or change them first"
        )
    await session.delete(connector)
    record_audit(
        session,
        actor=actor,
        action="connector.delete",
        target_type="connector",
        target_id=connector.id,
        detail={"name": connector.name},
    )


def connector_password(box: SecretBox, connector: Connector) -> str:
    if connector.secret is None:
        return ""
    return box.open(connector.secret, context=_secret_context(connector.id))


def connector_runtime_config(box: SecretBox, connector: Connector) -> SmppConnectorConfig:
    """The full settings a worker binds with, password opened."""
    return SmppConnectorConfig.model_validate(
        {
            **connector.config,
            "id": connector.id,
            "name": connector.name,
            "password": connector_password(box, connector),
        }
    )


async def list_routes(session: AsyncSession) -> list[Route]:
    return list(
        await session.scalars(select(Route).order_by(Route.channel, Route.created_at, Route.id))
    )


async def create_route(
    session: AsyncSession,
    *,
    channel: str,
    connector_ids: list[str],
    account_id: str | None = None,
    country: str | None = None,
    prefix: str = "",
    priority: int = 0,
    allow_landline: bool = False,
    actor: str,
) -> Route:
    if channel not in ROUTED_CHANNELS:
        raise ValidationFailed(
            f"channel: routes are for {', '.join(sorted(ROUTED_CHANNELS))}", field="channel"
        )
    prefix = prefix.strip().removeprefix("+")
    if not _PREFIX.fullmatch(prefix):
        raise ValidationFailed("prefix: up to 15 digits of the E.164 number", field="prefix")
    if country is not None:
        country = country.strip().upper()
        if not _COUNTRY.fullmatch(country):
            raise ValidationFailed("country: an ISO 3166-1 alpha-2 code", field="country")
    if not connector_ids:
        raise ValidationFailed("connector_ids: at least one connector", field="connector_ids")
    if len(set(connector_ids)) != len(connector_ids):
        raise ValidationFailed("connector_ids: each connector once", field="connector_ids")
    for connector_id in connector_ids:
        try:
            await get_connector_or_raise(session, connector_id)
        except NotFound:
            raise ValidationFailed(
                f"connector_ids: no connector {connector_id}", field="connector_ids"
            ) from None
    if account_id is not None:
        try:
            await get_account_or_raise(session, account_id)
        except NotFound:
            raise ValidationFailed(
                f"account_id: no account {account_id}", field="account_id"
            ) from None
    route = Route(
        id=new_id("rte"),
        channel=channel,
        account_id=account_id,
        country=country,
        prefix=prefix,
        connector_ids=list(connector_ids),
        priority=priority,
        allow_landline=allow_landline,
        created_at=utc_now(),
        created_by=actor,
    )
    session.add(route)
    record_audit(
        session,
        actor=actor,
        action="route.create",
        target_type="route",
        target_id=route.id,
        detail={k: v for k, v in route_out(route).items() if k != "created_at"},
    )
    return route


async def delete_route(session: AsyncSession, route_id: str, *, actor: str) -> None:
    route = await session.get(Route, route_id) if looks_like_id(route_id, "rte") else None
    if route is None:
        raise NotFound(f"no route {route_id}")
    await session.delete(route)
    record_audit(
        session,
        actor=actor,
        action="route.delete",
        target_type="route",
        target_id=route.id,
        detail={"channel": route.channel, "connector_ids": list(route.connector_ids)},
    )
