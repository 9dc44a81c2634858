"""Dispatch: the gate's rules that can change after accept run again when a message is claimed.

Suppression, consent and quiet hours are re-checked on what a claim takes (one read of
opt-outs and consents for the whole claim); Amnex's own keyword replies are exempt. Every
claim here runs at a fixed `now`, so quiet hours do not depend on when the suite runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from amnex.accounts.service import KeyContext
from amnex.carriers.routing import RouteEntry, RouteTable
from amnex.clock import utc_now
from amnex.db.engine import Database
from amnex.db.ids import new_id
from amnex.dispatch import claim
from amnex.messages.accept import AcceptWriter
from amnex.messages.models import Message, MessageEvent
from amnex.messages.schemas import SendMessageRequest
from amnex.messages.service import prepare_message
from amnex.recipients import service as recipients
from support import AccountHandle, make_account
from support import load_message as load
from support import message_events as events

OWNER = "worker-claim-compliance"
CONNECTOR = "con_CLAIM"
SENDER = "+13125550163"
ROUTES = RouteTable(
    routes=(RouteEntry("rte_1", "sms", None, None, "", (CONNECTOR,)),),
    enabled_connectors=frozenset({CONNECTOR}),
)
NEW_YORK = ZoneInfo("America/New_York")
# A Wednesday in winter (EST, UTC-5): 03:00 in New York is 08:00 UTC.
NIGHT = datetime(2027, 1, 13, 3, 0, tzinfo=NEW_YORK).astimezone(UTC)
MORNING = datetime(2027, 1, 13, 8, 0, tzinfo=NEW_YORK).astimezone(UTC)
NY_NUMBER = "+12125550123"  # area code 212: New York, federal hours 08:00-21:00
OTHER_NY_NUMBER = "+12125550124"
WEB_FORM: dict[str, Any] = {"ip": "203.0.113.7", "url": "https://shop.example/signup"}
CONSENT_TEXT = "Yes, send me offers by text. Msg & data rates may apply. Reply STOP to stop."
MARKETING_BODY = "Shop Example: 20% off today. Reply STOP to opt out."


@pytest.fixture
async def sms_account(db: Database) -> AccountHandle:
    return await make_account(db, sms_number=SENDER)


def ctx(account: AccountHandle) -> KeyContext:
    return KeyContext(
        key_id="key_test",
        account_id=account.account_id,
        scopes=frozenset({"send", "read"}),
        rate_limit_per_s=None,
        account_settings={},
        senders={"sms": frozenset({SENDER})},
        default_senders={"sms": SENDER},
    )


async def accept_sms(db: Database, account: AccountHandle, to: str) -> str:
    """A transactional SMS accepted through the real accept path (the gate at accept)."""
    request = SendMessageRequest.model_validate({"channel": "sms", "to": to, "body": "Hello"})
    prepared = prepare_message(ctx(account), request, now=utc_now(), routes=ROUTES)
    writer = AcceptWriter(db, writers=1, batch_max=10, db_retry_s=1)
    await writer.start()
    try:
        await writer.submit(prepared)
    finally:
        await writer.close()
    return str(prepared.row["id"])


async def stored_sms(
    db: Database,
    account: AccountHandle,
    to: str,
    *,
    category: str = "transactional",
    origin: str | None = None,
    status: str = "queued",
    due_at: datetime = NIGHT - timedelta(minutes=1),
) -> str:
    """An SMS row as accept stores it (queued, or scheduled with a send_at), due at `due_at`."""
    message_id = new_id("msg")
    created_at = due_at - timedelta(minutes=10)
    async with db.unit_of_work() as session:
        session.add(
            Message(
                id=message_id,
                account_id=account.account_id,
                channel="sms",
                direction="outbound",
                origin=origin,
                from_addr=SENDER,
                to_addr=to,
                category=category,
                status=status,
                body=MARKETING_BODY if category == "marketing" else "Your order shipped",
                segments=1,
                encoding="GSM-7",
                send_at=due_at if status == "scheduled" else None,
                created_at=created_at,
                updated_at=created_at,
                next_attempt_at=due_at,
                attempts=0,
                event_seq=1,
            )
        )
        session.add(
            MessageEvent(
                message_id=message_id,
                account_id=account.account_id,
                seq=1,
                status=status,
                at=created_at,
                detail=None,
            )
        )
    return message_id


async def claim_at(db: Database, now: datetime, limit: int = 100) -> list[str]:
    # A day's lease: what one claim takes is not reclaimed by a later claim in the same test.
    async with db.unit_of_work() as session:
        claimed = await claim.claim_due_messages(
            session, owner=OWNER, limit=limit, lease_s=86_400, now=now
        )
    return [c.outbound.id for c in claimed]


async def opt_out(db: Database, account_id: str | None, address: str, channel: str = "sms") -> None:
    async with db.unit_of_work() as session:
        await recipients.add_opt_out(
            session, account_id=account_id, channel=channel, address=address, source="api"
        )


async def consent(db: Database, account: AccountHandle, address: str, action: str) -> None:
    async with db.unit_of_work() as session:
        await recipients.record_consent(
            session,
            account_id=account.account_id,
            channel="sms",
            address=address,
            purpose="marketing",
            action=action,
            source="web_form",
            text_shown=CONSENT_TEXT,
            evidence=WEB_FORM,
            occurred_at=utc_now() - timedelta(minutes=5),
            recorded_by="test",
        )


async def assert_rejected(db: Database, message_id: str, code: str, rule: str) -> None:
    message = await load(db, message_id)
    assert (message.status, message.error_code) == ("rejected", code)
    assert message.failed_at is not None
    assert message.next_attempt_at is None
    assert message.lease_owner is None
    assert message.attempts == 0
    last = (await events(db, message_id))[-1]
    assert (last.status, last.error_code, last.seq) == ("rejected", code, message.event_seq)
    assert last.detail is not None
    assert last.detail["rule"] == rule


async def assert_deferred_to_morning(db: Database, message_id: str) -> None:
    message = await load(db, message_id)
    assert message.status == "scheduled"
    assert message.next_attempt_at is not None
    assert message.next_attempt_at.replace(tzinfo=UTC) == MORNING
    assert message.next_attempt_at.replace(tzinfo=UTC).astimezone(NEW_YORK).hour == 8
    assert (message.lease_owner, message.attempts, message.error_code) == (None, 0, None)
    last = (await events(db, message_id))[-1]
    assert last.status == "scheduled"
    assert last.detail is not None
    assert last.detail["rule"] == "quiet_hours"
    assert datetime.fromisoformat(last.detail["send_at"]) == MORNING


async def test_a_recipient_who_opted_out_after_accept_is_rejected_at_claim(
    db: Database, sms_account: AccountHandle
) -> None:
    # Given an SMS accepted while the recipient could still receive it
    message_id = await accept_sms(db, sms_account, "+14155550100")
    assert (await load(db, message_id)).status == "queued"
    # When the recipient opts out before a worker claims it
    await opt_out(db, sms_account.account_id, "+14155550100")

    # Then the claim does not take it: it is rejected, with the suppression rule's event
    assert await claim_at(db, NIGHT) == []
    await assert_rejected(db, message_id, "recipient_opted_out", "suppression")
    assert [e.status for e in await events(db, message_id)] == ["queued", "rejected"]
    # and it is final: a later claim does not see it again
    assert await claim_at(db, MORNING + timedelta(days=1)) == []


async def test_an_opt_out_of_all_channels_or_platform_wide_also_stops_the_claim(
    db: Database, sms_account: AccountHandle
) -> None:
    every_channel = await stored_sms(db, sms_account, "+14155550101")
    platform = await stored_sms(db, sms_account, "+14155550102")
    from_mms = await stored_sms(db, sms_account, "+14155550103")
    await opt_out(db, sms_account.account_id, "+14155550101", channel="all")
    await opt_out(db, None, "+14155550102")
    await opt_out(db, sms_account.account_id, "+14155550103", channel="mms")

    assert await claim_at(db, NIGHT) == []

    for message_id in (every_channel, platform, from_mms):
        await assert_rejected(db, message_id, "recipient_opted_out", "suppression")


async def test_another_accounts_opt_out_does_not_stop_the_claim(
    db: Database, sms_account: AccountHandle
) -> None:
    other = await make_account(db, sms_number="+13125550164")
    message_id = await stored_sms(db, sms_account, "+14155550104")
    await opt_out(db, other.account_id, "+14155550104")

    assert await claim_at(db, NIGHT) == [message_id]
    assert (await load(db, message_id)).status == "sending"


async def test_a_marketing_sms_whose_consent_was_revoked_after_accept_is_rejected(
    db: Database, sms_account: AccountHandle
) -> None:
    await consent(db, sms_account, NY_NUMBER, "granted")
    message_id = await stored_sms(
        db, sms_account, NY_NUMBER, category="marketing", due_at=MORNING + timedelta(hours=2)
    )
    await consent(db, sms_account, NY_NUMBER, "revoked")

    assert await claim_at(db, MORNING + timedelta(hours=3)) == []

    await assert_rejected(db, message_id, "consent_required", "consent")


async def test_a_marketing_sms_with_live_consent_is_claimed_inside_the_recipients_hours(
    db: Database, sms_account: AccountHandle
) -> None:
    await consent(db, sms_account, NY_NUMBER, "revoked")
    await consent(db, sms_account, NY_NUMBER, "granted")  # the newest entry decides
    message_id = await stored_sms(
        db, sms_account, NY_NUMBER, category="marketing", due_at=MORNING + timedelta(hours=2)
    )

    assert await claim_at(db, MORNING + timedelta(hours=3)) == [message_id]


@pytest.mark.parametrize("status", ["queued", "scheduled"])
async def test_a_marketing_sms_claimed_at_night_waits_for_the_recipients_morning(
    db: Database, sms_account: AccountHandle, status: str
) -> None:
    # Given a consented marketing SMS to a New York number, due at 02:59 local
    await consent(db, sms_account, NY_NUMBER, "granted")
    message_id = await stored_sms(db, sms_account, NY_NUMBER, category="marketing", status=status)

    # When a worker claims at 03:00 New York time
    # Then it is not sent: it goes back to scheduled until 08:00 local
    assert await claim_at(db, NIGHT) == []
    await assert_deferred_to_morning(db, message_id)
    assert [e.status for e in await events(db, message_id)] == [status, "scheduled"]

    # and a claim a second before the window opens leaves it alone
    assert await claim_at(db, MORNING - timedelta(seconds=1)) == []
    assert len(await events(db, message_id)) == 2

    # When the window opens, it is claimed like any other message
    assert await claim_at(db, MORNING) == [message_id]
    message = await load(db, message_id)
    assert (message.status, message.attempts, message.lease_owner) == ("sending", 1, OWNER)
    assert [e.status for e in await events(db, message_id)] == [
        status, "scheduled", "queued", "sending",
    ]  # fmt: skip


async def test_a_transactional_sms_is_claimed_at_any_hour(
    db: Database, sms_account: AccountHandle
) -> None:
    at_night = await stored_sms(db, sms_account, NY_NUMBER)
    assert await claim_at(db, NIGHT) == [at_night]
    message = await load(db, at_night)
    assert (message.status, message.error_code) == ("sending", None)


@pytest.mark.parametrize("origin", ["opt_out_reply", "opt_in_reply", "help_reply"])
async def test_amnexs_own_keyword_reply_to_an_opted_out_number_is_claimed(
    db: Database, sms_account: AccountHandle, origin: str
) -> None:
    await opt_out(db, sms_account.account_id, "+14155550105", channel="all")
    reply = await stored_sms(db, sms_account, "+14155550105", origin=origin)

    assert await claim_at(db, NIGHT) == [reply]
    assert (await load(db, reply)).status == "sending"


async def test_an_expired_message_to_an_opted_out_number_fails_as_expired(
    db: Database, sms_account: AccountHandle
) -> None:
    message_id = await stored_sms(db, sms_account, "+14155550106")
    async with db.unit_of_work() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        message.expires_at = NIGHT - timedelta(seconds=1)
    await opt_out(db, sms_account.account_id, "+14155550106")

    assert await claim_at(db, NIGHT) == []

    message = await load(db, message_id)
    assert (message.status, message.error_code) == ("failed", "expired")


async def test_one_claim_of_many_messages_handles_each_and_claims_the_rest(
    db: Database, sms_account: AccountHandle
) -> None:
    # Given a queue that mixes every case, and more messages that may go
    await opt_out(db, sms_account.account_id, "+14155550110")
    await consent(db, sms_account, NY_NUMBER, "granted")
    await consent(db, sms_account, OTHER_NY_NUMBER, "granted")
    await consent(db, sms_account, OTHER_NY_NUMBER, "revoked")
    opted_out = await stored_sms(db, sms_account, "+14155550110")
    reply = await stored_sms(db, sms_account, "+14155550110", origin="opt_out_reply")
    revoked = await stored_sms(db, sms_account, OTHER_NY_NUMBER, category="marketing")
    at_night = await stored_sms(db, sms_account, NY_NUMBER, category="marketing")
    scheduled_at_night = await stored_sms(
        db, sms_account, NY_NUMBER, category="marketing", status="scheduled"
    )
    plain = [await stored_sms(db, sms_account, f"+1415555020{i}") for i in range(8)]
    transactional_ny = await stored_sms(db, sms_account, NY_NUMBER)
    not_due = await stored_sms(db, sms_account, "+14155550300", due_at=NIGHT + timedelta(hours=1))

    # When one claim takes them all at 03:00 in New York
    claimed = await claim_at(db, NIGHT)

    # Then each stopped message got its own outcome, and every other due message was claimed
    assert sorted(claimed) == sorted([reply, *plain, transactional_ny])
    await assert_rejected(db, opted_out, "recipient_opted_out", "suppression")
    await assert_rejected(db, revoked, "consent_required", "consent")
    await assert_deferred_to_morning(db, at_night)
    await assert_deferred_to_morning(db, scheduled_at_night)
    for message_id in claimed:
        message = await load(db, message_id)
        assert (message.status, message.lease_owner, message.attempts) == ("sending", OWNER, 1)
        assert [e.status for e in await events(db, message_id)] == ["queued", "sending"]
    untouched = await load(db, not_due)
    assert (untouched.status, untouched.event_seq) == ("queued", 1)

    # and in the morning the deferred marketing goes, the others stay as they are
    assert sorted(await claim_at(db, MORNING)) == sorted([at_night, scheduled_at_night, not_due])
    assert (await load(db, opted_out)).status == "rejected"
    assert (await load(db, revoked)).status == "rejected"
