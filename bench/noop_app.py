"""Bench: the no-op ceiling — our HTTP stack validating the real request body and nothing else.

`POST /v1/messages` here parses and validates the same `SendMessageRequest` as the real
endpoint and answers 201 with a small constant JSON body: no auth, no rate limit, no database.
It runs on the same server stack as `amnex serve` (uvicorn with uvloop and httptools, access
log off), so `accept.py` can report every real target as a fraction of this ceiling, measured
on the same machine in the same session.

    .venv/bin/python bench/noop_app.py --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from starlette.responses import JSONResponse, Response

from amnex.messages.schemas import SendMessageRequest

# Built once: the ceiling should measure the stack, not the serialisation of a reply.
_CREATED = b'{"id":"msg_noop","status":"queued"}'

app = FastAPI(title="amnex no-op ceiling", docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/v1/messages", status_code=201)
async def send_message(body: SendMessageRequest) -> Response:
    """Validate the body exactly as the real endpoint does, then answer at once."""
    del body  # validation is the work being measured
    return Response(_CREATED, status_code=201, media_type="application/json")


@app.get("/healthz")
async def healthz() -> JSONResponse:
    """The same readiness probe `accept.py` uses for `amnex serve`."""
    return JSONResponse({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # The same server options `amnex serve` passes to uvicorn, with the fast loop and parser
    # named explicitly so a missing extra fails loudly instead of falling back to asyncio/h11.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
