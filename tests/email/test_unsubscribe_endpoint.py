"""Email: the public one-click unsubscribe endpoint suppresses on POST, never on GET."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.email.unsubscribe import UnsubscribeTokens
from amnex.recipients import service as recipients
from amnex.recipients.models import OptOut, OptOutEvent
from support import AccountHandle, serve_api

MESSAGE_ID = "msg_01JBCDEFGHJKMNPQRSTVWXYZ012"
ADDRESS = "alex@example.com"


@pytest.fixture
def unsubscribe_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "public_url": "https://amnex.example.com",
            "unsubscribe_secret": SecretStr("endpoint-test-secret-0123456789abcdef"),
        }
    )


def token_for(settings: Settings, account: AccountHandle, address: str = ADDRESS) -> str:
    return UnsubscribeTokens.from_settings(settings).issue(
        account_id=account.account_id, address=address, message_id=MESSAGE_ID
    )


async def suppressed(db: Database, account: AccountHandle, address: str = ADDRESS) -> OptOut | None:
    async with db.unit_of_work() as session:
        return await recipients.is_suppressed(session, account.account_id, "email", address)


async def count(db: Database, model: type[OptOut] | type[OptOutEvent]) -> int:
    async with db.unit_of_work() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_one_click_post_suppresses_the_address_at_once(
    unsubscribe_settings: Settings, db: Database, account: AccountHandle
) -> None:
    token = token_for(unsubscribe_settings, account)
    async with serve_api(unsubscribe_settings, db) as api:
        # Given a recipient's mail client offering one-click unsubscribe (RFC 8058)
        # When it POSTs List-Unsubscribe=One-Click to the link
        response = await api.client.post(
            f"/v1/unsubscribe/{token}",
            content=b"List-Unsubscribe=One-Click",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": "MailClient/1.0",
            },
        )

    # Then the address is on the account's email suppression list, with the evidence
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "unsubscribed" in response.text
    opt_out = await suppressed(db, account)
    assert opt_out is not None
    assert (opt_out.account_id, opt_out.channel, opt_out.source) == (
        account.account_id,
        "email",
        "unsubscribe_link",
    )
    assert opt_out.evidence == {"message_id": MESSAGE_ID, "user_agent": "MailClient/1.0"}


async def test_a_second_click_changes_nothing(
    unsubscribe_settings: Settings, db: Database, account: AccountHandle
) -> None:
    token = token_for(unsubscribe_settings, account)
    async with serve_api(unsubscribe_settings, db) as api:
        first = await api.client.post(f"/v1/unsubscribe/{token}")
        second = await api.client.post(
            f"/v1/unsubscribe/{token}", files={"List-Unsubscribe": (None, "One-Click")}
        )

    assert (first.status_code, second.status_code) == (200, 200)
    assert await count(db, OptOut) == 1
    assert await count(db, OptOutEvent) == 1


async def test_opening_the_link_shows_a_confirmation_form_and_suppresses_nothing(
    unsubscribe_settings: Settings, db: Database, account: AccountHandle
) -> None:
    token = token_for(unsubscribe_settings, account)
    async with serve_api(unsubscribe_settings, db) as api:
        # Given a link scanner that fetches every URL in a message
        page = await api.client.get(f"/v1/unsubscribe/{token}")

    # Then it sees a page whose button POSTs back, and nobody is unsubscribed
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<form method="post">' in page.text
    assert ADDRESS not in page.text
    assert await suppressed(db, account) is None


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_forged_or_altered_token_is_not_found(
    unsubscribe_settings: Settings, db: Database, account: AccountHandle, method: str
) -> None:
    token = token_for(unsubscribe_settings, account)
    forged = UnsubscribeTokens(b"not the key" * 3, key_source="unsubscribe_secret").issue(
        account_id=account.account_id, address="victim@example.com", message_id=MESSAGE_ID
    )
    altered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    async with serve_api(unsubscribe_settings, db) as api:
        responses = [
            await api.client.request(method, f"/v1/unsubscribe/{bad}")
            for bad in (forged, altered, "nonsense")
        ]

    for response in responses:
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "not_found"
    assert await count(db, OptOut) == 0


async def test_a_link_of_an_account_that_no_longer_exists_is_not_found(
    unsubscribe_settings: Settings, db: Database
) -> None:
    gone = AccountHandle(account_id="acc_01JBCDEFGHJKMNPQRSTVWXYZ012", api_key="")
    token = token_for(unsubscribe_settings, gone)
    async with serve_api(unsubscribe_settings, db) as api:
        response = await api.client.post(f"/v1/unsubscribe/{token}")

    assert response.status_code == 404
    assert await count(db, OptOut) == 0


async def test_the_unsubscribe_endpoints_need_no_api_key_and_are_in_the_openapi(
    unsubscribe_settings: Settings, db: Database
) -> None:
    async with serve_api(unsubscribe_settings, db) as api:
        spec = (await api.client.get("/openapi.json")).json()

    operations = spec["paths"]["/v1/unsubscribe/{token}"]
    assert set(operations) == {"get", "post"}
    assert all("security" not in operation for operation in operations.values())
