"""API: `/v1/unsubscribe/{token}` — the public one-click unsubscribe of marketing email (RFC 8058).

No API key: the token in the path (`email.unsubscribe`) is the credential. `POST` suppresses
at once — it is what mail clients send for `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
and what the confirmation page's button sends — and is idempotent. `GET` only shows that
page: link scanners and mail-security proxies fetch every URL in a message, and must not
unsubscribe anyone by doing so. An unknown, altered or forged token is a 404.
"""

from __future__ import annotations

import html
from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from amnex.accounts.models import Account
from amnex.api.deps import runtime
from amnex.email.unsubscribe import UNSUBSCRIBE_PATH, UnsubscribeClaim, UnsubscribeTokens
from amnex.errors import NotFound
from amnex.recipients import service as recipients

router = APIRouter(prefix=UNSUBSCRIBE_PATH, tags=["unsubscribe"])

USER_AGENT_MAX_LENGTH: Final = 500
# The pages load nothing and may only post back to themselves; nobody should index or cache
# them, nor learn the token through a Referer.
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}
_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;
color:#222}}button{{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}}</style>
</head><body><h1>{title}</h1>{content}</body></html>
"""


def _tokens(request: Request) -> UnsubscribeTokens:
    """The app's token opener, built on first use from the same settings as the workers'."""
    tokens: UnsubscribeTokens | None = getattr(request.app.state, "unsubscribe_tokens", None)
    if tokens is None:
        tokens = UnsubscribeTokens.from_settings(runtime(request).settings)
        request.app.state.unsubscribe_tokens = tokens
    return tokens


def _claim_or_raise(request: Request, token: str) -> UnsubscribeClaim:
    claim = _tokens(request).open(token)
    if claim is None:
        raise NotFound("no such unsubscribe link")
    return claim


def _page(title: str, content: str) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), content=content), headers=_PAGE_HEADERS
    )


@router.get(
    "/{token}",
    response_class=HTMLResponse,
    summary="Show the unsubscribe confirmation page",
    responses={404: {"description": "Unknown or altered link"}},
)
async def confirm_unsubscribe(request: Request, token: str) -> HTMLResponse:
    """A page with one button that confirms (POSTs); opening it suppresses nothing."""
    _claim_or_raise(request, token)
    return _page(
        "Unsubscribe",
        "<p>Stop receiving these emails? Press the button to unsubscribe.</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


@router.post(
    "/{token}",
    response_class=HTMLResponse,
    summary="Unsubscribe (RFC 8058 one-click)",
    responses={404: {"description": "Unknown or altered link"}},
)
async def unsubscribe(request: Request, token: str) -> HTMLResponse:
    """Suppress the link's address for its account's email, at once; again changes nothing.

    The body (`List-Unsubscribe=One-Click`, form-encoded or multipart, or empty) is not
    required: the token alone proves which recipient asked.
    """
    claim = _claim_or_raise(request, token)
    evidence: dict[str, str] = {"message_id": claim.message_id}
    user_agent = request.headers.get("user-agent")
    if user_agent:
        evidence["user_agent"] = user_agent[:USER_AGENT_MAX_LENGTH]
    async with runtime(request).db.unit_of_work() as session:
        if await session.get(Account, claim.account_id) is None:
            raise NotFound("no such unsubscribe link")
        await recipients.add_opt_out(
            session,
            account_id=claim.account_id,
            channel=claim.channel,
            address=claim.address,
            source="unsubscribe_link",
            evidence=evidence,
        )
    return _page(
        "You are unsubscribed", "<p>You will not receive email from this sender any more.</p>"
    )
