"""API: the records of processing (`/v1` and `/admin/v1`) and the privacy report (operator)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from amnex.accounts.service import KeyContext, OperatorContext
from amnex.api.deps import Reason, json_response, require_operator, require_scope, runtime
from amnex.config import Settings
from amnex.privacy.audit import record_audit
from amnex.privacy.records import Records, build_records, load_records_file
from amnex.privacy.report import PrivacyReport, build_report

Operator = Annotated[OperatorContext, Depends(require_operator)]
Reader = Annotated[KeyContext, Depends(require_scope("read"))]


def routers(settings: Settings) -> list[APIRouter]:
    """The routers, over the operator's records file loaded (and validated) now: a bad file
    stops the API at start with `RecordsFileError`, naming the file and the field."""
    operator_file = load_records_file(settings)
    client = APIRouter(prefix="/v1/privacy", tags=["privacy"])
    admin = APIRouter(prefix="/admin/v1/privacy", tags=["admin"])

    async def records(request: Request) -> Response:
        rt = runtime(request)
        async with rt.db.read_session() as session:
            out = await build_records(session, rt.settings, operator_file)
        return json_response(request, out)

    @client.get("/records", response_model=Records)
    async def get_records(request: Request, key: Reader) -> Response:
        return await records(request)

    @admin.get("/records", response_model=Records)
    async def get_records_admin(request: Request, op: Operator) -> Response:
        return await records(request)

    # The report names accounts: a reason is required, and the read is audited with it.
    @admin.get("/report", response_model=PrivacyReport)
    async def get_report(request: Request, op: Operator, reason: Reason) -> Response:
        rt = runtime(request)
        async with rt.db.unit_of_work() as session:
            report = await build_report(session, rt.settings, operator_file)
            record_audit(
                session,
                actor=op.actor,
                actor_id=op.operator_id,
                action="privacy.report",
                target_type="platform",
                target_id="*",
                detail={"findings": len(report.findings)},
                reason=reason,
            )
        return json_response(request, report)

    return [client, admin]
