"""API: `/v1/audit-log` — an account's own audit chain; `/admin/v1/audit-log` — the
platform's (or an account's), and `/admin/v1/disclosures` — disclosures to an authority.

Reading an audit log shows personal fields (who acted, addresses in list filters), so each
read is itself audited; an operator's read needs `X-Amnex-Reason`. Verifying shows hashes
only and is not audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from amnex.accounts import service as accounts
from amnex.api.deps import Reason, json_response, runtime
from amnex.api.routes.admin import Operator
from amnex.api.routes.optouts import ReadKey, audit_read, check_time_filters
from amnex.db.ids import looks_like_id
from amnex.errors import NotFound
from amnex.privacy.audit import (
    PLATFORM_CHAIN,
    REASON_MAX_LENGTH,
    AuditChainReport,
    AuditEntry,
    AuditFilter,
    audit_entry_out,
    list_audit_entries,
    record_access,
    record_disclosure,
    verify_audit_chain,
)

router = APIRouter(prefix="/v1", tags=["audit log"])
admin_router = APIRouter(prefix="/admin/v1", tags=["admin"])


class AuditEntryOut(BaseModel):
    id: str
    chain: str = Field(description='"platform", or the account id of an account\'s chain.')
    seq: int = Field(description="Position in the chain: 1, 2, 3, …")
    at: datetime
    actor: str = Field(
        description="Who acted: `api_key:key_…`, `operator:<name>` (an operator's name is "
        "shown to operators only; accounts see `operator:op_…`), `cli:<user>`, …"
    )
    actor_kind: str
    actor_id: str | None
    action: str
    target_type: str
    target_id: str
    account_id: str | None
    reason: str | None = Field(description="Why (an operator's X-Amnex-Reason).")
    legal_basis: str | None = Field(description="A disclosure's legal basis.")
    detail: dict[str, Any]
    personal: dict[str, Any] | None = Field(
        description="Personal fields, kept outside the hash chain; null once erased."
    )
    prev_hash: str
    hash: str


class AuditEntryList(BaseModel):
    data: list[AuditEntryOut]
    next_cursor: str | None = None


class AuditChainReportOut(BaseModel):
    valid: bool
    entries: int
    first_broken: str | None = Field(description="The first entry that does not verify.")
    head_hash: str | None = Field(description="The hash of the newest entry; keep it to compare.")
    reason: str | None


class DisclosureCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: str = Field(min_length=1, max_length=40)
    authority: str = Field(min_length=1, max_length=200, description="Who received the data.")
    legal_basis: str = Field(
        min_length=1,
        max_length=REASON_MAX_LENGTH,
        description="The subpoena, court order or law that required the disclosure.",
    )
    description: str = Field(
        min_length=1,
        max_length=2000,
        description="What was disclosed. May name people: stored outside the hash chain.",
    )


def _filters(
    action: str | None, actor: str | None, after: datetime | None, before: datetime | None
) -> AuditFilter:
    check_time_filters(after=after, before=before)
    return AuditFilter(action=action, actor=actor, after=after, before=before)


def _page(rows: list[AuditEntry], next_cursor: str | None, *, operator: bool) -> AuditEntryList:
    return AuditEntryList(
        data=[AuditEntryOut(**audit_entry_out(e, operator_names=operator)) for e in rows],
        next_cursor=next_cursor,
    )


def _report(report: AuditChainReport) -> AuditChainReportOut:
    return AuditChainReportOut(
        valid=report.valid,
        entries=report.entries,
        first_broken=report.first_broken,
        head_hash=report.head_hash,
        reason=report.reason,
    )


ActionQuery = Annotated[str | None, Query(max_length=80)]
ActorQuery = Annotated[
    str | None,
    Query(max_length=160, description="A kind (`operator`), `kind:id`, or the actor as shown."),
]
TimeQuery = Annotated[datetime | None, Query()]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]


# Client API


@router.get(
    "/audit-log",
    response_model=AuditEntryList,
    summary="The account's audit log, newest first",
)
async def list_audit_log(
    request: Request,
    ctx: ReadKey,
    action: ActionQuery = None,
    actor: ActorQuery = None,
    after: TimeQuery = None,
    before: TimeQuery = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Response:
    filters = _filters(action, actor, after, before)
    db = runtime(request).db
    async with db.read_session() as session:
        rows, next_cursor = await list_audit_entries(
            session, ctx.account_id, filters, limit=limit, cursor=cursor
        )
        page = _page(rows, next_cursor, operator=False)
    await audit_read(db, ctx, "audit_log.read", "audit_log", ctx.account_id, {"count": len(rows)})
    return json_response(request, page)


@router.get(
    "/audit-log/verify",
    response_model=AuditChainReportOut,
    summary="Recompute the account's audit hash chain",
)
async def verify_audit_log(request: Request, ctx: ReadKey) -> Response:
    async with runtime(request).db.read_session() as session:
        report = await verify_audit_chain(session, ctx.account_id)
    return json_response(request, _report(report))


# Operator API


async def _chain(request: Request, account_id: str | None) -> str:
    """The platform's chain, or an existing account's."""
    if account_id is None:
        return PLATFORM_CHAIN
    if not looks_like_id(account_id, "acc"):
        raise NotFound(f"no account {account_id}")
    async with runtime(request).db.read_session() as session:
        return (await accounts.get_account_or_raise(session, account_id)).id


AccountQuery = Annotated[
    str | None, Query(max_length=40, description="An account's chain instead of the platform's.")
]


@admin_router.get("/audit-log", response_model=AuditEntryList)
async def admin_list_audit_log(
    request: Request,
    op: Operator,
    reason: Reason,
    account_id: AccountQuery = None,
    action: ActionQuery = None,
    actor: ActorQuery = None,
    after: TimeQuery = None,
    before: TimeQuery = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Response:
    filters = _filters(action, actor, after, before)
    chain = await _chain(request, account_id)
    db = runtime(request).db
    async with db.read_session() as session:
        rows, next_cursor = await list_audit_entries(
            session, chain, filters, limit=limit, cursor=cursor
        )
        page = _page(rows, next_cursor, operator=True)
    await record_access(
        db,
        actor=op.actor,
        actor_id=op.operator_id,
        action="audit_log.read",
        target_type="audit_log",
        target_id=chain,
        chain=chain,
        reason=reason,
        detail={"count": len(rows)},
    )
    return json_response(request, page)


@admin_router.get("/audit-log/verify", response_model=AuditChainReportOut)
async def admin_verify_audit_log(
    request: Request, op: Operator, account_id: AccountQuery = None
) -> Response:
    chain = await _chain(request, account_id)
    async with runtime(request).db.read_session() as session:
        report = await verify_audit_chain(session, chain)
    return json_response(request, _report(report))


@admin_router.post("/disclosures", status_code=201, response_model=AuditEntryOut)
async def create_disclosure(request: Request, body: DisclosureCreate, op: Operator) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        account = await accounts.get_account_or_raise(session, body.account_id)
        entry = record_disclosure(
            session,
            account_id=account.id,
            authority=body.authority,
            legal_basis=body.legal_basis,
            description=body.description,
            actor=op.actor,
            actor_id=op.operator_id,
        )
        await session.flush()
        out = AuditEntryOut(**audit_entry_out(entry, operator_names=True))
    return json_response(request, out, status_code=201)
