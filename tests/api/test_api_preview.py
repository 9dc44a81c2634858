"""`POST /v1/messages/preview` over a real socket: the gate's verdict and the SMS encoding for a
request, exactly as a send would decide it, and nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_checks import assert_problem, stored_counts

from amnex.api.routes import messages as messages_route
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.simulators.smsc import SmscSimulator
from support import AccountHandle, ApiServer, add_smpp_route, serve_api, with_master_key

NEW_YORK = "+12125550100"
CANADA = "+14165550100"
COMPLIANT_MARKETING = "Shop Example: 20% off everything today. Reply STOP to opt out"
MIDDAY_NY = datetime(2026, 1, 14, 17, 0, tzinfo=UTC)  # 12:00 EST
LATE_NY = datetime(2026, 1, 15, 4, 0, tzinfo=UTC)  # 23:00 EST
NEXT_OPENING = datetime(2026, 1, 15, 13, 0, tzinfo=UTC)  # 08:00 EST


def fix_clock(monkeypatch: pytest.MonkeyPatch, at: datetime) -> None:
    """Freeze the clock the preview and send routes read."""
    monkeypatch.setattr(messages_route, "utc_now", lambda: at)


@pytest.fixture
async def api(settings: Settings, db: Database, smsc: SmscSimulator) -> AsyncIterator[ApiServer]:
    sms_settings = with_master_key(settings)
    await add_smpp_route(db, sms_settings, host=smsc.host, port=smsc.port)
    async with serve_api(sms_settings, db) as server:
        yield server


@pytest.fixture
def midday(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_clock(monkeypatch, MIDDAY_NY)


def sms(body: str, category: str = "transactional", to: str = NEW_YORK) -> dict[str, Any]:
    return {"channel": "sms", "to": to, "body": body, "category": category}


async def preview(
    api: ApiServer, account: AccountHandle, request: dict[str, Any]
) -> dict[str, Any]:
    response = await api.client.post("/v1/messages/preview", headers=account.headers, json=request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


async def record_consent(api: ApiServer, account: AccountHandle) -> None:
    response = await api.client.post(
        "/v1/consents",
        headers=account.headers,
        json={
            "channel": "sms",
            "address": NEW_YORK,
            "purpose": "marketing",
            "source": "api",
            "text_shown": "Yes, send me offers from Shop Example. Reply STOP to stop.",
            "occurred_at": datetime.now(UTC).isoformat(),
        },
    )
    assert response.status_code == 201, response.text


async def opt_out(api: ApiServer, account: AccountHandle) -> None:
    response = await api.client.post(
        "/v1/opt-outs", headers=account.headers, json={"channel": "sms", "address": NEW_YORK}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("body", "segments", "encoding", "report"),
    [
        pytest.param("Your code is 123456", 1, "GSM-7", None, id="gsm7-one-part"),
        pytest.param("x" * 161, 2, "GSM-7", None, id="gsm7-two-parts"),
        pytest.param(
            "Your order shipped 😀",
            1,
            "UCS-2",
            {"replaced": [], "ucs2_characters": ["😀"]},
            id="ucs2-emoji",
        ),
    ],
)
async def test_a_message_that_may_go_now_is_send_with_its_segments_and_encoding(
    db: Database,
    api: ApiServer,
    account: AccountHandle,
    body: str,
    segments: int,
    encoding: str,
    report: dict[str, Any] | None,
) -> None:
    out = await preview(api, account, sms(body))

    assert out["channel"] == "sms"
    assert out["to"] == NEW_YORK
    assert out["from"].startswith("+1312555")  # the account's default sender
    assert out["category"] == "transactional"
    assert out["segments"] == segments
    assert out["encoding"] == encoding
    assert out["encoding_report"] == report
    assert out["verdict"] == {
        "decision": "send",
        "rule": None,
        "code": None,
        "detail": None,
        "send_at": None,
    }
    assert out["flags"] == []
    assert out["price"] is None
    assert await stored_counts(db) == (0, 0, 0)


async def _opted_out(api: ApiServer, account: AccountHandle) -> None:
    await opt_out(api, account)


async def _nothing(api: ApiServer, account: AccountHandle) -> None:
    return None


async def _consented(api: ApiServer, account: AccountHandle) -> None:
    await record_consent(api, account)


@pytest.mark.usefixtures("midday")
@pytest.mark.parametrize(
    ("given", "request_body", "code", "rule"),
    [
        pytest.param(
            _opted_out,
            sms("Your code is 123456"),
            "recipient_opted_out",
            "suppression",
            id="opted-out",
        ),
        pytest.param(
            _nothing,
            sms(COMPLIANT_MARKETING, "marketing"),
            "consent_required",
            "consent",
            id="no-consent",
        ),
        pytest.param(
            _nothing,
            sms("Visit our dispensary: CBD oil 30% off"),
            "content_forbidden",
            "content",
            id="cannabis",
        ),
        pytest.param(
            _consented,
            sms("20% off today. Reply STOP to opt out", "marketing"),
            "sender_identification_missing",
            "content",
            id="first-contact-without-brand",
        ),
        pytest.param(
            _nothing,
            sms("Your code is 123456", to=CANADA),
            "destination_country_not_allowed",
            "geo",
            id="country-not-allowed",
        ),
    ],
)
async def test_a_refused_message_is_reject_with_what_a_send_would_answer(
    db: Database,
    api: ApiServer,
    account: AccountHandle,
    given: Callable[[ApiServer, AccountHandle], Awaitable[None]],
    request_body: dict[str, Any],
    code: str,
    rule: str,
) -> None:
    await given(api, account)
    before = await stored_counts(db)

    out = await preview(api, account, request_body)
    sent = await api.client.post("/v1/messages", headers=account.headers, json=request_body)

    problem = assert_problem(sent, 422, code)
    assert out["verdict"] == {
        "decision": "reject",
        "rule": problem["rule"],
        "code": problem["code"],
        "detail": problem["detail"],
        "send_at": None,
    }
    assert out["verdict"]["rule"] == rule
    assert out["segments"] == 1
    assert out["encoding"] == "GSM-7"
    assert await stored_counts(db) == before


async def test_marketing_at_night_is_deferred_to_the_morning_and_nothing_is_stored(
    db: Database, api: ApiServer, account: AccountHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    await record_consent(api, account)
    fix_clock(monkeypatch, LATE_NY)

    marketing = await preview(api, account, sms(COMPLIANT_MARKETING, "marketing"))
    transactional = await preview(api, account, sms("Your code is 123456"))

    verdict = marketing["verdict"]
    assert verdict["decision"] == "defer"
    assert verdict["rule"] == "quiet_hours"
    assert verdict["code"] is None
    assert verdict["detail"]
    assert datetime.fromisoformat(verdict["send_at"]) == NEXT_OPENING
    assert transactional["verdict"]["decision"] == "send"
    assert await stored_counts(db) == (0, 0, 0)


async def test_a_request_send_at_in_the_future_is_deferred_to_it(
    db: Database, api: ApiServer, account: AccountHandle
) -> None:
    send_at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)

    out = await preview(
        api, account, {**sms("Your code is 123456"), "send_at": send_at.isoformat()}
    )

    assert out["verdict"]["decision"] == "defer"
    assert out["verdict"]["code"] is None
    assert datetime.fromisoformat(out["verdict"]["send_at"]) == send_at
    assert await stored_counts(db) == (0, 0, 0)


async def test_a_shortener_is_listed_in_flags_and_the_message_may_go(
    db: Database, api: ApiServer, account: AccountHandle
) -> None:
    out = await preview(api, account, sms("Track it: bit.ly/3abc"))

    assert out["verdict"]["decision"] == "send"
    assert [f["code"] for f in out["flags"]] == ["link_shortener"]
    assert "bit.ly" in out["flags"][0]["detail"]
    assert await stored_counts(db) == (0, 0, 0)


async def test_a_key_without_the_send_scope_is_forbidden(
    api: ApiServer, account: AccountHandle
) -> None:
    created = await api.client.post(
        "/v1/api-keys", headers=account.headers, json={"name": "reporting", "scopes": ["read"]}
    )
    assert created.status_code == 201, created.text
    reader = {"Authorization": f"Bearer {created.json()['key']}"}

    response = await api.client.post(
        "/v1/messages/preview", headers=reader, json=sms("Your code is 123456")
    )

    assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize(
    ("request_body", "code"),
    [
        pytest.param({**sms("Hi"), "colour": "red"}, "validation_failed", id="unknown-field"),
        pytest.param({"channel": "sms", "to": NEW_YORK}, "validation_failed", id="no-body"),
        pytest.param({**sms("Hi"), "category": "promo"}, "validation_failed", id="bad-category"),
        pytest.param(sms("Hi", to="not-a-number"), "invalid_address", id="bad-number"),
    ],
)
async def test_a_malformed_request_gets_the_problem_a_send_gets(
    db: Database,
    api: ApiServer,
    account: AccountHandle,
    request_body: dict[str, Any],
    code: str,
) -> None:
    previewed = await api.client.post(
        "/v1/messages/preview", headers=account.headers, json=request_body
    )
    sent = await api.client.post("/v1/messages", headers=account.headers, json=request_body)

    preview_problem = assert_problem(previewed, 422, code)
    send_problem = assert_problem(sent, 422, code)
    assert preview_problem["detail"] == send_problem["detail"]
    assert preview_problem.get("errors") == send_problem.get("errors")
    assert preview_problem["instance"] == "/v1/messages/preview"
    assert await stored_counts(db) == (0, 0, 0)
