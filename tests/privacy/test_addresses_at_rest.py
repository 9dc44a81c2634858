"""Privacy: recipient addresses sealed under per-account data keys and found by a keyed blind
index — never in clear on disk; an account's closure destroys its key (policy §8, §9)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, text

from amnex.accounts.models import Account, ApiKey, Sender
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.messages.models import Message, MessageEvent
from amnex.privacy.audit import AuditEntry, verify_audit_chain
from amnex.privacy.backfill import MARKER_ID, seal_existing
from amnex.privacy.crypto import SecretBox, generate_key, parse_key
from amnex.privacy.keys import (
    AddressKeyUnavailable,
    DataKey,
    IndexModeMismatch,
    blind_index,
    data_key_id,
    installed,
    open_address,
    start_address_keys,
)
from amnex.privacy.retention import purge_once
from amnex.recipients import service as recipients
from amnex.recipients.models import ConsentChainHead, ConsentEntry, OptOut
from support import (
    PERSONAL_TABLES,
    AccountHandle,
    eventually,
    make_account,
    make_operator,
    on_disk,
    serve_api,
    serve_system,
)

pytestmark = pytest.mark.asyncio
REASON = {"X-Amnex-Reason": "ticket DPO-9"}


def reader() -> str:
    return f"reader-{secrets.token_hex(6)}@example.com"


def email(to: str) -> dict[str, str]:
    return {"channel": "email", "to": to, "subject": "Your code", "body": "Code 1234"}


async def test_an_address_is_sealed_indexed_and_never_on_disk_in_clear(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given messages to one address and its opt-out, through the API
    to = reader()
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(to))
        listed = await api.client.get(f"/v1/messages?to={to}", headers=account.headers)
        opted = await api.client.post(
            "/v1/opt-outs",
            headers=account.headers,
            json={"channel": "email", "address": to, "evidence": {"text": f"from {to}"}},
        )
        blocked = await api.client.post("/v1/messages", headers=account.headers, json=email(to))

    # Then the API shows the address in clear, finds it by recipient, and the opt-out stops
    # the next message — all through the blind index
    assert sent.status_code == 201, sent.text
    assert sent.json()["to"] == to
    assert [m["id"] for m in listed.json()["data"]] == [sent.json()["id"]]
    assert opted.json()["address"] == to
    assert blocked.status_code == 422
    assert blocked.json()["code"] == "recipient_opted_out"
    # ... while the rows hold it sealed under the account's key, with its index
    async with db.read_session() as session:
        message = (
            await session.execute(
                select(Message.to_addr, Message.peer_index).where(Message.id == sent.json()["id"])
            )
        ).one()
        opt_out = await session.get_one(OptOut, opted.json()["id"])
    assert message.to_addr.startswith(f"amxa1:{data_key_id(account.account_id)}:")
    assert message.peer_index == blind_index(to)
    assert opt_out.address is not None
    assert opt_out.address.startswith("amxa1:")
    assert opt_out.address_index == blind_index(to)
    # ... and no file of the database holds it (or the evidence naming it) in clear
    assert not await on_disk(db, to, PERSONAL_TABLES)
    assert not await on_disk(db, to.split("@")[0], PERSONAL_TABLES)


async def test_the_index_is_keyed_and_case_folds_email(db: Database) -> None:
    ring = installed()
    assert ring is not None
    assert blind_index("Dave@Example.com") == blind_index("dave@example.com")
    assert blind_index("+13125550100") != blind_index("+13125550101")
    assert len(blind_index("+13125550100")) == 32

    # Keyed: the HMAC under the platform index key, not a plain hash anyone can compute
    def mac(key: bytes) -> str:
        digest = hmac.new(key, b"+13125550100", hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    assert blind_index("+13125550100") == mac(ring._index_key)
    assert blind_index("+13125550100") != mac(b"amnex unkeyed blind index")


async def test_a_sealed_address_does_not_open_under_another_accounts_key(
    db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other Shop")
    ring = installed()
    assert ring is not None
    sealed = ring.seal(account.account_id, "+13125550100")
    # Moved to the other account's key id, it fails its tag: keys are per account
    moved = sealed.replace(data_key_id(account.account_id), data_key_id(other.account_id))
    with pytest.raises(AddressKeyUnavailable):
        ring.open(moved)
    assert ring.open(sealed) == "+13125550100"


async def test_rows_stored_before_sealing_are_sealed_indexed_and_relinked_on_start(
    db: Database, account: AccountHandle
) -> None:
    # Given rows as a database before migration 0009 held them: addresses in clear, no index
    async with db.unit_of_work() as session:
        entry = await recipients.record_consent(
            session,
            account_id=account.account_id,
            channel="sms",
            address="+13125550177",
            purpose="marketing",
            action="granted",
            source="web_form",
            text_shown="Yes, texts please",
            evidence={"ip": "203.0.113.9", "url": "https://shop.example/join"},
            occurred_at=utc_now() - timedelta(minutes=1),
            recorded_by="test",
        )
    now = utc_now()
    async with db.unit_of_work() as session:
        await session.execute(
            insert(Message).values(
                id="msg_old1",
                account_id=account.account_id,
                channel="sms",
                direction="outbound",
                from_addr="+13125550100",
                to_addr="+13125550177",
                category="transactional",
                status="delivered",
                created_at=now,
                updated_at=now,
                attempts=0,
                event_seq=1,
            )
        )
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE consent_entries SET address = '+13125550177', address_index = NULL,"
                " personal_salt = NULL, personal_digest = NULL, evidence = :e WHERE id = :id"
            ),
            {"e": '{"ip": "203.0.113.9", "url": "https://shop.example/join"}', "id": entry.id},
        )
        await conn.execute(text("DELETE FROM data_keys WHERE id = :m"), {"m": MARKER_ID})

    # When a keyed process starts (the backfill it runs)
    done = await seal_existing(db)

    # Then the rows are sealed and indexed, the ledger re-linked and still verifying
    assert done["messages"] == 1
    assert done["consent_entries"] == 1
    async with db.read_session() as session:
        message = await session.get_one(Message, "msg_old1")
        consent = await session.get_one(ConsentEntry, entry.id)
        chain = await recipients.verify_chain(session, account.account_id)
        head = await session.get_one(ConsentChainHead, account.account_id)
        relinked = await session.scalar(
            select(AuditEntry.action).where(AuditEntry.action == "consent_ledger.relinked")
        )
    assert message.to_addr.startswith("amxa1:")
    assert open_address(message.to_addr) == "+13125550177"
    assert message.peer_index == blind_index("+13125550177")
    assert consent.address_index == blind_index("+13125550177")
    assert consent.personal_digest is not None
    assert chain.valid, chain.reason
    assert head.hash == consent.hash
    assert relinked == "consent_ledger.relinked"
    assert not await on_disk(db, "203.0.113.9", PERSONAL_TABLES)
    # ... and a second start does nothing more (one read of the marker)
    assert await seal_existing(db) == {}


@pytest.mark.no_master_key
async def test_without_a_master_key_addresses_stay_in_clear_and_a_key_is_refused_later(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    to = reader()
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(to))
        listed = await api.client.get(f"/v1/messages?to={to}", headers=account.headers)
    assert sent.status_code == 201, sent.text
    assert [m["id"] for m in listed.json()["data"]] == [sent.json()["id"]]
    async with db.read_session() as session:
        stored = await session.scalar(
            select(Message.to_addr).where(Message.id == sent.json()["id"])
        )
        index_row = await session.get_one(DataKey, "ik:platform")
    assert stored == to
    assert index_row.wrapped == "unkeyed"
    # A process with a key would write index values that never match: it is refused
    with pytest.raises(IndexModeMismatch, match="without a master key"):
        await start_address_keys(db, SecretBox(parse_key(generate_key())))


async def test_a_process_without_the_key_is_refused_by_a_keyed_database(db: Database) -> None:
    with pytest.raises(IndexModeMismatch, match="set up with a master key"):
        await start_address_keys(db, SecretBox(None))


# --- account closure --------------------------------------------------------------------------


async def test_closing_an_account_destroys_its_key_and_keeps_only_bare_billing_lines(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    other = await make_account(db, name="Other Shop")
    to = reader()
    token = await make_operator(db, name="Dana Ops")
    operator = {"Authorization": f"Bearer {token}"}
    async with db.read_session() as session:
        query = select(Sender.id).where(Sender.account_id == account.account_id)
        had_senders = len(list(await session.scalars(query)))
    async with serve_api(settings, db) as api:
        sent = await api.client.post("/v1/messages", headers=account.headers, json=email(to))
        kept = await api.client.post("/v1/messages", headers=other.headers, json=email(to))
        await api.client.post(
            "/v1/opt-outs",
            headers=account.headers,
            json={"channel": "sms", "address": "+13125550142"},
        )
        no_reason = await api.client.post(
            f"/admin/v1/accounts/{account.account_id}/close", headers=operator
        )
        closed = await api.client.post(
            f"/admin/v1/accounts/{account.account_id}/close", headers={**operator, **REASON}
        )
        again = await api.client.post(
            f"/admin/v1/accounts/{account.account_id}/close", headers={**operator, **REASON}
        )
        after = await api.client.get("/v1/messages", headers=account.headers)
        others = await api.client.get(f"/v1/messages/{kept.json()['id']}", headers=other.headers)

    assert no_reason.status_code == 400
    assert closed.status_code == 200, closed.text
    proof = closed.json()
    assert proof["account"]["status"] == "closed"
    assert proof["data_key_destroyed"] is True
    assert proof["removed"]["opt_outs"] == 1
    assert proof["removed"]["api_keys"] == 1
    assert proof["removed"]["senders"] == had_senders > 0
    assert proof["anonymised"]["messages"] == 1
    assert again.status_code == 409
    assert after.status_code == 401  # its keys are gone
    # The other account is untouched and still reads its copy
    assert others.json()["to"] == to
    async with db.read_session() as session:
        key = await session.get_one(DataKey, data_key_id(account.account_id))
        line = await session.get_one(Message, sent.json()["id"])
        events = list(
            await session.scalars(
                select(MessageEvent).where(MessageEvent.message_id == sent.json()["id"])
            )
        )
        row = await session.get_one(Account, account.account_id)
        keys = list(await session.scalars(select(ApiKey).where(ApiKey.account_id == row.id)))
        senders = list(await session.scalars(select(Sender).where(Sender.account_id == row.id)))
        opt_outs = list(await session.scalars(select(OptOut).where(OptOut.account_id == row.id)))
        chain = await verify_audit_chain(session, account.account_id)
        closing = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "account.close")
        )
    assert (key.wrapped, key.destroyed_at is not None) == (None, True)
    # The billing line: channel, status, segments, timestamps; no address, content, metadata
    assert (line.channel, line.to_addr, line.peer_index, line.body, line.meta) == (
        "email",
        "[erased]",
        None,
        None,
        None,
    )
    assert events == []
    assert (row.status, row.business_name, row.email, row.contact_name) == (
        "closed",
        "Shop Example",
        "[erased]",
        "[erased]",
    )
    assert (keys, senders, opt_outs) == ([], [], [])
    assert chain.valid
    assert closing is not None
    assert closing.reason == "ticket DPO-9"
    # What was sealed under the destroyed key reads as nothing, wherever a copy survives
    ring = installed()
    assert ring is not None
    ring.forget(data_key_id(account.account_id))
    assert open_address(f"amxa1:{data_key_id(account.account_id)}:AAAA") is None


# --- rectification ----------------------------------------------------------------------------


async def test_a_rectification_corrects_the_accounts_contact_data_for_its_subject(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    token = await make_operator(db, name="Dana Ops")
    operator = {"Authorization": f"Bearer {token}", **REASON}
    async with db.read_session() as session:
        contact = (await session.get_one(Account, account.account_id)).email
    async with serve_api(settings, db) as api:
        filed = await api.client.post(
            "/admin/v1/privacy/requests",
            headers=operator,
            json={
                "type": "rectification",
                "address": contact,
                "corrections": {"contact_name": "Pat Q. Example", "phone": "+1 312 555 0123"},
            },
        )
        nobody = await api.client.post(
            "/v1/privacy/requests",
            headers=account.headers,
            json={
                "type": "rectification",
                "address": reader(),
                "corrections": {"contact_name": "X"},
            },
        )
        missing = await api.client.post(
            "/v1/privacy/requests",
            headers=account.headers,
            json={"type": "rectification", "address": contact},
        )
        unknown_field = await api.client.post(
            "/v1/privacy/requests",
            headers=account.headers,
            json={
                "type": "rectification",
                "address": contact,
                "corrections": {"business_name": "X"},
            },
        )
        wrong_type = await api.client.post(
            "/v1/privacy/requests",
            headers=account.headers,
            json={"type": "access", "address": contact, "corrections": {"contact_name": "X"}},
        )

    assert filed.status_code == 201, filed.text
    assert filed.json()["status"] == "completed"
    assert filed.json()["result"] == {
        "corrected": [account.account_id],
        "fields": ["contact_name", "phone"],
    }
    async with db.read_session() as session:
        row = await session.get_one(Account, account.account_id)
    assert (row.contact_name, row.phone) == ("Pat Q. Example", "+13125550123")
    # A subject who is nobody's contact: completed, nothing corrected
    assert nobody.json()["result"] == {"corrected": [], "fields": ["contact_name"]}
    for bad, field in (
        (missing, "corrections"),
        (unknown_field, "corrections.business_name"),
        (wrong_type, "corrections"),
    ):
        assert bad.status_code == 422, bad.text
        assert bad.json()["field"] == field


async def test_after_an_erasure_neither_the_address_nor_the_text_is_on_disk(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given a message delivered to a person, and their STOP-like opt-out with evidence
    to = reader()
    body = f"your code is {secrets.token_hex(6)}"
    async with serve_system(settings, db) as api:
        sent = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={"channel": "email", "to": to, "subject": "Code", "body": body},
        )
        path = f"/v1/messages/{sent.json()['id']}"

        async def status() -> str:
            return str((await api.client.get(path, headers=account.headers)).json()["status"])

        await eventually(status, lambda s: s == "delivered")
        await api.client.post(
            "/v1/opt-outs",
            headers=account.headers,
            json={"channel": "email", "address": to, "evidence": {"text": f"stop, {to}"}},
        )
        # When the client files an erasure for them
        erased = await api.client.post(
            "/v1/privacy/requests", headers=account.headers, json={"type": "erasure", "address": to}
        )

    # Then it completes, and no file of the database holds the address or the text
    assert erased.json()["status"] == "completed", erased.text
    await purge_once(db, settings)  # as `amnex worker` does every minute
    assert not await on_disk(db, to, PERSONAL_TABLES)
    assert not await on_disk(db, body, PERSONAL_TABLES)
    assert not await on_disk(db, f"stop, {to}", PERSONAL_TABLES)
