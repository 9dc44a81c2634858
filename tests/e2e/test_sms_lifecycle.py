"""End to end over real sockets: API → store → worker → SMPP → SMSC simulator → receipt."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.simulators.smsc import SmscSimulator
from support import (
    AccountHandle,
    ApiServer,
    StartSmsc,
    add_smpp_route,
    eventually,
    make_account,
    serve_system,
    wait_for_status,
    with_master_key,
)

SMS_NUMBER = "+13125550142"


@pytest.fixture
async def smsc(start_smsc: StartSmsc) -> SmscSimulator:
    return await start_smsc(receipt_delay_s=0.05, slow_receipt_delay_s=0.5)


@pytest.fixture
def sms_settings(settings: Settings) -> Settings:
    return with_master_key(settings, receipt_grace_s=0.0, route_cache_ttl_s=0.2)


@pytest.fixture
async def sms_account(db: Database) -> AccountHandle:
    return await make_account(db, sms_number=SMS_NUMBER)


@pytest.fixture
async def api(
    sms_settings: Settings, db: Database, smsc: SmscSimulator
) -> AsyncIterator[ApiServer]:
    await add_smpp_route(db, sms_settings, host=smsc.host, port=smsc.port, response_timeout_s=1.0)
    async with serve_system(sms_settings, db) as server:
        yield server


async def send(api: ApiServer, account: AccountHandle, **body: Any) -> dict[str, Any]:
    response = await api.client.post(
        "/v1/messages", headers=account.headers, json={"channel": "sms", **body}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def events(api: ApiServer, account: AccountHandle, message_id: str) -> list[str]:
    response = await api.client.get(f"/v1/messages/{message_id}/events", headers=account.headers)
    return [e["status"] for e in response.json()["data"]]


async def test_an_sms_is_submitted_receipted_and_delivered(
    api: ApiServer, sms_account: AccountHandle, smsc: SmscSimulator
) -> None:
    # Given an account with an SMS number, a connector and a route to the simulator
    # When it sends an SMS
    created = await send(api, sms_account, to="+14155550100", body="Your code is 123456")
    assert created["segments"] == 1
    assert created["encoding"] == "GSM-7"
    assert created["from"] == SMS_NUMBER

    # Then the SMSC gets one submit_sm and its receipt makes the message delivered
    message = await wait_for_status(api.client, sms_account, created["id"], {"delivered"})
    assert message["delivered_at"] is not None
    assert message["error_code"] is None
    received = [m for m in smsc.messages() if m["destination"].endswith("14155550100")]
    assert len(received) == 1
    assert received[0]["text"] == "Your code is 123456"
    assert await events(api, sms_account, created["id"]) == [
        "queued",
        "sending",
        "sent",
        "delivered",
    ]


async def test_a_long_unicode_sms_goes_in_parts_and_is_delivered_when_every_part_is(
    api: ApiServer, sms_account: AccountHandle, smsc: SmscSimulator
) -> None:
    text = "Привет, это длинное сообщение. " * 6  # 186 UCS-2 units: 3 parts of ≤ 67
    created = await send(api, sms_account, to="+14155550101", body=text)
    assert (created["encoding"], created["segments"]) == ("UCS-2", 3)
    assert created["encoding_report"]["ucs2_characters"]

    message = await wait_for_status(api.client, sms_account, created["id"], {"delivered"})
    assert message["segments"] == 3
    parts = [m for m in smsc.messages() if m["destination"].endswith("14155550101")]
    assert len(parts) == 3
    assert "".join(p["text"] for p in parts) == text


async def test_smart_encoding_keeps_look_alike_text_in_gsm7(
    api: ApiServer, db: Database, smsc: SmscSimulator
) -> None:
    account = await make_account(db, sms_number="+13125550143")
    async with db.unit_of_work() as session:
        from amnex.accounts.models import Account

        row = await session.get(Account, account.account_id)
        assert row is not None
        row.settings = {**row.settings, "smart_encoding": True}
    created = await send(api, account, to="+14155550102", body="It’s “ready” — pick up")  # noqa: RUF001
    assert created["encoding"] == "GSM-7"
    assert created["body"] == 'It\'s "ready" - pick up'
    assert set(created["encoding_report"]["replaced"]) == {"’", "“", "”", "—"}  # noqa: RUF001
    await wait_for_status(api.client, account, created["id"], {"delivered"})


@pytest.mark.parametrize(
    ("to", "status", "error_code", "raw"),
    [
        ("+14155550190", "undelivered", "unknown_subscriber", "001"),
        ("+14155550191", "failed", "carrier_rejected", "0x00000045"),
        ("+14155550192", "delivered", None, None),
        ("+14155550195", "delivered", None, None),
    ],
)
async def test_simulator_outcomes_by_destination(
    api: ApiServer,
    sms_account: AccountHandle,
    to: str,
    status: str,
    error_code: str | None,
    raw: str | None,
) -> None:
    created = await send(api, sms_account, to=to, body="outcome")
    message = await wait_for_status(api.client, sms_account, created["id"], {status})
    assert message["error_code"] == error_code
    assert message["provider_error_code"] == raw


async def test_a_submit_never_answered_is_retried_then_fails_with_submit_timeout(
    sms_settings: Settings, db: Database, smsc: SmscSimulator
) -> None:
    settings = sms_settings.model_copy(update={"max_retry_age_s": 2.5})
    account = await make_account(db, sms_number=SMS_NUMBER)
    await add_smpp_route(db, settings, host=smsc.host, port=smsc.port, response_timeout_s=0.5)
    async with serve_system(settings, db) as api:
        created = await send(api, account, to="+14155550193", body="never answered")
        message = await wait_for_status(api.client, account, created["id"], {"failed"})
    assert message["error_code"] == "submit_timeout"
    assert message["attempts"] >= 2


async def test_no_receipt_by_the_validity_period_is_receipt_timeout(
    api: ApiServer, sms_account: AccountHandle
) -> None:
    created = await send(
        api, sms_account, to="+14155550194", body="no receipt", validity_period_s=1
    )
    sent = await wait_for_status(api.client, sms_account, created["id"], {"sent"})
    assert sent["sent_at"] is not None
    message = await wait_for_status(api.client, sms_account, created["id"], {"undelivered"})
    assert message["error_code"] == "receipt_timeout"


async def test_inbound_sms_is_stored_on_the_account_that_owns_the_number(
    api: ApiServer, sms_account: AccountHandle, smsc: SmscSimulator
) -> None:
    await eventually(lambda: _bound(smsc), bool)
    # When a recipient replies to the account's number
    status = await smsc.inject_mo("14155550123", SMS_NUMBER.removeprefix("+"), "Yes, see you then")
    # Then the SMSC is answered only once it is stored, and the account can read it
    assert status == 0
    listed = await api.client.get(
        "/v1/messages", params={"direction": "inbound"}, headers=sms_account.headers
    )
    inbound = listed.json()["data"]
    assert len(inbound) == 1
    message = inbound[0]
    assert message["direction"] == "inbound"
    assert (message["from"], message["to"]) == ("+14155550123", SMS_NUMBER)
    assert message["body"] == "Yes, see you then"
    assert message["status"] == "delivered"
    fetched = await api.client.get(f"/v1/messages/{message['id']}", headers=sms_account.headers)
    assert fetched.json()["body"] == "Yes, see you then"
    outbound = await api.client.get(
        "/v1/messages", params={"direction": "outbound"}, headers=sms_account.headers
    )
    assert all(m["direction"] == "outbound" for m in outbound.json()["data"])


async def test_inbound_sms_to_a_number_nobody_owns_is_refused_and_not_stored(
    api: ApiServer, sms_account: AccountHandle, smsc: SmscSimulator
) -> None:
    await eventually(lambda: _bound(smsc), bool)
    status = await smsc.inject_mo("14155550123", "13125550000", "hello?")
    assert status == 0x0000000B  # ESME_RINVDSTADR
    listed = await api.client.get(
        "/v1/messages", params={"direction": "inbound"}, headers=sms_account.headers
    )
    assert listed.json()["data"] == []


async def test_sms_without_a_route_is_refused_at_accept(
    sms_settings: Settings, db: Database, sms_account: AccountHandle
) -> None:
    async with serve_system(sms_settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers=sms_account.headers,
            json={"channel": "sms", "to": "+14155550100", "body": "hi"},
        )
    assert response.status_code == 422
    assert response.json()["code"] == "no_route"


async def _bound(smsc: SmscSimulator) -> int:
    return smsc.bound_sessions


async def test_a_connection_cut_mid_traffic_loses_no_message_and_no_receipt(
    api: ApiServer, sms_account: AccountHandle, smsc: SmscSimulator
) -> None:
    # Given thirty SMS on their way
    created = [
        await send(api, sms_account, to=f"+1415555{n:04d}", body=f"burst {n}")
        for n in range(1000, 1030)
    ]
    # When the SMSC drops every connection while they are being submitted and receipted
    await eventually(_received(smsc), lambda n: n >= 10)
    smsc.disconnect_all()
    # Then the connector reconnects, the rest are sent, owed receipts are offered again, and
    # every message is delivered
    for message in created:
        await wait_for_status(api.client, sms_account, message["id"], {"delivered"})
    metrics = (await api.client.get("/metrics")).text
    assert "amnex_smpp_disconnects_total" in metrics
    assert 'amnex_receipts_total{outcome="applied"}' in metrics


def _received(smsc: SmscSimulator) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        return len(smsc.messages())

    return probe
