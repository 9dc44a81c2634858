"""The compliance gate at `POST /v1/messages`, over a real socket: every rule's refusal is a 422
with its code and rule and stores nothing; a deferral stores the message `scheduled`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from api_checks import assert_problem, stored_counts

from amnex.api.routes import messages as messages_route
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.simulators.smsc import SmscSimulator
from support import (
    AccountHandle,
    ApiServer,
    add_smpp_route,
    make_account,
    make_operator,
    serve_api,
    with_master_key,
)

NEW_YORK = "+12125550100"  # area code 212: New York, federal hours 08:00-21:00
CANADA = "+14165550100"
LONDON_LANDLINE = "+442079460000"
SATELLITE = "+881612345678"  # Iridium: a default-blocked range
PREMIUM = "+19005550100"
EMAIL_TO = "alex@example.com"
POSTAL = "1 Main Street, Springfield IL 62701"
COMPLIANT_MARKETING = "Shop Example: 20% off everything today. Reply STOP to opt out"
# Noon in New York on a Wednesday in winter (EST, UTC-5): inside every marketing window.
MIDDAY_NY = datetime(2026, 1, 14, 17, 0, tzinfo=UTC)
# 23:00 in New York on the same evening; the window opens at 08:00 EST = 13:00Z next morning.
LATE_NY = datetime(2026, 1, 15, 4, 0, tzinfo=UTC)
NEXT_OPENING = datetime(2026, 1, 15, 13, 0, tzinfo=UTC)


def fix_clock(monkeypatch: pytest.MonkeyPatch, at: datetime) -> None:
    """Freeze the clock the send route reads (it imports `utc_now` by name)."""
    monkeypatch.setattr(messages_route, "utc_now", lambda: at)


@pytest.fixture
def sms_settings(settings: Settings) -> Settings:
    return with_master_key(settings)


@pytest.fixture
async def api(
    sms_settings: Settings, db: Database, smsc: SmscSimulator
) -> AsyncIterator[ApiServer]:
    # A route for every destination, so only the gate decides; no dispatcher runs.
    await add_smpp_route(db, sms_settings, host=smsc.host, port=smsc.port)
    async with serve_api(sms_settings, db) as server:
        yield server


@pytest.fixture
def midday(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_clock(monkeypatch, MIDDAY_NY)


def sms(to: str, body: str, category: str = "transactional") -> dict[str, Any]:
    return {"channel": "sms", "to": to, "body": body, "category": category}


def marketing_email(body: str) -> dict[str, Any]:
    return {
        "channel": "email",
        "to": EMAIL_TO,
        "subject": "Winter sale",
        "body": body,
        "category": "marketing",
    }


async def record_consent(
    api: ApiServer, account: AccountHandle, channel: str, address: str
) -> None:
    response = await api.client.post(
        "/v1/consents",
        headers=account.headers,
        json={
            "channel": channel,
            "address": address,
            "purpose": "marketing",
            "source": "api",
            "text_shown": "Yes, send me offers from Shop Example. Reply STOP to stop.",
            "occurred_at": datetime.now(UTC).isoformat(),
        },
    )
    assert response.status_code == 201, response.text


async def opt_out(api: ApiServer, account: AccountHandle, address: str) -> str:
    response = await api.client.post(
        "/v1/opt-outs", headers=account.headers, json={"channel": "sms", "address": address}
    )
    assert response.status_code == 201, response.text
    opt_out_id: str = response.json()["id"]
    return opt_out_id


async def platform_opt_out(api: ApiServer, db: Database, address: str) -> None:
    operator = {"Authorization": f"Bearer {await make_operator(db, name='Dana Ops')}"}
    response = await api.client.post(
        "/admin/v1/opt-outs",
        headers=operator,
        json={"channel": "all", "address": address, "source": "complaint"},
    )
    assert response.status_code == 201, response.text


async def first_event(api: ApiServer, account: AccountHandle, message_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/v1/messages/{message_id}/events", headers=account.headers)
    assert response.status_code == 200, response.text
    event: dict[str, Any] = response.json()["data"][0]
    return event


async def rejected_total(api: ApiServer, code: str) -> float:
    """`amnex_messages_rejected_total{code=…}` as the API's /metrics page shows it now."""
    page = (await api.client.get("/metrics")).text
    found = re.search(rf'^amnex_messages_rejected_total\{{code="{code}"\}} (\S+)$', page, re.M)
    return float(found.group(1)) if found else 0.0


