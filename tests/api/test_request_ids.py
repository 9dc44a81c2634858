"""Request ids: every response names its request, and every log line written while serving it
carries the same id."""

from __future__ import annotations

import json
import logging
import os
import re

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from amnex.api.edge import EdgeMiddleware, request_id_for
from amnex.config import Settings
from amnex.db.engine import Database
from support import AccountHandle, Capture, serve_api

GENERATED = re.compile(r"req_[0-9a-f]{20}")


def test_a_plain_client_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_for(b"checkout-7f3a.2:retry") == "checkout-7f3a.2:retry"
    assert GENERATED.fullmatch(request_id_for(None))
    for unsafe in (b"", b"has space", b"line\nbreak", b"x" * 129, b"\xff\xfe", b"a/b"):
        assert GENERATED.fullmatch(request_id_for(unsafe)), unsafe
    assert request_id_for(None) != request_id_for(None)


async def test_every_response_carries_its_request_id(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    async with serve_api(settings, db) as api:
        chosen = await api.client.get(
            "/v1/messages", headers={**account.headers, "X-Request-Id": "client-chosen-1"}
        )
        generated = await api.client.get("/v1/messages", headers=account.headers)
        refused = await api.client.get("/v1/messages")  # no credentials: a problem response

    assert chosen.status_code == 200
    assert chosen.headers["x-request-id"] == "client-chosen-1"
    assert GENERATED.fullmatch(generated.headers["x-request-id"])
    assert refused.status_code == 401
    assert GENERATED.fullmatch(refused.headers["x-request-id"])
    assert refused.headers["x-request-id"] != generated.headers["x-request-id"]


async def test_log_lines_written_while_serving_carry_the_request_id(
    capture: Capture, settings: Settings
) -> None:
    # Given the real logging pipeline writing JSON, and a handler that logs
    stream = capture(True)

    async def handler(request: Request) -> PlainTextResponse:
        logging.getLogger("amnex.test").info("handling %s", request.url.path)
        return PlainTextResponse("ok")

    app = EdgeMiddleware(Starlette(routes=[Route("/work", handler)]), settings=settings)
    transport = httpx.ASGITransport(app=app)

    # When two requests are served, one with the client's id
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = await client.get("/work", headers={"X-Request-Id": "trace-abc"})
        second = await client.get("/work")
    logging.getLogger("amnex.test").info("after the requests")

    # Then each log line names the request it was written for, and none outside a request
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    handled = [line for line in lines if line["event"].startswith("handling")]
    assert [line["request_id"] for line in handled] == [
        "trace-abc",
        second.headers["x-request-id"],
    ]
    assert first.headers["x-request-id"] == "trace-abc"
    (after,) = [line for line in lines if line["event"] == "after the requests"]
    assert "request_id" not in after


def test_a_forked_process_makes_request_ids_of_its_own() -> None:
    # Given ids made in this process, then a child forked from it
    parent = {request_id_for(None) for _ in range(3)}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then exit at once
        os.close(read)
        os.write(write, ",".join(request_id_for(None) for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)

    # Then the child's ids carry another prefix, so none repeats the parent's
    assert child.isdisjoint(parent)
    assert {i[:14] for i in child}.isdisjoint({i[:14] for i in parent})
