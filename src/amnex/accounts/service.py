"""Accounts: creating accounts, keys, senders and operators; resolving a credential to its context.

Services take the caller's session and never commit (the caller's `unit_of_work()` does).
Secrets — API keys (`amx_…`) and operator tokens (`amxop_…`) — are 32 random bytes, shown
once and stored only as SHA-256 hashes: with 256 bits of entropy a slow hash adds nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.accounts.models import Account, ApiKey, Operator, Sender
from amnex.clock import utc_now
from amnex.compliance.addresses import normalise_phone_number
from amnex.compliance.policy import AccountCompliance, account_compliance
from amnex.db.ids import new_id
from amnex.errors import Conflict, NotFound, ValidationFailed
from amnex.privacy.audit import record_audit
from amnex.privacy.keys import add_account_key

API_KEY_PREFIX = "amx_"
OPERATOR_TOKEN_PREFIX = "amxop_"  # noqa: S105 - a prefix, not a secret
SCOPES = frozenset({"send", "read", "manage"})
SENDER_CHANNELS = frozenset({"email", "sms", "mms", "push"})


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def parse_scopes(scopes: list[str] | str) -> str:
    items = scopes.split(",") if isinstance(scopes, str) else scopes
    cleaned = sorted({s.strip() for s in items if s.strip()})
    unknown = set(cleaned) - SCOPES
    if not cleaned or unknown:
        raise ValidationFailed(
            f"scopes must be a non-empty subset of {sorted(SCOPES)}; unknown: {sorted(unknown)}"
        )
    return ",".join(cleaned)


@dataclass(frozen=True, slots=True)
class KeyContext:
    """What an authenticated API key may do, resolved once and cached by `api.auth`."""

    key_id: str
    account_id: str
    scopes: frozenset[str]
    rate_limit_per_s: int | None
    account_settings: dict[str, Any]
    senders: dict[str, frozenset[str]] = field(default_factory=dict)
    default_senders: dict[str, str] = field(default_factory=dict)
    compliance: AccountCompliance | None = None  # None: the defaults, home country US

    @property
    def rules(self) -> AccountCompliance:
        """The account's resolved compliance settings."""
        if self.compliance is None:
            return account_compliance(
                self.account_id, country="US", business_name="", settings=self.account_settings
            )
        return self.compliance


@dataclass(frozen=True, slots=True)
class OperatorContext:
    operator_id: str
    name: str

    @property
    def actor(self) -> str:
        return f"operator:{self.name}"


async def create_account(
    session: AsyncSession,
    *,
    business_name: str,
    contact_name: str,
    email: str,
    phone: str | None = None,
    country: str = "US",
    settings: dict[str, Any] | None = None,
    actor: str,
) -> tuple[Account, ApiKey, str]:
    """A new active account and its first API key (all scopes). Returns the key's plaintext."""
    now = utc_now()
    account = Account(
        id=new_id("acc"),
        business_name=business_name,
        contact_name=contact_name,
        email=email,
        phone=phone,
        country=country.upper(),
        status="active",
        settings=settings or {},
        created_at=now,
        updated_at=now,
    )
    session.add(account)
    await session.flush()
    record_audit(
        session, actor=actor, action="account.create", target_type="account", target_id=account.id
    )
    add_account_key(session, account.id)
    key, plaintext = await create_api_key(
        session, account_id=account.id, name="default", scopes=sorted(SCOPES), actor=actor
    )
    return account, key, plaintext


async def get_account_or_raise(session: AsyncSession, account_id: str) -> Account:
    account = await session.get(Account, account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    return account


async def create_api_key(
    session: AsyncSession,
    *,
    account_id: str,
    name: str,
    scopes: list[str] | str,
    rate_limit_per_s: int | None = None,
    actor: str,
) -> tuple[ApiKey, str]:
    await get_account_or_raise(session, account_id)
    plaintext = new_secret(API_KEY_PREFIX)
    key = ApiKey(
        id=new_id("key"),
        account_id=account_id,
        name=name,
        key_hash=hash_secret(plaintext),
        prefix=plaintext[: len(API_KEY_PREFIX) + 6],
        scopes=parse_scopes(scopes),
        rate_limit_per_s=rate_limit_per_s,
        created_at=utc_now(),
        created_by=actor,
    )
    session.add(key)
    record_audit(
        session,
        actor=actor,
        action="api_key.create",
        target_type="api_key",
        target_id=key.id,
        detail={"account_id": account_id, "scopes": key.scopes},
    )
    return key, plaintext


async def list_api_keys(session: AsyncSession, account_id: str) -> list[ApiKey]:
    rows = await session.scalars(
        select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.id)
    )
    return list(rows)


async def revoke_api_key(
    session: AsyncSession, *, account_id: str, key_id: str, actor: str
) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None or key.account_id != account_id:
        raise NotFound(f"no API key {key_id}")
    if key.revoked_at is None:
        key.revoked_at = utc_now()
        record_audit(
            session,
            actor=actor,
            action="api_key.revoke",
            target_type="api_key",
            target_id=key.id,
            detail={"account_id": account_id},
        )
    return key


SHORT_CODE_MAX_DIGITS = 8


def normalise_sender(channel: str, address: str) -> str:
    """Email senders are a lowercase address or `@domain`; numbers keep their E.164 form."""
    if channel not in SENDER_CHANNELS:
        raise ValidationFailed(f"unknown channel {channel!r}")
    address = address.strip()
    if channel == "email":
        if address.startswith("@"):
            domain = address[1:].lower()
            if not domain or "." not in domain or "@" in domain:
                raise ValidationFailed(f"not a domain: {address!r}")
            return "@" + domain
        _, addr = parseaddr(address)
        if "@" not in addr:
            raise ValidationFailed(f"not an email address: {address!r}")
        return addr.lower()
    if not address:
        raise ValidationFailed("empty sender address")
    if address.startswith("+") or (address.isdigit() and len(address) > SHORT_CODE_MAX_DIGITS):
        # A full number: stored in E.164 so that inbound messages (whose destination is
        # normalised the same way) find the account that owns it. Short codes and
        # alphanumeric sender ids are kept as given.
        return normalise_phone_number("+" + address.lstrip("+"), field="address")
    return address


