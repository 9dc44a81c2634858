"""`amnex serve` as a process: HTTPS with HSTS, and a refusal to start on an old schema."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from amnex.config import Settings
from amnex.db.engine import Database
from support import AccountHandle, eventually, free_socket, write_self_signed_certificate


def serve_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    env.update(
        {"AMNEX_DATABASE_URL": settings.database_url, "AMNEX_SMTP_HOST": "127.0.0.1", **extra}
    )
    if settings.master_key is not None:  # the key the suite's database was set up with
        env["AMNEX_MASTER_KEY"] = settings.master_key.get_secret_value()
    return env


@pytest.mark.slow
async def test_serve_speaks_https_with_hsts(
    settings: Settings, db: Database, account: AccountHandle, tmp_path: Path
) -> None:
    certfile, keyfile = write_self_signed_certificate(tmp_path)
    with free_socket() as sock:
        port = sock.getsockname()[1]
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child process, never awaited
        [sys.executable, "-m", "amnex", "serve", "--port", str(port),
         "--certfile", str(certfile), "--keyfile", str(keyfile)],
        env=serve_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}",
            verify=ssl.create_default_context(cafile=str(certfile)),
            timeout=10,
        ) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, bool, timeout_s=30, interval_s=0.2)
            response = await client.post(
                "/v1/messages",
                headers=account.headers,
                json={"channel": "email", "to": "a@example.com", "subject": "s", "body": "b"},
            )
        assert response.status_code == 201, response.text
        assert response.headers["strict-transport-security"].startswith("max-age=31536000")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


def test_serve_and_worker_refuse_a_database_that_was_not_upgraded(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    for command in ("serve", "worker"):
        result = subprocess.run(
            [sys.executable, "-m", "amnex", command],
            env=serve_env(Settings(database_url=url, master_key=None)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert "run `amnex db upgrade` first" in result.stderr
