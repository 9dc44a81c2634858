"""TLS policy (privacy policy §8): credentials travel only over HTTPS, except from loopback, in
dev mode, or through a trusted proxy that terminated TLS; HTTPS responses carry HSTS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
from api_checks import EMAIL, assert_problem, count_messages

from amnex.api.app import create_app
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.runtime import Runtime
from support import AccountHandle, serve_api, write_self_signed_certificate

REMOTE_CLIENT = "203.0.113.5"
HSTS = "max-age=31536000; includeSubDomains"


@contextlib.asynccontextmanager
async def edge_client(
    settings: Settings, db: Database, *, client_host: str = REMOTE_CLIENT
) -> AsyncIterator[httpx.AsyncClient]:
    """The ASGI app called directly, as if the TCP peer were `client_host`."""
    rt = Runtime.build(settings, db=db)
    await rt.start()
    try:
        transport = httpx.ASGITransport(
            app=create_app(rt, manage_lifecycle=False), client=(client_host, 1234)
        )
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.shop.example"
        ) as client:
            yield client
    finally:
        await rt.close(dispose_db=False)


async def test_credentials_over_plain_http_from_a_remote_client_are_refused(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with edge_client(settings, db) as client:
        listed = await client.get("/v1/messages", headers=account.headers)
        sent = await client.post("/v1/messages", headers=account.headers, json=EMAIL)
        # Nothing secret was sent here, so plain HTTP is fine.
        health = await client.get("/healthz")
    for response in (listed, sent):
        assert "HTTPS" in assert_problem(response, 403, "tls_required")["detail"]
        assert "strict-transport-security" not in response.headers
    assert health.status_code == 200
    assert await count_messages(db) == 0


async def test_trusted_proxy_that_terminated_tls_is_accepted_and_answered_with_hsts(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    behind_proxy = settings.model_copy(update={"trusted_proxies": ["203.0.113.0/24"]})
    forwarded = {**account.headers, "X-Forwarded-Proto": "https"}
    async with edge_client(behind_proxy, db) as client:
        listed = await client.get("/v1/messages", headers=forwarded)
        sent = await client.post("/v1/messages", headers=forwarded, json=EMAIL)
    assert listed.status_code == 200, listed.text
    assert sent.status_code == 201, sent.text
    for response in (listed, sent):
        assert response.headers["strict-transport-security"] == HSTS
    assert await count_messages(db) == 1


async def test_trusted_proxy_that_forwarded_plain_http_is_refused(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    behind_proxy = settings.model_copy(update={"trusted_proxies": ["203.0.113.0/24"]})
    async with edge_client(behind_proxy, db) as client:
        response = await client.get(
            "/v1/messages", headers={**account.headers, "X-Forwarded-Proto": "http"}
        )
    assert_problem(response, 403, "tls_required")


async def test_untrusted_client_cannot_claim_that_tls_was_terminated(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Trust a different network than the one the request comes from.
    elsewhere = settings.model_copy(update={"trusted_proxies": ["198.51.100.7"]})
    async with edge_client(elsewhere, db) as client:
        response = await client.get(
            "/v1/messages", headers={**account.headers, "X-Forwarded-Proto": "https"}
        )
    assert_problem(response, 403, "tls_required")
    assert "strict-transport-security" not in response.headers


async def test_dev_mode_accepts_credentials_over_plain_http_from_anywhere(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    dev = settings.model_copy(update={"dev_mode": True})
    async with edge_client(dev, db) as client:
        response = await client.get("/v1/messages", headers=account.headers)
    assert response.status_code == 200, response.text
    assert "strict-transport-security" not in response.headers


async def test_loopback_client_may_use_plain_http_without_hsts(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    assert settings.dev_mode is False
    async with edge_client(settings, db, client_host="127.0.0.1") as client:
        asgi = await client.get("/v1/messages", headers=account.headers)
    async with serve_api(settings, db) as api:
        socket_response = await api.client.get("/v1/messages", headers=account.headers)
    for response in (asgi, socket_response):
        assert response.status_code == 200, response.text
        assert "strict-transport-security" not in response.headers


@contextlib.asynccontextmanager
async def serve_https(
    settings: Settings, db: Database, certfile: Path, keyfile: Path
) -> AsyncIterator[str]:
    """`amnex serve` with a certificate on a loopback socket; yields its https origin."""
    rt = Runtime.build(settings, db=db)
    app = create_app(rt, manage_lifecycle=False)
    await rt.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            ssl_certfile=str(certfile),
            ssl_keyfile=str(keyfile),
        )
    )
    serve_task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serve_task.done():
                serve_task.result()  # start-up failed: raise its error
            await asyncio.sleep(0.01)
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serve_task
        await rt.close(dispose_db=False)
        sock.close()


async def test_https_server_accepts_credentials_and_sends_hsts(
    settings: Settings, db: Database, account: AccountHandle, tmp_path: Path
) -> None:
    certfile, keyfile = write_self_signed_certificate(tmp_path)
    trust = ssl.create_default_context(cafile=str(certfile))
    async with (
        serve_https(settings, db, certfile, keyfile) as origin,
        httpx.AsyncClient(base_url=origin, verify=trust) as client,
    ):
        sent = await client.post("/v1/messages", headers=account.headers, json=EMAIL)
        fetched = await client.get(f"/v1/messages/{sent.json()['id']}", headers=account.headers)
        refused = await client.get("/v1/messages")
    assert sent.status_code == 201, sent.text
    assert fetched.status_code == 200
    for response in (sent, fetched, refused):
        assert response.headers["strict-transport-security"] == HSTS
    # Errors over HTTPS carry HSTS too.
    assert_problem(refused, 401, "unauthorized")