@dataclass(frozen=True)
class Refusal:
    request: dict[str, Any]
    code: str
    rule: str
    compliance: dict[str, Any] | None = None
    consent: tuple[str, str] | None = None  # (channel, address) granted before the send
    opted_out: str | None = None  # "account" or "platform": an opt-out of `to` first


REFUSALS = [
    pytest.param(
        Refusal(
            sms(LONDON_LANDLINE, "Your code is 123456"),
            "number_type_not_allowed",
            "number_type",
            compliance={"allowed_countries": ["GB"]},
        ),
        id="uk-landline",
    ),
    pytest.param(
        Refusal(sms(CANADA, "Your code is 123456"), "destination_country_not_allowed", "geo"),
        id="country-outside-the-home-country",
    ),
    pytest.param(
        Refusal(sms(SATELLITE, "Your code is 123456"), "destination_blocked", "geo"),
        id="satellite-range",
    ),
    pytest.param(
        Refusal(sms(PREMIUM, "Your code is 123456"), "destination_blocked", "number_type"),
        id="premium-rate",
    ),
    pytest.param(
        Refusal(
            sms(NEW_YORK, "Your code is 123456"),
            "recipient_opted_out",
            "suppression",
            opted_out="account",
        ),
        id="account-opt-out",
    ),
    pytest.param(
        Refusal(
            sms(NEW_YORK, "Your code is 123456"),
            "recipient_opted_out",
            "suppression",
            opted_out="platform",
        ),
        id="platform-opt-out",
    ),
    pytest.param(
        Refusal(sms(NEW_YORK, COMPLIANT_MARKETING, "marketing"), "consent_required", "consent"),
        id="marketing-without-consent",
    ),
    pytest.param(
        Refusal(
            sms(NEW_YORK, "Visit our dispensary: CBD oil 30% off"), "content_forbidden", "content"
        ),
        id="cannabis-to-the-us",
    ),
    pytest.param(
        Refusal(sms(NEW_YORK, "New Glock 19 in stock, come by"), "content_forbidden", "content"),
        id="firearms-to-the-us",
    ),
    pytest.param(
        Refusal(
            sms(NEW_YORK, "Track your parcel: bit.ly/3abc"),
            "link_shortener_blocked",
            "content",
            compliance={"link_shorteners": "block"},
        ),
        id="shortener-on-an-account-that-blocks-them",
    ),
    pytest.param(
        Refusal(
            sms(NEW_YORK, "Shop Example: 20% off everything today", "marketing"),
            "opt_out_language_missing",
            "content",
            consent=("sms", NEW_YORK),
        ),
        id="first-marketing-sms-without-opt-out-language",
    ),
    pytest.param(
        Refusal(
            sms(NEW_YORK, "20% off everything today. Reply STOP to opt out", "marketing"),
            "sender_identification_missing",
            "content",
            consent=("sms", NEW_YORK),
        ),
        id="first-marketing-sms-without-the-brand",
    ),
    pytest.param(
        Refusal(
            marketing_email("Everything 20% off. Unsubscribe: {{unsubscribe_url}}"),
            "postal_address_missing",
            "content",
            compliance={"postal_address": POSTAL},
            consent=("email", EMAIL_TO),
        ),
        id="marketing-email-without-postal-address",
    ),
    pytest.param(
        Refusal(
            marketing_email(f"Everything 20% off.\nShop Example, {POSTAL}"),
            "unsubscribe_link_missing",
            "content",
            compliance={"postal_address": POSTAL},
            consent=("email", EMAIL_TO),
        ),
        id="marketing-email-without-unsubscribe-link",
    ),
]


