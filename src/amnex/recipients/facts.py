"""Recipients: what the gate must know about recipients, for a whole batch in three reads.

For each message the gate asks (`compliance.gate.RecipientFacts`): has the recipient opted
out of this account, or platform-wide, on this channel (SMS and MMS count as one) or on all
channels; does a live
marketing consent exist (the newest ledger entry for the account, channel and address is a
grant); and is this the account's first message to the recipient. A batch of messages is
answered with at most three set-based reads — opt-outs, consents, earlier messages — matched
in Python, never one query per message. Every match is on blind indexes
(`privacy.keys`): no address is read or compared in clear.

The same reads run on three connections: the accept path's own `sqlite3` connection (inside
its write transaction, on its thread), the accept path's asyncpg connection (just before its
one write statement, see `db.bulk.BulkInserter.insert_after`), and an `AsyncSession` when
dispatch re-checks what it claims.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.compliance.gate import NO_FACTS, RecipientFacts

ALL_CHANNELS = "all"
# The opt-outs that stop a message on each channel. A text is a text: a STOP to an SMS
# also stops MMS to the number, and the other way round.
_SUPPRESSED_BY = {
    "sms": ("sms", "mms", ALL_CHANNELS),
    "mms": ("mms", "sms", ALL_CHANNELS),
}


@dataclass(frozen=True, slots=True)
class FactsQuery:
    account_id: str
    channel: str
    address_index: str  # the recipient's blind index (`privacy.keys.blind_index`)
    consent: bool = False  # look up marketing consent
    first_contact: bool = False  # look up earlier outbound messages


# (account_id or None, channel, address index) of opt-outs; (account_id, channel, address
# index, seq, action) of consents; (account_id, peer index) of earlier outbound messages.
OptOutRow = tuple[str | None, str, str]
ConsentRow = tuple[str, str, str, int, str]
ContactRow = tuple[str, str]


def _assemble(
    asks: Sequence[FactsQuery],
    opt_outs: Sequence[OptOutRow],
    consents: Sequence[ConsentRow],
    contacts: Sequence[ContactRow],
) -> list[RecipientFacts]:
    suppressed: dict[tuple[str, str], set[str | None]] = {}
    for account_id, channel, address in opt_outs:
        suppressed.setdefault((address, channel), set()).add(account_id)
    newest: dict[tuple[str, str, str], tuple[int, str]] = {}
    for account_id, channel, address, seq, action in consents:
        key = (account_id, channel, address)
        if key not in newest or newest[key][0] < seq:
            newest[key] = (seq, action)
    contacted = set(contacts)
    out = []
    for ask in asks:
        scope: str | None = None
        for channel in _SUPPRESSED_BY.get(ask.channel, (ask.channel, ALL_CHANNELS)):
            holders = suppressed.get((ask.address_index, channel))
            if holders:
                if ask.account_id in holders:
                    scope = "account"
                    break
                if None in holders:
                    scope = "platform"
        consented = False
        if ask.consent:
            latest = newest.get((ask.account_id, ask.channel, ask.address_index))
            consented = latest is not None and latest[1] == "granted"
        first = ask.first_contact and (ask.account_id, ask.address_index) not in contacted
        if scope is None and not consented and not first:
            out.append(NO_FACTS)
        else:
            out.append(RecipientFacts(opted_out=scope, consented=consented, first_contact=first))
    return out


def _sets(asks: Sequence[FactsQuery]) -> tuple[list[str], list[str], list[str], list[str]]:
    addresses = sorted({a.address_index for a in asks})
    accounts = sorted({a.account_id for a in asks})
    consent_addresses = sorted({a.address_index for a in asks if a.consent})
    contact_addresses = sorted({a.address_index for a in asks if a.first_contact})
    return addresses, accounts, consent_addresses, contact_addresses


# --- SQLite, on the accept path's own connection ------------------------------------------


# Lists travel as one JSON array each, so the statements are fixed text (compiled once).
_SQLITE_OPT_OUTS = (
    "SELECT account_id, channel, address_index FROM opt_outs "
    "WHERE address_index IN (SELECT value FROM json_each(?)) "
    "AND (account_id IS NULL OR account_id IN (SELECT value FROM json_each(?)))"
)
_SQLITE_CONSENTS = (
    "SELECT account_id, channel, address_index, seq, action FROM consent_entries "
    "WHERE account_id IN (SELECT value FROM json_each(?)) "
    "AND address_index IN (SELECT value FROM json_each(?)) AND purpose = 'marketing'"
)
_SQLITE_CONTACTS = (
    "SELECT DISTINCT account_id, peer_index FROM messages "
    "WHERE account_id IN (SELECT value FROM json_each(?)) "
    "AND peer_index IN (SELECT value FROM json_each(?)) "
    "AND direction = 'outbound' AND channel IN ('sms', 'mms')"
)


def facts_sqlite(conn: sqlite3.Connection, asks: Sequence[FactsQuery]) -> list[RecipientFacts]:
    """The facts for `asks`, read on `conn` (inside the caller's transaction)."""
    if not asks:
        return []
    addresses, accounts, consent_addresses, contact_addresses = _sets(asks)
    in_accounts = json.dumps(accounts)
    opt_outs = conn.execute(_SQLITE_OPT_OUTS, (json.dumps(addresses), in_accounts)).fetchall()
    consents = []
    if consent_addresses:
        consents = conn.execute(
            _SQLITE_CONSENTS, (in_accounts, json.dumps(consent_addresses))
        ).fetchall()
    contacts = []
    if contact_addresses:
        contacts = conn.execute(
            _SQLITE_CONTACTS, (in_accounts, json.dumps(contact_addresses))
        ).fetchall()
    return _assemble(asks, opt_outs, consents, contacts)


# --- PostgreSQL, on the accept path's asyncpg connection -----------------------------------


async def facts_asyncpg(driver: Any, asks: Sequence[FactsQuery]) -> list[RecipientFacts]:
    """The facts for `asks`, read on an asyncpg connection (inside its transaction)."""
    if not asks:
        return []
    addresses, accounts, consent_addresses, contact_addresses = _sets(asks)
    opt_outs = await driver.fetch(
        "SELECT account_id, channel, address_index FROM opt_outs "
        "WHERE address_index = ANY($1::text[]) "
        "AND (account_id IS NULL OR account_id = ANY($2::text[]))",
        addresses,
        accounts,
    )
    consents = []
    if consent_addresses:
        consents = await driver.fetch(
            "SELECT account_id, channel, address_index, seq, action FROM consent_entries "
            "WHERE account_id = ANY($1::text[]) AND address_index = ANY($2::text[]) "
            "AND purpose = 'marketing'",
            accounts,
            consent_addresses,
        )
    contacts = []
    if contact_addresses:
        contacts = await driver.fetch(
            "SELECT DISTINCT account_id, peer_index FROM messages "
            "WHERE account_id = ANY($1::text[]) AND peer_index = ANY($2::text[]) "
            "AND direction = 'outbound' AND channel IN ('sms', 'mms')",
            accounts,
            contact_addresses,
        )
    return _assemble(
        asks,
        [tuple(r) for r in opt_outs],
        [tuple(r) for r in consents],
        [tuple(r) for r in contacts],
    )


# --- Any database, through a session (dispatch) --------------------------------------------

_OPT_OUTS = text(
    "SELECT account_id, channel, address_index FROM opt_outs "
    "WHERE address_index IN :addresses AND (account_id IS NULL OR account_id IN :accounts)"
).bindparams(bindparam("addresses", expanding=True), bindparam("accounts", expanding=True))
_CONSENTS = text(
    "SELECT account_id, channel, address_index, seq, action FROM consent_entries "
    "WHERE account_id IN :accounts AND address_index IN :addresses AND purpose = 'marketing'"
).bindparams(bindparam("addresses", expanding=True), bindparam("accounts", expanding=True))
_CONTACTS = text(
    "SELECT DISTINCT account_id, peer_index FROM messages "
    "WHERE account_id IN :accounts AND peer_index IN :addresses "
    "AND direction = 'outbound' AND channel IN ('sms', 'mms')"
).bindparams(bindparam("addresses", expanding=True), bindparam("accounts", expanding=True))


async def facts_session(session: AsyncSession, asks: Sequence[FactsQuery]) -> list[RecipientFacts]:
    """The facts for `asks`, read through a session (dispatch's re-check, the preview)."""
    if not asks:
        return []
    addresses, accounts, consent_addresses, contact_addresses = _sets(asks)
    opt_outs = (
        await session.execute(_OPT_OUTS, {"addresses": addresses, "accounts": accounts})
    ).all()
    consents: Sequence[Any] = []
    if consent_addresses:
        consents = (
            await session.execute(_CONSENTS, {"addresses": consent_addresses, "accounts": accounts})
        ).all()
    contacts: Sequence[Any] = []
    if contact_addresses:
        contacts = (
            await session.execute(_CONTACTS, {"addresses": contact_addresses, "accounts": accounts})
        ).all()
    return _assemble(
        asks,
        [tuple(r) for r in opt_outs],
        [tuple(r) for r in consents],
        [tuple(r) for r in contacts],
    )
