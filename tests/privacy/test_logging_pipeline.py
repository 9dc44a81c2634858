"""Privacy: real-looking records through the real logging pipeline leave no address or content.

The records are what the code and its libraries log (the project's loggers with positional
arguments and `extra`, uvicorn's access and error loggers, aiosmtpd's `mail.log`, an exception
whose text quotes an address, structlog with bound context), written by `configure_logging` into
a captured stream, in both formats. The last test runs `amnex serve` with JSON logs.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys

import httpx
import pytest
import structlog

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.logging_setup import configured_log_format
from support import AccountHandle, Capture, eventually, free_socket

E164 = "+14155550100"
E164_DIGITS = "4155550100"
NATIONAL = "(020) 7946 0958"
EMAIL = "alice.liddell@example.org"
EXTRA_EMAIL = "bob.recipient@example.net"
TRACEBACK_EMAIL = "carol.kent@mail.example.com"
BODY = "Your verification code is 493021. Do not share it."
UNSUBSCRIBE_TOKEN = "1.msg_01J9ZZZZZZZZZZZZZZZZZZZZZZ.Q0xJRU5UU0VDUkVUVE9LRU4"
API_KEY = "amx_Zk3Lr9QwErTyUiOp1234567890abcdef"
MESSAGE_ID = "msg_01J9ABCDEFGHJKMNPQRSTVWXYZ"
ACCOUNT_ID = "acc_01J9ABCDEFGHJKMNPQRSTVWXYZ"

PLAINTEXT = [
    E164,
    E164_DIGITS,
    "7946 0958",
    EMAIL,
    "alice.liddell",
    EXTRA_EMAIL,
    "bob.recipient",
    TRACEBACK_EMAIL,
    "carol.kent",
    BODY,
    "493021",
    UNSUBSCRIBE_TOKEN,
    "Q0xJRU5UU0VDUkVUVE9LRU4",
    API_KEY,
    "Zk3Lr9Qw",
]


def log_real_looking_records() -> None:
    app_log = logging.getLogger("amnex.messages.accept")
    app_log.info(
        "message %s accepted for %s to %s",
        MESSAGE_ID,
        ACCOUNT_ID,
        E164,
        extra={"at_ms": 1717171717171},
    )
    app_log.warning("reply from %s: the number is not E.164", NATIONAL)
    app_log.info(
        "email to %s queued",
        EMAIL,
        extra={
            "message_id": MESSAGE_ID,
            "to": EXTRA_EMAIL,
            "body": BODY,
            "subject": "Your code",
            "headers": {"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "req_42"},
            "port": 8000,
            "status_code": 503,
            "error_code": "unknown_subscriber",
        },
    )
    try:
        raise RuntimeError(f"550 5.1.1 <{TRACEBACK_EMAIL}>: recipient unknown ({E164})")
    except RuntimeError:
        logging.getLogger("amnex.channels.smtp").exception("send of %s failed", MESSAGE_ID)

    # uvicorn's access-log record (its arguments and format) and its error logger
    access = logging.getLogger("uvicorn.access")
    access_format = '%s - "%s %s HTTP/%s" %d'
    access.info(
        access_format, "127.0.0.1:53412", "GET", "/v1/messages?to=%2B14155550100", "1.1", 200
    )
    access.info(
        access_format, "127.0.0.1:53412", "POST", f"/v1/unsubscribe/{UNSUBSCRIBE_TOKEN}", "1.1", 204
    )
    access.info(
        access_format,
        "127.0.0.1:53412",
        "GET",
        f"/v1/consents?address={EMAIL.replace('@', '%40')}&limit=20",
        "1.1",
        200,
    )
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
        "http",
        "127.0.0.1",
        8000,
        extra={"color_message": "Uvicorn running on \x1b[1m%s://%s:%d\x1b[0m"},
    )
    # aiosmtpd's session log quotes the envelope
    logging.getLogger("mail.log").debug("%r RCPT TO:<%s>", ("127.0.0.1", 40112), EXTRA_EMAIL)
    # structlog with context bound for a request
    structlog.contextvars.bind_contextvars(request_id="req_42", message_id=MESSAGE_ID)
    structlog.get_logger("amnex.api").info("accepted", to=E164, body=BODY, segments=2)
    structlog.contextvars.clear_contextvars()


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_no_address_body_or_token_escapes_the_pipeline(capture: Capture, as_json: bool) -> None:
    # Given logging configured as `amnex serve` configures it
    stream = capture(as_json)

    # When the code and its libraries log what they log
    log_real_looking_records()

    # Then no plaintext address, body or credential is in the output
    output = stream.getvalue()
    leaks = [secret for secret in PLAINTEXT if secret in output]
    assert leaks == [], output
    # ... while ids, levels, codes, ports and masked forms are
    for kept in [
        MESSAGE_ID,
        ACCOUNT_ID,
        "req_42",
        "1717171717171",
        "unknown_subscriber",
        "8000",
        "503",
        "550 5.1.1",
        "+1*******00",
        "*******58",
        "a***@example.org",
        "b***@example.net",
        "c***@mail.example.com",
        "/v1/messages?to=%2B1*******00",
        "/v1/unsubscribe/[redacted]",
        "[dropped]",
        "Traceback (most recent call last)",
        "RuntimeError: 550 5.1.1",
        "127.0.0.1:8000",
    ]:
        assert kept in output, kept
    for level in ["info", "warning", "error", "debug"]:
        assert level in output
    for logger in ["amnex.messages.accept", "uvicorn.access", "uvicorn.error", "mail.log"]:
        assert logger in output
    assert "\x1b[" not in output  # uvicorn's colored duplicate of the message is not copied


def test_json_mode_writes_one_object_per_line_with_time_level_logger_and_event(
    capture: Capture,
) -> None:
    stream = capture(True)

    log_real_looking_records()

    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    records = [json.loads(line) for line in lines]
    for record in records:
        assert list(record)[:4] == ["timestamp", "level", "logger", "event"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", record["timestamp"])
    first, _, queued, failed = records[:4]
    assert first["event"] == f"message {MESSAGE_ID} accepted for {ACCOUNT_ID} to +1*******00"
    assert first["at_ms"] == 1717171717171
    assert queued["message_id"] == MESSAGE_ID
    assert queued["to"] == "b***@example.net"
    assert (queued["body"], queued["subject"]) == ("[dropped]", "[dropped]")
    assert queued["headers"] == {"Authorization": "[dropped]", "X-Request-Id": "req_42"}
    assert (queued["port"], queued["status_code"]) == (8000, 503)
    assert failed["level"] == "error"
    assert failed["exception"].endswith(
        "RuntimeError: 550 5.1.1 <c***@mail.example.com>: recipient unknown (+1*******00)"
    )
    bound = records[-1]
    assert bound["request_id"] == "req_42"
    assert bound["message_id"] == MESSAGE_ID
    assert (bound["to"], bound["body"], bound["segments"]) == ("+1*******00", "[dropped]", 2)


def test_handlers_that_libraries_installed_are_replaced_by_the_masked_root_handler(
    capture: Capture,
) -> None:
    # Given uvicorn's default logging (its own handler, not propagating) already in place
    unmasked = io.StringIO()
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(logging.StreamHandler(unmasked))
    uvicorn_error.propagate = False

    # When logging is configured and uvicorn logs an address
    stream = capture(True)
    uvicorn_error.warning("Invalid HTTP request from %s", E164)

    # Then it went through the masked pipeline only
    assert unmasked.getvalue() == ""
    assert json.loads(stream.getvalue())["event"] == "Invalid HTTP request from +1*******00"


def test_log_format_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMNEX_CONFIG_FILE", raising=False)
    monkeypatch.setenv("AMNEX_LOG_FORMAT", "json")
    assert configured_log_format() == "json"
    monkeypatch.setenv("AMNEX_LOG_FORMAT", "yaml")  # not a format: the command reports it
    assert configured_log_format() == "text"
    monkeypatch.delenv("AMNEX_LOG_FORMAT")
    assert configured_log_format() == "text"


@pytest.mark.slow
async def test_serve_with_json_logs_writes_no_plaintext_address(
    settings: Settings, db: Database, account: AccountHandle
) -> None:
    # Given `amnex serve` with JSON logs
    with free_socket() as sock:
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    env.update(
        {
            "AMNEX_DATABASE_URL": settings.database_url,
            "AMNEX_SMTP_HOST": "127.0.0.1",
            "AMNEX_LOG_FORMAT": "json",
        }
    )
    if settings.master_key is not None:  # the key the suite's database was set up with
        env["AMNEX_MASTER_KEY"] = settings.master_key.get_secret_value()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child process, never awaited
        [sys.executable, "-m", "amnex", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, bool, timeout_s=30, interval_s=0.2)

            # When a client sends to addresses and looks them up
            sent = await client.post(
                "/v1/messages",
                headers=account.headers,
                json={"channel": "email", "to": EMAIL, "subject": "Code", "body": BODY},
            )
            assert sent.status_code == 201, sent.text
            await client.post(
                "/v1/messages",
                headers=account.headers,
                json={"channel": "sms", "to": E164, "body": BODY},
            )
            await client.get("/v1/consents", headers=account.headers, params={"address": EMAIL})
            await client.post(f"/v1/unsubscribe/{UNSUBSCRIBE_TOKEN}")
    finally:
        proc.terminate()
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)

    # Then every line it wrote is a JSON object, uvicorn's included, and none holds plaintext
    lines = stderr.splitlines()
    records = [json.loads(line) for line in lines]
    assert any(
        r["logger"] == "uvicorn.error" and r["event"].startswith("Uvicorn running on")
        for r in records
    ), stderr
    assert any(str(port) in r["event"] for r in records), "a port is not a phone number"
    leaks = [secret for secret in PLAINTEXT if secret in stderr]
    assert leaks == [], stderr
