"""`POST /v1/messages` over a real socket: what is accepted, what is refused, and that a refused
request stores nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_checks import EMAIL, assert_problem, count_messages, error_fields, stored_counts

from amnex.config import Settings
from amnex.db.engine import Database
from support import AccountHandle, make_account, serve_api

# Every field of the message object that DESIGN.md lists.
MESSAGE_FIELDS = {
    "id",
    "account_id",
    "channel",
    "from",
    "to",
    "category",
    "status",
    "error_code",
    "error_message",
    "segments",
    "encoding",
    "price",
    "body",
    "content_purged_at",
    "direction",
    "created_at",
    "sent_at",
    "delivered_at",
    "failed_at",
    "metadata",
}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.fixture
async def brand(db: Database) -> AccountHandle:
    """An account with one verified address (its default) and one verified domain."""
    return await make_account(db, email_senders=("news@shop.example", "@brand.example"))


async def test_email_is_accepted_with_the_full_message_object_and_its_location(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={**EMAIL, "html": "<p>It ships today.</p>", "metadata": {"order": "A-1", "n": 2}},
        )
        assert response.status_code == 201, response.text
        assert response.headers["content-type"] == "application/json"
        message = response.json()
        assert response.headers["location"] == f"/v1/messages/{message['id']}"

        assert set(message) >= MESSAGE_FIELDS
        assert "from_" not in message
        assert message["id"].startswith("msg_")
        assert message["account_id"] == account.account_id
        assert message["channel"] == "email"
        assert message["direction"] == "outbound"
        assert message["from"] == "news@shop.example"  # the account's default sender
        assert message["to"] == "alex@example.com"
        assert message["category"] == "transactional"
        assert message["status"] == "queued"
        assert message["body"] == "It ships today."
        assert message["metadata"] == {"order": "A-1", "n": 2}
        for empty in ("error_code", "error_message", "segments", "encoding", "price"):
            assert message[empty] is None, empty
        for empty in ("content_purged_at", "sent_at", "delivered_at", "failed_at"):
            assert message[empty] is None, empty
        assert parse_time(message["created_at"]).tzinfo is not None

        # The Location answers with the same object.
        fetched = await api.client.get(response.headers["location"], headers=account.headers)
        assert fetched.status_code == 200
        assert fetched.json() == message
    assert await count_messages(db) == 1


@pytest.mark.parametrize(
    ("requested", "stored"),
    [
        pytest.param("news@shop.example", "news@shop.example", id="verified-address"),
        pytest.param("NEWS@Shop.Example", "news@shop.example", id="verified-address-any-case"),
        pytest.param("billing@brand.example", "billing@brand.example", id="verified-domain"),
        pytest.param(
            "Brand Billing <billing@brand.example>",
            "Brand Billing <billing@brand.example>",
            id="display-name-form",
        ),
        pytest.param(
            '"Brand, Billing" <billing@brand.example>',
            '"Brand, Billing" <billing@brand.example>',
            id="quoted-display-name",
        ),
        pytest.param(
            "Café Brand <café@brand.example>",
            "Café Brand <café@brand.example>",
            id="non-ascii-name-and-mailbox",
        ),
    ],
)
async def test_explicit_sender_is_used_when_it_is_verified(
    settings: Settings, db: Database, brand: AccountHandle, requested: str, stored: str
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages", headers=brand.headers, json={**EMAIL, "from": requested}
        )
    assert response.status_code == 201, response.text
    assert response.json()["from"] == stored


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


# (case id, body changes (None removes the key), status, code, field named by `errors`)
REJECTIONS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("unknown-sender", {"from": "ceo@elsewhere.example"}, 422, "sender_not_allowed", None),
    (
        "sender-in-unverified-subdomain",
        {"from": "x@mail.brand.example"},
        422,
        "sender_not_allowed",
        None,
    ),
    ("sender-not-an-address", {"from": "Shop News"}, 422, "invalid_address", None),
    ("to-not-an-address", {"to": "not-an-address"}, 422, "invalid_address", None),
    ("to-with-display-name", {"to": "Alex <alex@example.com>"}, 422, "invalid_address", None),
    ("to-two-addresses", {"to": "a@example.com, b@example.com"}, 422, "invalid_address", None),
    (
        "subject-with-line-break",
        {"subject": "Hi\r\nBcc: all@example.com"},
        422,
        "validation_failed",
        "subject",
    ),
    # A lone surrogate is not Unicode text: the JSON parser refuses the document itself.
    ("metadata-lone-surrogate", {"metadata": {"note": "\ud800"}}, 400, "invalid_request", None),
    ("missing-subject", {"subject": None}, 422, "validation_failed", None),
    ("missing-body-and-html", {"body": None}, 422, "validation_failed", None),
    (
        "sms-without-route",
        {"channel": "sms", "to": "+13125550100", "subject": None},
        422,
        "no_route",
        None,
    ),
    (
        "mms-without-route",
        {"channel": "mms", "to": "+13125550100", "subject": None},
        422,
        "no_route",
        None,
    ),
    (
        "push-without-route",
        {"channel": "push", "to": "device-token-1", "subject": None},
        422,
        "no_route",
        None,
    ),
    (
        "sms-invalid-number-before-route",
        {"channel": "sms", "to": "+1555", "subject": None},
        422,
        "invalid_address",
        None,
    ),
    ("send-at-in-past", {"send_at": in_days(-1)}, 422, "send_at_in_past", None),
    (
        "send-at-without-offset",
        {"send_at": "2030-01-01T09:00:00"},
        422,
        "validation_failed",
        "send_at",
    ),
    ("send-at-too-far-ahead", {"send_at": in_days(40)}, 422, "validation_failed", None),
    ("unknown-channel", {"channel": "fax"}, 422, "validation_failed", "channel"),
    ("missing-channel", {"channel": None}, 422, "validation_failed", "channel"),
    ("missing-to", {"to": None}, 422, "validation_failed", "to"),
    ("to-wrong-type", {"to": 12345}, 422, "validation_failed", "to"),
    ("subject-wrong-type", {"subject": ["Your", "order"]}, 422, "validation_failed", "subject"),
    (
        "validity-wrong-type",
        {"validity_period_s": "soon"},
        422,
        "validation_failed",
        "validity_period_s",
    ),
    ("validity-zero", {"validity_period_s": 0}, 422, "validation_failed", "validity_period_s"),
    ("unknown-category", {"category": "promo"}, 422, "validation_failed", "category"),
    (
        "status-callback-not-a-url",
        {"status_callback": "not a url"},
        422,
        "validation_failed",
        "status_callback",
    ),
    ("unknown-field", {"colour": "blue"}, 422, "validation_failed", "colour"),
    ("from_-is-not-the-field", {"from_": "news@shop.example"}, 422, "validation_failed", "from_"),
    ("metadata-not-an-object", {"metadata": ["a"]}, 422, "validation_failed", "metadata"),
    (
        "metadata-nested-object",
        {"metadata": {"order": {"id": 1}}},
        422,
        "validation_failed",
        "metadata",
    ),
    (
        "metadata-too-many-keys",
        {"metadata": {f"k{i}": i for i in range(51)}},
        422,
        "validation_failed",
        "metadata",
    ),
    ("metadata-long-key", {"metadata": {"k" * 65: 1}}, 422, "validation_failed", "metadata"),
    (
        "metadata-too-large",
        {"metadata": {f"k{i}": "v" * 200 for i in range(25)}},
        422,
        "validation_failed",
        "metadata",
    ),
]


@pytest.mark.parametrize(
    ("changes", "status", "code", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in REJECTIONS],
)
async def test_bad_send_request_is_refused_precisely_and_stores_nothing(
    settings: Settings,
    db: Database,
    brand: AccountHandle,
    changes: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    body = {**EMAIL, **changes}
    body = {k: v for k, v in body.items() if v is not None}
    before = await stored_counts(db)
    async with serve_api(settings, db) as api:
        # json.dumps escapes what httpx's encoder would refuse (a lone surrogate).
        response = await api.client.post(
            "/v1/messages",
            headers={
                **brand.headers,
                "Idempotency-Key": "rejected-1",
                "Content-Type": "application/json",
            },
            content=json.dumps(body).encode(),
        )
    problem = assert_problem(response, status, code)
    assert problem["instance"] == "/v1/messages"
    if field is not None:
        assert field in error_fields(problem)
    assert await stored_counts(db) == before


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        pytest.param(b'{"channel": "email", "to": ', "malformed JSON", id="truncated-json"),
        pytest.param(b"channel=email", "malformed JSON", id="not-json"),
        pytest.param(b'[{"channel": "email"}]', "JSON object", id="json-array"),
        pytest.param(b'"hello"', "JSON object", id="json-string"),
        pytest.param(b"", "JSON object", id="empty"),
    ],
)
async def test_body_that_is_not_a_json_object_is_a_bad_request(
    settings: Settings, db: Database, account: AccountHandle, content: bytes, detail: str
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers={**account.headers, "Content-Type": "application/json"},
            content=content,
        )
    problem = assert_problem(response, 400, "invalid_request")
    assert detail in problem["detail"]
    assert await count_messages(db) == 0


async def test_body_over_the_size_limit_is_refused_before_it_is_read(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    async with serve_api(small, db) as api:
        # Just under the limit is fine.
        fits = {**EMAIL, "body": "x" * 1800}
        assert (
            await api.client.post("/v1/messages", headers=account.headers, json=fits)
        ).status_code == 201
        response = await api.client.post(
            "/v1/messages", headers=account.headers, json={**EMAIL, "body": "x" * 3000}
        )
    problem = assert_problem(response, 413, "payload_too_large")
    assert "2048" in problem["detail"]
    assert await count_messages(db) == 1


async def test_chunked_body_over_the_size_limit_is_refused(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"channel": "email", "to": "alex@example.com", "subject": "Hi", "body": "'
        for _ in range(3):
            yield b"x" * 1000
        yield b'"}'

    async def small_chunks() -> AsyncIterator[bytes]:
        for piece in (b'{"channel": "email", "to": "alex@example.com", ', b'"subject": "Hi", '):
            yield piece
        yield b'"body": "It ships today."}'

    async with serve_api(small, db) as api:
        headers = {**account.headers, "Content-Type": "application/json"}
        response = await api.client.post("/v1/messages", headers=headers, content=chunks())
        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "payload_too_large")
        assert await count_messages(db) == 0

        # A chunked body within the limit is read whole and accepted.
        accepted = await api.client.post("/v1/messages", headers=headers, content=small_chunks())
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["body"] == "It ships today."
    assert await count_messages(db) == 1


async def test_send_at_in_the_future_schedules_the_message(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={**EMAIL, "send_at": send_at.isoformat(), "validity_period_s": 600},
        )
        assert response.status_code == 201, response.text
        message = response.json()
        events = (
            await api.client.get(f"/v1/messages/{message['id']}/events", headers=account.headers)
        ).json()["data"]
    assert message["status"] == "scheduled"
    assert parse_time(message["send_at"]) == send_at
    # The validity period runs from the scheduled time, not from acceptance.
    assert parse_time(message["expires_at"]) == send_at + timedelta(seconds=600)
    assert [e["status"] for e in events] == ["scheduled"]


async def test_send_at_a_moment_ago_means_now(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    a_moment_ago = datetime.now(UTC) - timedelta(seconds=5)
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={**EMAIL, "send_at": a_moment_ago.isoformat()},
        )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "queued"


async def test_validity_period_sets_expires_at(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages", headers=account.headers, json={**EMAIL, "validity_period_s": 3600}
        )
        without = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
    assert response.status_code == 201, response.text
    message = response.json()
    expires_at = parse_time(message["expires_at"])
    assert expires_at - parse_time(message["created_at"]) == timedelta(seconds=3600)
    assert without.json()["expires_at"] is None


async def test_marketing_category_metadata_and_callback_are_kept(
    settings: Settings, db: Database
) -> None:
    account = await make_account(
        db,
        compliance={"require_marketing_consent": False, "postal_address": "1 Main St, Springfield"},
    )
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={
                **EMAIL,
                "body": "Spring sale.\n1 Main St, Springfield\nUnsubscribe: {{unsubscribe_url}}",
                "category": "marketing",
                "status_callback": "https://hooks.shop.example/amnex",
                "metadata": {"campaign": "spring", "flag": True, "none": None, "ratio": 0.5},
            },
        )
    assert response.status_code == 201, response.text
    message = response.json()
    assert message["category"] == "marketing"
    assert message["status_callback"] == "https://hooks.shop.example/amnex"
    assert message["metadata"] == {"campaign": "spring", "flag": True, "none": None, "ratio": 0.5}


async def test_account_without_a_default_sender_must_name_one(
    settings: Settings, db: Database
) -> None:
    account = await make_account(db, email_senders=("@brand.example",), default_email=None)
    async with serve_api(settings, db) as api:
        missing = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
        named = await api.client.post(
            "/v1/messages", headers=account.headers, json={**EMAIL, "from": "hi@brand.example"}
        )
    assert "from" in assert_problem(missing, 422, "validation_failed")["detail"]
    assert named.status_code == 201, named.text
    assert named.json()["from"] == "hi@brand.example"


async def test_openapi_lists_the_send_endpoint_with_from_as_the_field_name(
    settings: Settings, db: Database
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert "post" in spec["paths"]["/v1/messages"]
    assert "201" in spec["paths"]["/v1/messages"]["post"]["responses"]
    schemas = spec["components"]["schemas"]
    assert "from" in schemas["SendMessageRequest"]["properties"]
    message_schema = next(v for k, v in schemas.items() if k.startswith("MessageOut"))
    assert "from" in message_schema["properties"]
    assert "from_" not in message_schema["properties"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_metadata_number_that_json_cannot_carry_is_refused(
    settings: Settings, db: Database, account: AccountHandle, literal: str
) -> None:
    # Python's JSON parser accepts these literals; the database's JSON type does not.
    content = (
        '{"channel": "email", "to": "alex@example.com", "subject": "Hi", "body": "Hello", '
        f'"metadata": {{"score": {literal}}}}}'
    )
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers={**account.headers, "Content-Type": "application/json"},
            content=content.encode(),
        )
    problem = assert_problem(response, 422, "validation_failed")
    assert error_fields(problem) == ["metadata"]
    assert await count_messages(db) == 0


async def test_sender_display_name_that_makes_from_too_long_is_refused(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # 400 characters as sent; quoting the name for the header makes it longer than that.
    name = "Shop. News " + "x" * (400 - len("Shop. News  <news@shop.example>"))
    requested = f"{name} <news@shop.example>"
    assert len(requested) == 400
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages", headers=account.headers, json={**EMAIL, "from": requested}
        )
        # A batch-mate of a refused request is unaffected.
        ok = await api.client.post("/v1/messages", headers=account.headers, json=EMAIL)
    assert "from" in assert_problem(response, 422, "validation_failed")["detail"]
    assert ok.status_code == 201
    assert await count_messages(db) == 1


async def test_a_body_that_is_not_json_by_its_content_type_is_refused(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        response = await api.client.post(
            "/v1/messages",
            headers={**account.headers, "Content-Type": "application/x-www-form-urlencoded"},
            content=b"channel=email&to=alex%40example.com",
        )
    assert_problem(response, 415, "unsupported_media_type")