@pytest.mark.usefixtures("midday")
@pytest.mark.parametrize("case", REFUSALS)
async def test_each_gate_refusal_is_a_422_with_its_code_and_rule_and_stores_nothing(
    db: Database, api: ApiServer, case: Refusal
) -> None:
    # Given an account, and what the case needs on record (consent, an opt-out)
    account = await make_account(db, compliance=case.compliance)
    if case.consent is not None:
        await record_consent(api, account, *case.consent)
    if case.opted_out == "account":
        await opt_out(api, account, case.request["to"])
    elif case.opted_out == "platform":
        await platform_opt_out(api, db, case.request["to"])
    before = await stored_counts(db)

    # When it sends the message
    response = await api.client.post("/v1/messages", headers=account.headers, json=case.request)

    # Then the rule's problem comes back and not a row was written
    problem = assert_problem(response, 422, case.code)
    assert problem["rule"] == case.rule
    assert problem["type"] == f"urn:amnex:problem:{case.code}"
    assert await stored_counts(db) == before


@pytest.mark.usefixtures("midday")
async def test_marketing_sms_is_refused_without_consent_and_accepted_once_it_is_recorded(
    db: Database, api: ApiServer, account: AccountHandle
) -> None:
    request = sms(NEW_YORK, COMPLIANT_MARKETING, "marketing")
    refused = await api.client.post("/v1/messages", headers=account.headers, json=request)
    assert_problem(refused, 422, "consent_required")
    assert await stored_counts(db) == (0, 0, 0)

    await record_consent(api, account, "sms", NEW_YORK)
    accepted = await api.client.post("/v1/messages", headers=account.headers, json=request)

    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["status"] == "queued"
    assert accepted.json()["category"] == "marketing"


@pytest.mark.usefixtures("midday")
async def test_a_consent_for_another_channel_or_a_revoked_one_is_not_live(
    db: Database, api: ApiServer, account: AccountHandle
) -> None:
    request = sms(NEW_YORK, COMPLIANT_MARKETING, "marketing")
    await record_consent(api, account, "mms", NEW_YORK)
    other_channel = await api.client.post("/v1/messages", headers=account.headers, json=request)
    await record_consent(api, account, "sms", NEW_YORK)
    revoked = await api.client.post(
        "/v1/consents",
        headers=account.headers,
        json={
            "channel": "sms",
            "address": NEW_YORK,
            "purpose": "marketing",
            "source": "api",
            "action": "revoked",
            "occurred_at": datetime.now(UTC).isoformat(),
        },
    )
    assert revoked.status_code == 201, revoked.text
    after_revocation = await api.client.post("/v1/messages", headers=account.headers, json=request)

    assert_problem(other_channel, 422, "consent_required")
    assert_problem(after_revocation, 422, "consent_required")
    assert await stored_counts(db) == (0, 0, 0)


@pytest.mark.usefixtures("midday")
async def test_only_the_first_marketing_sms_to_a_number_must_carry_brand_and_opt_out_language(
    db: Database, api: ApiServer, account: AccountHandle
) -> None:
    # Given a recipient who consented and has never had a text from the account
    await record_consent(api, account, "sms", NEW_YORK)
    bare = sms(NEW_YORK, "Last day of the sale: 20% off everything", "marketing")

    # When the first marketing SMS lacks the opt-out language, it is refused
    refused = await api.client.post("/v1/messages", headers=account.headers, json=bare)
    assert_problem(refused, 422, "sender_identification_missing")

    # When a compliant first one goes, a later one without it is no longer first contact
    first = await api.client.post(
        "/v1/messages",
        headers=account.headers,
        json=sms(NEW_YORK, COMPLIANT_MARKETING, "marketing"),
    )
    second = await api.client.post("/v1/messages", headers=account.headers, json=bare)

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert second.json()["status"] == "queued"
    assert await stored_counts(db) == (2, 2, 0)


async def test_a_shortener_is_flagged_in_the_first_event_by_default(
    api: ApiServer, account: AccountHandle
) -> None:
    response = await api.client.post(
        "/v1/messages", headers=account.headers, json=sms(NEW_YORK, "Track it: bit.ly/3abc")
    )

    assert response.status_code == 201, response.text
    event = await first_event(api, account, response.json()["id"])
    assert event["status"] == "queued"
    flags = event["detail"]["flags"]
    assert [f["code"] for f in flags] == ["link_shortener"]
    assert "bit.ly" in flags[0]["detail"]


