"""API: `/v1/consents` — the account's consent ledger: record, read, list, export, verify.

Reading needs the `read` scope, recording needs `send` or `manage`. Entries are never changed
or deleted; a withdrawal is a new entry with `"action": "revoked"`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from amnex.api.deps import json_response, runtime
from amnex.api.routes.optouts import (
    EXPORT_PAGE_SIZE,
    Evidence,
    ExportFormat,
    IdempotentCreate,
    ReadKey,
    WriteKey,
    audit_read,
    check_time_filters,
    create_idempotently,
    csv_response,
    export_filters,
    export_pages,
    key_actor,
    wants_csv,
)
from amnex.recipients import service
from amnex.recipients.models import ConsentEntry

router = APIRouter(prefix="/v1", tags=["consents"])

ConsentChannel = Literal["sms", "mms", "email", "push"]
Purpose = Literal["transactional", "marketing"]
Action = Literal["granted", "revoked"]
ConsentSource = Literal["web_form", "keyword", "paper", "api", "verbal"]


class ConsentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: ConsentChannel
    address: str = Field(min_length=1, max_length=320)
    purpose: Purpose
    action: Action = "granted"
    source: ConsentSource
    text_shown: str | None = Field(
        None,
        max_length=service.TEXT_SHOWN_MAX_LENGTH,
        description="The exact consent text the person saw or heard. Required for a grant.",
    )
    evidence: Evidence = Field(
        default_factory=dict,
        description="web_form: ip and url (user_agent, …); keyword: text; paper: document; "
        "verbal: agent.",
    )
    occurred_at: datetime = Field(description="When the person consented; not in the future.")
    override_opt_out: bool = Field(
        False,
        description="Record a keyword or web_form grant that occurred after the address's "
        "opt-out, and lift that opt-out.",
    )


class ConsentOut(BaseModel):
    id: str
    account_id: str
    seq: int
    channel: str
    address: str | None = Field(description="Null once the subject's erasure removed it.")
    purpose: str
    action: str
    source: str
    text_shown: str | None
    evidence: dict[str, Any] | None = Field(description="Null once erased.")
    occurred_at: datetime
    recorded_at: datetime
    recorded_by: str
    prev_hash: str
    hash: str


class ConsentList(BaseModel):
    data: list[ConsentOut]
    next_cursor: str | None = None


class ChainReportOut(BaseModel):
    valid: bool
    entries: int
    first_broken: str | None = Field(description="The first entry that does not verify.")
    head_hash: str | None = Field(description="The hash of the newest entry; keep it to compare.")
    reason: str | None


CONSENT_COLUMNS = tuple(ConsentOut.model_fields)


def consent_out(entry: ConsentEntry) -> ConsentOut:
    return ConsentOut(**service.consent_out(entry))


def _location(consent_id: str) -> str:
    return f"/v1/consents/{consent_id}"


@router.get(
    "/consents",
    response_model=ConsentList,
    summary="List the account's consent ledger, newest first (or export it all as CSV)",
    responses={200: {"content": {"text/csv": {}}}},
)
async def list_consents(
    request: Request,
    ctx: ReadKey,
    channel: Annotated[ConsentChannel | None, Query()] = None,
    address: Annotated[str | None, Query(max_length=320)] = None,
    purpose: Annotated[Purpose | None, Query()] = None,
    action: Annotated[Action | None, Query()] = None,
    source: Annotated[ConsentSource | None, Query()] = None,
    recorded_after: Annotated[datetime | None, Query()] = None,
    recorded_before: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    format_: Annotated[ExportFormat | None, Query(alias="format")] = None,
) -> Response:
    check_time_filters(recorded_after=recorded_after, recorded_before=recorded_before)
    filters = service.ConsentFilter(
        channel=channel,
        address=address,
        purpose=purpose,
        action=action,
        source=source,
        recorded_after=recorded_after,
        recorded_before=recorded_before,
    )
    db = runtime(request).db
    if wants_csv(request, format_):

        def fetch(session: AsyncSession, after: str | None) -> Awaitable[Any]:
            return service.list_consents(
                session, ctx.account_id, filters, limit=EXPORT_PAGE_SIZE, cursor=after
            )

        await audit_read(db, ctx, "consent.export", "consent", "*", export_filters(filters))
        pages = export_pages(db, fetch, service.consent_out)
        return csv_response(request, "consents.csv", CONSENT_COLUMNS, pages)
    async with db.read_session() as session:
        rows, next_cursor = await service.list_consents(
            session, ctx.account_id, filters, limit=limit, cursor=cursor
        )
        page = ConsentList(data=[consent_out(e) for e in rows], next_cursor=next_cursor)
    await audit_read(
        db,
        ctx,
        "consent.list",
        "consent",
        "*",
        {
            "count": len(page.data),
            "ids": [e.id for e in page.data],
            **({"address": address} if address else {}),
        },
    )
    return json_response(request, page)


@router.post(
    "/consents",
    status_code=201,
    response_model=ConsentOut,
    summary="Record a consent grant or revocation",
)
async def create_consent(request: Request, body: ConsentCreate, ctx: WriteKey) -> Response:
    async def create(session: AsyncSession) -> tuple[str, int, BaseModel]:
        entry = await service.record_consent(
            session,
            account_id=ctx.account_id,
            channel=body.channel,
            address=body.address,
            purpose=body.purpose,
            action=body.action,
            source=body.source,
            text_shown=body.text_shown,
            evidence=body.evidence,
            occurred_at=body.occurred_at,
            recorded_by=key_actor(ctx),
            override_opt_out=body.override_opt_out,
        )
        return entry.id, 201, consent_out(entry)

    async def load(session: AsyncSession, consent_id: str) -> BaseModel:
        return consent_out(await service.get_consent_or_raise(session, ctx.account_id, consent_id))

    idem = IdempotentCreate.of(request, ctx.account_id, "POST /v1/consents", body)
    return await create_idempotently(request, idem, create, load, _location)


@router.get(
    "/consents/verify",
    response_model=ChainReportOut,
    summary="Recompute the account's consent hash chain",
)
async def verify_consents(request: Request, ctx: ReadKey) -> Response:
    async with runtime(request).db.read_session() as session:
        report = await service.verify_chain(session, ctx.account_id)
    return json_response(
        request,
        ChainReportOut(
            valid=report.valid,
            entries=report.entries,
            first_broken=report.first_broken,
            head_hash=report.head_hash,
            reason=report.reason,
        ),
    )


@router.get("/consents/{consent_id}", response_model=ConsentOut, summary="Get a consent entry")
async def get_consent(request: Request, consent_id: str, ctx: ReadKey) -> Response:
    db = runtime(request).db
    async with db.read_session() as session:
        entry = await service.get_consent_or_raise(session, ctx.account_id, consent_id)
        out = consent_out(entry)
    await audit_read(db, ctx, "consent.read", "consent", out.id)
    return json_response(request, out)