async def add_sender(
    session: AsyncSession,
    *,
    account_id: str,
    channel: str,
    address: str,
    is_default: bool = False,
    actor: str,
) -> Sender:
    """Allow an account to send from `address` (operator-verified); optionally its default."""
    await get_account_or_raise(session, account_id)
    normalised = normalise_sender(channel, address)
    if is_default and normalised.startswith("@"):
        raise ValidationFailed("a default sender must be a whole address, not a domain")
    existing = await session.scalar(
        select(Sender).where(
            Sender.account_id == account_id,
            Sender.channel == channel,
            Sender.address == normalised,
        )
    )
    if existing is not None:
        raise Conflict(f"{normalised} is already a {channel} sender of this account")
    if channel != "email":
        owner = await session.scalar(
            select(Sender.account_id).where(Sender.channel == channel, Sender.address == normalised)
        )
        if owner is not None:
            # Inbound messages to a number go to the one account that owns it.
            raise Conflict(f"{normalised} belongs to another account")
    if is_default:
        await session.execute(
            update(Sender)
            .where(Sender.account_id == account_id, Sender.channel == channel)
            .values(is_default=False)
        )
    sender = Sender(
        id=new_id("snd"),
        account_id=account_id,
        channel=channel,
        address=normalised,
        is_default=is_default,
        created_at=utc_now(),
        created_by=actor,
    )
    session.add(sender)
    record_audit(
        session,
        actor=actor,
        action="sender.create",
        target_type="sender",
        target_id=sender.id,
        detail={"account_id": account_id, "channel": channel},
    )
    return sender


async def list_senders(session: AsyncSession, account_id: str) -> list[Sender]:
    rows = await session.scalars(
        select(Sender).where(Sender.account_id == account_id).order_by(Sender.id)
    )
    return list(rows)


async def delete_sender(
    session: AsyncSession, *, account_id: str, sender_id: str, actor: str
) -> None:
    sender = await session.get(Sender, sender_id)
    if sender is None or sender.account_id != account_id:
        raise NotFound(f"no sender {sender_id}")
    await session.delete(sender)
    record_audit(
        session,
        actor=actor,
        action="sender.delete",
        target_type="sender",
        target_id=sender_id,
        detail={"account_id": account_id},
    )


async def load_key_context(session: AsyncSession, key_hash: str) -> KeyContext | None:
    """The context of a live key of an active account, or None (unknown, revoked, suspended)."""
    row = (
        await session.execute(
            select(ApiKey, Account)
            .join(Account, Account.id == ApiKey.account_id)
            .where(ApiKey.key_hash == key_hash)
        )
    ).first()
    if row is None:
        return None
    key, account = row
    if key.revoked_at is not None or account.status != "active":
        return None
    senders: dict[str, set[str]] = {}
    defaults: dict[str, str] = {}
    for sender in await list_senders(session, account.id):
        senders.setdefault(sender.channel, set()).add(sender.address)
        if sender.is_default:
            defaults[sender.channel] = sender.address
    return KeyContext(
        key_id=key.id,
        account_id=account.id,
        scopes=frozenset(key.scopes.split(",")),
        rate_limit_per_s=key.rate_limit_per_s,
        account_settings=dict(account.settings),
        senders={channel: frozenset(addrs) for channel, addrs in senders.items()},
        default_senders=defaults,
        compliance=account_compliance(
            account.id,
            country=account.country,
            business_name=account.business_name,
            settings=account.settings,
        ),
    )


async def touch_api_key(session: AsyncSession, key_id: str) -> None:
    await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utc_now()))


async def create_operator(
    session: AsyncSession, *, name: str, email: str | None, actor: str
) -> tuple[Operator, str]:
    existing = await session.scalar(select(Operator).where(Operator.name == name))
    if existing is not None:
        raise Conflict(f"an operator named {name!r} exists")
    token = new_secret(OPERATOR_TOKEN_PREFIX)
    operator = Operator(
        id=new_id("opr"),
        name=name,
        email=email,
        token_hash=hash_secret(token),
        created_at=utc_now(),
    )
    session.add(operator)
    record_audit(
        session,
        actor=actor,
        action="operator.create",
        target_type="operator",
        target_id=operator.id,
    )
    return operator, token


async def list_operators(session: AsyncSession) -> list[Operator]:
    return list(await session.scalars(select(Operator).order_by(Operator.id)))


async def revoke_operator(session: AsyncSession, *, name: str, actor: str) -> Operator:
    """Revoke an operator's token; running API servers stop accepting it within seconds."""
    operator = await session.scalar(select(Operator).where(Operator.name == name))
    if operator is None:
        raise NotFound(f"no operator named {name!r}")
    if operator.revoked_at is None:
        operator.revoked_at = utc_now()
        record_audit(
            session,
            actor=actor,
            action="operator.revoke",
            target_type="operator",
            target_id=operator.id,
        )
    return operator


async def load_operator_context(session: AsyncSession, token_hash: str) -> OperatorContext | None:
    operator = await session.scalar(select(Operator).where(Operator.token_hash == token_hash))
    if operator is None or operator.revoked_at is not None:
        return None
    return OperatorContext(operator_id=operator.id, name=operator.name)
