"""Accounts: closing an account — its keys and rows destroyed, its billing lines kept bare.

Design note. Closing is one transaction (`close_account`), run by an operator
(`POST /admin/v1/accounts/{id}/close`, or `amnex accounts close`), with a reason:

- **Keys first.** The account's data key is destroyed (`privacy.keys.destroy_account_key`):
  every address sealed under it — in the tables, in free pages, in WAL frames, dumps and
  backups — is unreadable from that moment, whatever copy survives.
- **Messages become billing lines.** What the law asks an operator to keep for its
  accounting period is that a message was sent, when, on which channel, in how many segments
  and at what price. Each message keeps exactly that: its content, metadata, error text,
  provider detail and callback are emptied, the recipient's address is replaced by
  `[erased]` and its blind index removed. Scheduled and queued messages are canceled first;
  a message already with the carrier keeps its row and takes its receipt as usual. Its
  events and parts are deleted. The billing lines go with the metadata retention like any
  other message, so the operator's `metadata_retention_days` is the legal period.
- **Everything else about recipients is deleted:** opt-outs and their history, the consent
  ledger and its chain head, data-subject requests with their trails and exports, webhook
  endpoints, events, deliveries and their log, notices. (Inbound parts belong to no account
  yet; they are joined or dropped within a day.)
- **The account itself** stays as a `closed` row (the billing lines refer to it), its
  business name kept for the invoices, its contact name, email and phone erased, its settings
  emptied; its API keys and senders are deleted, so its numbers can be given to another
  account. The account's audit chain stays (it is the record of what was done), with the
  personal fields of its entries removed; the closure itself is the chain's last entry.
- The result is the proof: rows removed and rows anonymised per table, and what was kept
  and why.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.accounts.models import Account, ApiKey, Sender
from amnex.errors import Conflict, NotFound
from amnex.messages.models import Message, MessageEvent, MessagePart
from amnex.messages.service import transition
from amnex.messages.status import CANCELABLE_STATUSES, Status
from amnex.privacy.audit import AuditEntry, delete_audit_personal, record_audit
from amnex.privacy.keys import destroy_account_key
from amnex.privacy.requests import SubjectRequest, SubjectRequestEvent, SubjectRequestExport
from amnex.privacy.subjects import ERASED, reduce_to_billing_lines
from amnex.recipients.models import ConsentChainHead, ConsentEntry, OptOut, OptOutEvent
from amnex.webhooks.models import (
    Notice,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

_CHUNK = 500


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def close_account(
    session: AsyncSession,
    account_id: str,
    *,
    actor: str,
    actor_id: str | None,
    reason: str,
    now: datetime,
) -> dict[str, Any]:
    """Close the account in the caller's transaction (see the design note); the proof."""
    account = await session.get(Account, account_id, with_for_update=True)
    if account is None:
        raise NotFound(f"no account {account_id}")
    if account.status == "closed":
        raise Conflict(f"account {account_id} is already closed")
    removed: dict[str, int] = {}
    anonymised: dict[str, int] = {}

    key_destroyed = await destroy_account_key(session, account_id, now=now)

    pending = list(
        await session.scalars(
            select(Message)
            .where(
                Message.account_id == account_id,
                Message.status.in_([s.value for s in CANCELABLE_STATUSES]),
            )
            .with_for_update()
        )
    )
    for message in pending:
        transition(session, message, Status.CANCELED, at=now, detail={"source": "account_closed"})
        message.next_attempt_at = None
    await session.flush()
    in_account = select(Message.id).where(Message.account_id == account_id)
    removed["message_events"] = _rowcount(
        await session.execute(delete(MessageEvent).where(MessageEvent.message_id.in_(in_account)))
    )
    removed["message_parts"] = _rowcount(
        await session.execute(delete(MessagePart).where(MessagePart.message_id.in_(in_account)))
    )
    anonymised["messages"] = await reduce_to_billing_lines(
        session, Message.account_id == account_id, now=now
    )

    removed["opt_out_events"] = _rowcount(
        await session.execute(delete(OptOutEvent).where(OptOutEvent.account_id == account_id))
    )
    removed["opt_outs"] = _rowcount(
        await session.execute(delete(OptOut).where(OptOut.account_id == account_id))
    )
    removed["consent_entries"] = _rowcount(
        await session.execute(delete(ConsentEntry).where(ConsentEntry.account_id == account_id))
    )
    await session.execute(delete(ConsentChainHead).where(ConsentChainHead.account_id == account_id))
    requests = select(SubjectRequest.id).where(SubjectRequest.account_id == account_id)
    await session.execute(
        delete(SubjectRequestExport).where(SubjectRequestExport.request_id.in_(requests))
    )
    await session.execute(
        delete(SubjectRequestEvent).where(SubjectRequestEvent.request_id.in_(requests))
    )
    removed["subject_requests"] = _rowcount(
        await session.execute(delete(SubjectRequest).where(SubjectRequest.account_id == account_id))
    )
    for table, column in (
        (WebhookAttempt, WebhookAttempt.account_id),
        (WebhookDelivery, WebhookDelivery.account_id),
        (WebhookEvent, WebhookEvent.account_id),
        (WebhookEndpoint, WebhookEndpoint.account_id),
        (Notice, Notice.account_id),
    ):
        removed[str(table.__tablename__)] = _rowcount(
            await session.execute(delete(table).where(column == account_id))
        )
    removed["api_keys"] = _rowcount(
        await session.execute(delete(ApiKey).where(ApiKey.account_id == account_id))
    )
    removed["senders"] = _rowcount(
        await session.execute(delete(Sender).where(Sender.account_id == account_id))
    )
    entry_ids = list(
        await session.scalars(select(AuditEntry.id).where(AuditEntry.chain == account_id))
    )
    for start in range(0, len(entry_ids), _CHUNK):
        await delete_audit_personal(session, entry_ids=entry_ids[start : start + _CHUNK])
    anonymised["audit_entries"] = len(entry_ids)

    account.status = "closed"
    account.contact_name = ERASED
    account.email = ERASED
    account.phone = None
    account.settings = {}
    account.updated_at = now
    proof: dict[str, Any] = {
        "removed": removed,
        "anonymised": anonymised,
        "retained": {
            "messages": {
                "rows": anonymised["messages"],
                "why": "billing lines (channel, status, segments, price, timestamps): address, "
                "content and metadata removed; deleted with the metadata retention",
            },
            "audit_entries": {
                "rows": anonymised["audit_entries"],
                "why": "the account's audit trail; personal fields removed",
            },
            "account": {
                "rows": 1,
                "why": "status closed and business name for the invoices; contact erased",
            },
        },
        "data_key_destroyed": key_destroyed,
    }
    record_audit(
        session,
        actor=actor,
        actor_id=actor_id,
        action="account.close",
        target_type="account",
        target_id=account_id,
        reason=reason,
        detail={"removed": removed, "anonymised": anonymised},
    )
    return proof
