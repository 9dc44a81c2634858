"""API: `/admin/v1` — operators manage accounts, API keys and senders. Every action is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, EmailStr, Field, RootModel, ValidationError
from sqlalchemy import select
from starlette.responses import Response

from amnex.accounts import closure, service
from amnex.accounts.models import Account, ApiKey, Sender
from amnex.accounts.service import OperatorContext
from amnex.api.deps import Reason, json_body, json_response, require_operator, runtime
from amnex.clock import utc_now
from amnex.compliance.policy import ComplianceSettings
from amnex.privacy.audit import record_audit
from amnex.privacy.keys import forget_account_key
from amnex.privacy.retention_settings import RetentionSettings, limit_errors, retention_of

router = APIRouter(prefix="/admin/v1", tags=["admin"])

Operator = Annotated[OperatorContext, Depends(require_operator)]
Scope = Literal["send", "read", "manage"]
T = TypeVar("T")
ALL_SCOPES: tuple[Scope, ...] = ("send", "read", "manage")


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    business_name: str = Field(min_length=1, max_length=200)
    contact_name: str = Field(min_length=1, max_length=200)
    email: EmailStr
    phone: str | None = Field(None, max_length=32)
    country: str = Field("US", min_length=2, max_length=2)
    rate_limit_per_s: int | None = Field(None, ge=1, le=1_000_000)


class AccountOut(BaseModel):
    id: str
    business_name: str
    contact_name: str
    email: str
    phone: str | None
    country: str
    status: str
    settings: dict[str, Any]
    created_at: datetime


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(default_factory=lambda: list(ALL_SCOPES), min_length=1)
    rate_limit_per_s: int | None = Field(None, ge=1, le=1_000_000)


class ApiKeyOut(BaseModel):
    id: str
    account_id: str
    name: str
    prefix: str
    scopes: list[str]
    rate_limit_per_s: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The API key itself. Shown once; only its hash is stored.")


class AccountCreated(AccountOut):
    api_key: ApiKeyCreated


class SenderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["email", "sms", "mms", "push"]
    address: str = Field(
        min_length=1,
        max_length=320,
        description="An email address, a whole domain as `@example.com`, or a number/sender id.",
    )
    is_default: bool = False


class SenderOut(BaseModel):
    id: str
    account_id: str
    channel: str
    address: str
    is_default: bool
    created_at: datetime


class Page(BaseModel, Generic[T]):
    data: list[T]


def account_out(account: Account) -> AccountOut:
    return AccountOut(
        id=account.id,
        business_name=account.business_name,
        contact_name=account.contact_name,
        email=account.email,
        phone=account.phone,
        country=account.country,
        status=account.status,
        settings=dict(account.settings),
        created_at=account.created_at,
    )


def key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        account_id=key.account_id,
        name=key.name,
        prefix=key.prefix,
        scopes=key.scopes.split(","),
        rate_limit_per_s=key.rate_limit_per_s,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


def sender_out(sender: Sender) -> SenderOut:
    return SenderOut(
        id=sender.id,
        account_id=sender.account_id,
        channel=sender.channel,
        address=sender.address,
        is_default=sender.is_default,
        created_at=sender.created_at,
    )


@router.post("/accounts", status_code=201, response_model=AccountCreated)
async def create_account(request: Request, body: AccountCreate, op: Operator) -> Response:
    settings = {"rate_limit_per_s": body.rate_limit_per_s} if body.rate_limit_per_s else {}
    async with runtime(request).db.unit_of_work() as session:
        account, key, plaintext = await service.create_account(
            session,
            business_name=body.business_name,
            contact_name=body.contact_name,
            email=str(body.email),
            phone=body.phone,
            country=body.country,
            settings=settings,
            actor=op.actor,
        )
        out = AccountCreated(
            **account_out(account).model_dump(),
            api_key=ApiKeyCreated(**key_out(key).model_dump(), key=plaintext),
        )
    return json_response(request, out, status_code=201)


# Reading accounts shows contact names, emails and phone numbers: personal data, so each read
# needs a reason (X-Amnex-Reason) and is audited with it (DESIGN: every staff access to
# personal data is logged).


@router.get("/accounts", response_model=Page[AccountOut])
async def list_accounts(request: Request, op: Operator, reason: Reason) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        rows = list(await session.scalars(select(Account).order_by(Account.id)))
        record_audit(
            session,
            actor=op.actor,
            actor_id=op.operator_id,
            action="account.list",
            target_type="account",
            target_id="*",
            detail={"count": len(rows)},
            reason=reason,
        )
        page = Page[AccountOut](data=[account_out(a) for a in rows])
    return json_response(request, page)


@router.get("/accounts/{account_id}", response_model=AccountOut)
async def get_account(request: Request, account_id: str, op: Operator, reason: Reason) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        account = await service.get_account_or_raise(session, account_id)
        record_audit(
            session,
            actor=op.actor,
            actor_id=op.operator_id,
            action="account.read",
            target_type="account",
            target_id=account.id,
            reason=reason,
        )
        out = account_out(account)
    return json_response(request, out)


@router.post("/accounts/{account_id}/keys", status_code=201, response_model=ApiKeyCreated)
async def create_key(
    request: Request, account_id: str, body: ApiKeyCreate, op: Operator
) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        key, plaintext = await service.create_api_key(
            session,
            account_id=account_id,
            name=body.name,
            scopes=list(body.scopes),
            rate_limit_per_s=body.rate_limit_per_s,
            actor=op.actor,
        )
        out = ApiKeyCreated(**key_out(key).model_dump(), key=plaintext)
    return json_response(request, out, status_code=201)


@router.get("/accounts/{account_id}/keys", response_model=Page[ApiKeyOut])
async def list_keys(request: Request, account_id: str, op: Operator) -> Response:
    async with runtime(request).db.read_session() as session:
        await service.get_account_or_raise(session, account_id)
        keys = await service.list_api_keys(session, account_id)
        return json_response(request, Page[ApiKeyOut](data=[key_out(k) for k in keys]))


@router.delete("/accounts/{account_id}/keys/{key_id}", response_model=ApiKeyOut)
async def revoke_key(request: Request, account_id: str, key_id: str, op: Operator) -> Response:
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        key = await service.revoke_api_key(
            session, account_id=account_id, key_id=key_id, actor=op.actor
        )
        out = key_out(key)
    rt.auth.forget()
    return json_response(request, out)


@router.post("/accounts/{account_id}/senders", status_code=201, response_model=SenderOut)
async def create_sender(
    request: Request, account_id: str, body: SenderCreate, op: Operator
) -> Response:
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        sender = await service.add_sender(
            session,
            account_id=account_id,
            channel=body.channel,
            address=body.address,
            is_default=body.is_default,
            actor=op.actor,
        )
        out = sender_out(sender)
    rt.auth.forget()
    return json_response(request, out, status_code=201)


@router.get("/accounts/{account_id}/senders", response_model=Page[SenderOut])
async def list_senders(request: Request, account_id: str, op: Operator) -> Response:
    async with runtime(request).db.read_session() as session:
        await service.get_account_or_raise(session, account_id)
        senders = await service.list_senders(session, account_id)
        return json_response(request, Page[SenderOut](data=[sender_out(s) for s in senders]))


@router.delete("/accounts/{account_id}/senders/{sender_id}", status_code=204)
async def delete_sender(
    request: Request, account_id: str, sender_id: str, op: Operator
) -> Response:
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        await service.delete_sender(
            session, account_id=account_id, sender_id=sender_id, actor=op.actor
        )
    rt.auth.forget()
    return Response(status_code=204)


# Compliance settings: what the gate enforces for the account (`compliance.policy`).


class _Changes(RootModel[dict[str, Any]]):
    """Some compliance settings, by name; checked once merged with the current ones."""


S = TypeVar("S", bound=BaseModel)


def _in_body(errors: Any) -> list[dict[str, Any]]:
    """Validation errors located in the request body, as FastAPI reports them."""
    return [{**error, "loc": ("body", *error["loc"])} for error in errors]


def _patched(model: type[S], stored: dict[str, Any] | None, changes: dict[str, Any]) -> S:
    """`stored` settings with `changes` applied (null restores a field's default), validated;
    an unknown field or a bad value is a 422 naming it, and nothing changes."""
    unknown = sorted(set(changes) - set(model.model_fields))
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("body", n), "msg": "unknown field"}
                for n in unknown
            ]
        )
    current = dict(stored or {})
    for name, value in changes.items():
        if value is None:
            current.pop(name, None)
        else:
            current[name] = value
    try:
        return model.model_validate(current)
    except ValidationError as exc:
        raise RequestValidationError(_in_body(exc.errors())) from None


@router.get("/accounts/{account_id}/compliance", response_model=ComplianceSettings)
async def get_compliance(request: Request, account_id: str, op: Operator) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        account = await service.get_account_or_raise(session, account_id)
        out = ComplianceSettings.model_validate(account.settings.get("compliance") or {})
        record_audit(
            session,
            actor=op.actor,
            action="account.compliance.read",
            target_type="account",
            target_id=account.id,
        )
    return json_response(request, out)


@router.patch(
    "/accounts/{account_id}/compliance",
    response_model=ComplianceSettings,
    description="Change some of the account's compliance settings: the fields given replace "
    "the current values (null restores a field's default); the others are kept.",
)
async def update_compliance(request: Request, account_id: str, op: Operator) -> Response:
    changes = (await json_body(request, _Changes)).root
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        account = await service.get_account_or_raise(session, account_id)
        updated = _patched(ComplianceSettings, account.settings.get("compliance"), changes)
        account.settings = {
            **account.settings,
            "compliance": updated.model_dump(mode="json", exclude_defaults=True),
        }
        record_audit(
            session,
            actor=op.actor,
            action="account.compliance.update",
            target_type="account",
            target_id=account.id,
            detail={"fields": sorted(changes)},
        )
    rt.auth.forget()
    return json_response(request, updated)


# Retention settings: how long the account's content and metadata are kept, within the
# operator's limits (`privacy.retention_settings`); the purge applies them.


@router.get("/accounts/{account_id}/retention", response_model=RetentionSettings)
async def get_retention(request: Request, account_id: str, op: Operator) -> Response:
    async with runtime(request).db.unit_of_work() as session:
        account = await service.get_account_or_raise(session, account_id)
        out = retention_of(account.settings)
        record_audit(
            session,
            actor=op.actor,
            action="account.retention.read",
            target_type="account",
            target_id=account.id,
        )
    return json_response(request, out)


@router.patch(
    "/accounts/{account_id}/retention",
    response_model=RetentionSettings,
    description="Change some of the account's retention settings: the fields given replace "
    "the current values (null restores a field's default); the others are kept. A value above "
    "the operator's limit is refused.",
)
async def update_retention(request: Request, account_id: str, op: Operator) -> Response:
    changes = (await json_body(request, _Changes)).root
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        account = await service.get_account_or_raise(session, account_id)
        updated = _patched(RetentionSettings, account.settings.get("retention"), changes)
        over = limit_errors(updated, rt.settings, set(changes))
        if over:
            raise RequestValidationError(_in_body(over))
        stored = updated.model_dump(mode="json", exclude_defaults=True)
        # No key at all when every field is at its default: the purge then treats the
        # account with every other one, in its single default pass.
        rest = {k: v for k, v in account.settings.items() if k != "retention"}
        account.settings = {**rest, "retention": stored} if stored else rest
        record_audit(
            session,
            actor=op.actor,
            action="account.retention.update",
            target_type="account",
            target_id=account.id,
            detail={"fields": sorted(changes)},
        )
    rt.auth.forget()
    return json_response(request, updated)


class AccountClosed(BaseModel):
    """The proof of a closure: rows removed and anonymised per table, what was kept and why."""

    account: AccountOut
    removed: dict[str, int]
    anonymised: dict[str, int]
    retained: dict[str, Any]
    data_key_destroyed: bool


@router.post(
    "/accounts/{account_id}/close",
    response_model=AccountClosed,
    description="Close the account: its data key is destroyed, its messages are kept only as "
    "billing lines (no address, content or metadata), everything else about its recipients is "
    "deleted, its API keys and senders go. Needs an `X-Amnex-Reason` header; cannot be undone.",
)
async def close_account(
    request: Request, account_id: str, op: Operator, reason: Reason
) -> Response:
    rt = runtime(request)
    async with rt.db.unit_of_work() as session:
        proof = await closure.close_account(
            session,
            account_id,
            actor=op.actor,
            actor_id=op.operator_id,
            reason=reason,
            now=utc_now(),
        )
        account = await service.get_account_or_raise(session, account_id)
        out = AccountClosed(account=account_out(account), **proof)
    forget_account_key(account_id)
    rt.auth.forget()
    return json_response(request, out)