async def test_a_message_without_a_shortener_carries_no_flags(
    api: ApiServer, account: AccountHandle
) -> None:
    response = await api.client.post(
        "/v1/messages", headers=account.headers, json=sms(NEW_YORK, "Your code is 123456")
    )

    assert response.status_code == 201, response.text
    event = await first_event(api, account, response.json()["id"])
    assert event["detail"] is None


async def test_marketing_sms_at_night_is_scheduled_for_the_morning_and_transactional_is_not(
    api: ApiServer, account: AccountHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 23:00 in New York and a recipient who consented
    await record_consent(api, account, "sms", NEW_YORK)
    fix_clock(monkeypatch, LATE_NY)

    # When a compliant marketing SMS and a transactional one are sent
    marketing = await api.client.post(
        "/v1/messages",
        headers=account.headers,
        json=sms(NEW_YORK, COMPLIANT_MARKETING, "marketing"),
    )
    transactional = await api.client.post(
        "/v1/messages", headers=account.headers, json=sms(NEW_YORK, "Your code is 123456")
    )

    # Then the marketing one waits for 08:00 local, with the deciding rule in its first event
    assert marketing.status_code == 201, marketing.text
    assert marketing.json()["status"] == "scheduled"
    event = await first_event(api, account, marketing.json()["id"])
    assert event["status"] == "scheduled"
    assert event["detail"]["rule"] == "quiet_hours"
    assert event["detail"]["reason"]
    assert datetime.fromisoformat(event["detail"]["send_at"]) == NEXT_OPENING
    assert transactional.status_code == 201, transactional.text
    assert transactional.json()["status"] == "queued"


@pytest.mark.usefixtures("midday")
async def test_an_opted_out_refusal_is_counted_in_the_rejection_metric(
    api: ApiServer, account: AccountHandle
) -> None:
    await opt_out(api, account, NEW_YORK)
    before = await rejected_total(api, "recipient_opted_out")

    refused = await api.client.post(
        "/v1/messages", headers=account.headers, json=sms(NEW_YORK, "Your code is 123456")
    )

    assert_problem(refused, 422, "recipient_opted_out")
    assert await rejected_total(api, "recipient_opted_out") == before + 1


@pytest.mark.usefixtures("midday")
async def test_a_retry_of_a_refused_request_with_its_idempotency_key_is_refused_again(
    db: Database, api: ApiServer, account: AccountHandle
) -> None:
    # Given an opted-out recipient and a request refused for it
    opt_out_id = await opt_out(api, account, NEW_YORK)
    headers = {**account.headers, "Idempotency-Key": "order-A-1"}
    request = sms(NEW_YORK, "Your code is 123456")
    first = await api.client.post("/v1/messages", headers=headers, json=request)

    # When it is retried with the same key, the gate runs again: no replay, nothing stored
    retry = await api.client.post("/v1/messages", headers=headers, json=request)
    assert_problem(first, 422, "recipient_opted_out")
    assert_problem(retry, 422, "recipient_opted_out")
    assert "idempotent-replayed" not in retry.headers
    assert await stored_counts(db) == (0, 0, 0)

    # And once the recipient subscribes again, the same key was never consumed
    removed = await api.client.delete(f"/v1/opt-outs/{opt_out_id}", headers=account.headers)
    assert removed.status_code == 204
    accepted = await api.client.post("/v1/messages", headers=headers, json=request)
    assert accepted.status_code == 201, accepted.text
    assert "idempotent-replayed" not in accepted.headers
    assert await stored_counts(db) == (1, 1, 1)


async def test_an_email_opt_out_stops_the_address_in_any_case(
    api: ApiServer, account: AccountHandle
) -> None:
    await api.client.post(
        "/v1/opt-outs",
        headers=account.headers,
        json={"channel": "email", "address": "Dave.Smith@Example.com"},
    )

    refused = await api.client.post(
        "/v1/messages",
        headers=account.headers,
        json={"channel": "email", "to": "dave.smith@example.com", "subject": "Hi", "body": "Hi"},
    )

    assert_problem(refused, 422, "recipient_opted_out")
