"""Receipts: acting on what recipients reply — opt-out, opt-in, help — as the reply is stored.

Runs in the transaction that stores the inbound message, before the SMSC gets its
`deliver_sm_resp` (`receipts.writer`): once Amnex has answered, the opt-out is durable, and
every later claim re-checks the suppression list (`dispatch.claim`), so no send dispatched
after the reply reaches the recipient.

- An opt-out (a keyword, or free text such as "please stop texting me" — FCC 2024:
  revocation by any reasonable means; `receipts.keywords`) puts the sender of the reply on
  the suppression list of the account that owns the number they wrote to, for SMS (STOPALL:
  every channel), with the reply's text as evidence. The first opt-out is confirmed with
  one reply; a second STOP changes nothing and sends nothing.
- An opt-in (START, UNSTOP, YES) lifts that opt-out and is confirmed once; an opt-in
  without an opt-out to lift sends nothing.
- HELP is answered every time, opted out or not (CTIA).

Replies are ordinary outbound SMS of the account (it sees and pays for them) from the
number the recipient wrote to, marked with their `origin`, which exempts them from the
gate's re-check: a STOP must be confirmed to the number that just opted out. Nothing here
profiles recipients: the text is classified only for these three intents (policy §10).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.accounts.models import Account
from amnex.channels.smpp.text import prepare_text
from amnex.compliance.policy import AccountCompliance, account_compliance
from amnex.db.ids import new_id
from amnex.errors import InvalidAddress
from amnex.messages.models import Message, MessageEvent
from amnex.messages.status import Status
from amnex.metrics import INBOUND_MESSAGES
from amnex.privacy.keys import open_address
from amnex.receipts.keywords import (
    ReplyClassification,
    ReplyIntent,
    classify_reply,
    help_reply,
    opt_in_confirmation,
    opt_out_confirmation,
)
from amnex.recipients.service import add_opt_out, remove_opt_out

log = logging.getLogger(__name__)

REPLY_ORIGINS = frozenset({"opt_out_reply", "opt_in_reply", "help_reply"})
_EVERY_CHANNEL = frozenset({"STOPALL", "STOP ALL"})
_EVIDENCE_TEXT_MAX = 640


async def act_on_replies(
    session: AsyncSession, inbound: Sequence[Message], *, now: datetime
) -> None:
    """Classify each stored inbound SMS and apply what it asks, in the caller's transaction."""
    texts = [m for m in inbound if m.body and not (m.meta or {}).get("body_format")]
    if not texts:
        return
    accounts, contacts = await _accounts(session, {m.account_id for m in texts})
    for message in texts:
        account = accounts.get(message.account_id)
        if account is None:
            continue
        settings = account.settings
        found = classify_reply(
            message.body or "",
            extra_opt_out=settings.opt_out_keywords,
            extra_opt_in=settings.opt_in_keywords,
            extra_help=settings.help_keywords,
        )
        if found.intent is ReplyIntent.NONE:
            continue
        message.meta = {**(message.meta or {}), "reply_intent": found.intent.value}
        contact = settings.help_contact or contacts.get(message.account_id, "")
        await _apply(session, message, account, found, contact=contact, now=now)


async def _accounts(
    session: AsyncSession, ids: set[str]
) -> tuple[dict[str, AccountCompliance], dict[str, str]]:
    """Each account's compliance settings, and the contact its HELP reply gives when it set
    none (its phone number, else its email address)."""
    rows = (
        await session.execute(
            select(
                Account.id,
                Account.country,
                Account.business_name,
                Account.settings,
                Account.phone,
                Account.email,
            ).where(Account.id.in_(sorted(ids)))
        )
    ).all()
    rules = {
        row.id: account_compliance(
            row.id, country=row.country, business_name=row.business_name, settings=row.settings
        )
        for row in rows
    }
    return rules, {row.id: row.phone or row.email or "" for row in rows}


async def _apply(
    session: AsyncSession,
    inbound: Message,
    account: AccountCompliance,
    found: ReplyClassification,
    *,
    contact: str,
    now: datetime,
) -> None:
    settings = account.settings
    brand = settings.brand_name or account.brand
    evidence: dict[str, Any] = {
        "inbound_message_id": inbound.id,
        "text": (inbound.body or "")[:_EVIDENCE_TEXT_MAX],
        "recognised_as": found.how,
        "matched": found.matched,
    }
    sender = open_address(inbound.from_addr) or ""
    try:
        if found.intent is ReplyIntent.OPT_OUT:
            channel = "all" if found.matched in _EVERY_CHANNEL else "sms"
            source = "keyword" if found.how == "keyword" else "free_text_reply"
            _, new = await add_opt_out(
                session,
                account_id=account.account_id,
                channel=channel,
                address=sender,
                source=source,
                evidence=evidence,
            )
            INBOUND_MESSAGES.labels(outcome="opt_out").inc()
            if new:
                text = opt_out_confirmation(brand, override=settings.opt_out_reply)
                _reply(session, inbound, text, origin="opt_out_reply", now=now)
        elif found.intent is ReplyIntent.OPT_IN:
            lifted = await remove_opt_out(
                session,
                account_id=account.account_id,
                channel="sms",
                address=sender,
                source="keyword",
                evidence=evidence,
                include_all_channels=True,
            )
            INBOUND_MESSAGES.labels(outcome="opt_in").inc()
            if lifted:
                text = opt_in_confirmation(brand, override=settings.opt_in_reply)
                _reply(session, inbound, text, origin="opt_in_reply", now=now)
        else:
            INBOUND_MESSAGES.labels(outcome="help").inc()
            text = help_reply(brand, contact, override=settings.help_reply)
            _reply(session, inbound, text, origin="help_reply", now=now)
    except InvalidAddress:
        # A source Amnex cannot write as E.164 is not one it can ever send to either.
        log.warning("reply %s: the sender's number is not E.164; nothing applied", inbound.id)


def _reply(
    session: AsyncSession, inbound: Message, text: str, *, origin: str, now: datetime
) -> None:
    """Queue one SMS back to the recipient, from the number they wrote to."""
    encoded = prepare_text(text)
    message = Message(
        id=new_id("msg"),
        account_id=inbound.account_id,
        channel="sms",
        direction="outbound",
        origin=origin,
        # Sealed under the same account's key: the stored forms carry over as they are.
        from_addr=inbound.to_addr,
        to_addr=inbound.from_addr,
        peer_index=inbound.peer_index,
        category="transactional",
        status=Status.QUEUED.value,
        body=text,
        segments=encoded.segments,
        encoding=encoded.encoding,
        meta={"in_reply_to": inbound.id},
        created_at=now,
        updated_at=now,
        next_attempt_at=now,
        attempts=0,
        event_seq=1,
    )
    session.add(message)
    session.add(
        MessageEvent(
            message_id=message.id,
            account_id=inbound.account_id,
            seq=1,
            status=Status.QUEUED.value,
            at=now,
            detail={"origin": origin, "in_reply_to": inbound.id},
        )
    )
