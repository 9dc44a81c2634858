"""The accept path's hand-serialised message equals the model's own JSON."""

from __future__ import annotations

import json
from datetime import timedelta

from amnex.accounts.service import KeyContext
from amnex.carriers.routing import RouteTable
from amnex.clock import utc_now
from amnex.messages.schemas import SendMessageRequest
from amnex.messages.service import message_json, message_out, prepare_message

EMAIL_ONLY = RouteTable(static_channels=frozenset({"email"}))

CTX = KeyContext(
    key_id="key_x",
    account_id="acc_x",
    scopes=frozenset({"send"}),
    rate_limit_per_s=None,
    account_settings={},
    senders={"email": frozenset({"@shop.example"})},
    default_senders={},
)


def test_message_json_is_the_message_object_as_the_model_serialises_it() -> None:
    request = SendMessageRequest.model_validate(
        {
            "channel": "email",
            "from": "Shop News <news@shop.example>",
            "to": "alex@example.com",
            "subject": "Your order",
            "body": "Ships today",
            "html": "<p>Ships today</p>",
            "send_at": (utc_now() + timedelta(hours=1)).isoformat(),
            "validity_period_s": 3600,
            "category": "marketing",
            "status_callback": "https://hooks.shop.example/amnex",
            "metadata": {"order": "A-1", "n": 2, "ok": True, "x": None, "f": 1.5},
        }
    )
    prepared = prepare_message(CTX, request, now=utc_now(), routes=EMAIL_ONLY)
    fast = message_json(prepared.row, to=prepared.to)
    model = message_out(prepared.row).model_dump_json(by_alias=True).encode()
    assert fast == model
    assert "from" in json.loads(fast)
