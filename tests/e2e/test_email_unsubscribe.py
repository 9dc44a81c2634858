"""End to end over real sockets: marketing email → SMTP sink → one-click unsubscribe."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import SecretStr

from amnex.accounts.models import Account
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.recipients import service as recipients
from amnex.simulators.smtp_sink import SmtpSink
from support import AccountHandle, serve_system, wait_for_status

PUBLIC_URL = "https://amnex.example.test"
POSTAL_ADDRESS = "Shop Example, 1 Main Street, Springfield, IL 62701"


async def allow_marketing_email(db: Database, account: AccountHandle) -> None:
    """The account's postal address (CAN-SPAM) and consent policy for this test."""
    async with db.unit_of_work() as session:
        row = await session.get(Account, account.account_id)
        assert row is not None
        row.settings = {
            **row.settings,
            "compliance": {"postal_address": POSTAL_ADDRESS, "require_marketing_consent": False},
        }


async def test_a_recipient_unsubscribes_from_marketing_email_with_one_click(
    settings: Settings, db: Database, sink: SmtpSink, account: AccountHandle
) -> None:
    settings = settings.model_copy(
        update={
            "public_url": PUBLIC_URL,
            "unsubscribe_secret": SecretStr("e2e-unsubscribe-secret-0123456789abcdef"),
        }
    )
    await allow_marketing_email(db, account)
    async with serve_system(settings, db) as api:
        # Given a marketing email sent through the API and delivered to the recipient's server
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={
                "channel": "email",
                "category": "marketing",
                "to": "sam@example.com",
                "subject": "Spring sale",
                "body": f"20% off this week.\n{POSTAL_ADDRESS}\n"
                "Unsubscribe: {{unsubscribe_url}}",
            },
        )
        assert response.status_code == 201, response.text
        message_id = response.json()["id"]
        await wait_for_status(api.client, account, message_id, {"delivered"})
        [received] = [m for m in sink.messages() if m["x_amnex_message_id"] == message_id]

        # When the recipient's mail client follows RFC 8058: POST to the List-Unsubscribe URL
        assert received["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
        url = received["list_unsubscribe"].removeprefix("<").removesuffix(">")
        assert url.startswith(f"{PUBLIC_URL}/v1/unsubscribe/")
        assert f"Unsubscribe: {url}" in received["text"]
        # (public_url is the proxy's address; the request goes to the server behind it.)
        unsubscribe = await api.client.post(
            urlsplit(url).path,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert unsubscribe.status_code == 200, unsubscribe.text

        # Then the address is suppressed for the account's email, with the message as evidence
        async with db.unit_of_work() as session:
            opt_out = await recipients.is_suppressed(
                session, account.account_id, "email", "sam@example.com"
            )
        assert opt_out is not None
        assert opt_out.source == "unsubscribe_link"
        assert opt_out.evidence is not None
        assert opt_out.evidence["message_id"] == message_id

        # And the next email to that address is refused
        again = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={
                "channel": "email",
                "to": "sam@example.com",
                "subject": "Your receipt",
                "body": "Thanks.",
            },
        )
    assert again.status_code == 422, again.text
    assert again.json()["code"] == "recipient_opted_out"
