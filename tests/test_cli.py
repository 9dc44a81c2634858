"""The `amnex` command: schema, accounts, keys, senders and operators, as an operator uses them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from amnex.cli import app
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.privacy.audit import AuditEntry


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    for name in ("AMNEX_CONFIG_FILE",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AMNEX_DATABASE_URL", url)
    monkeypatch.setenv("USER", "cli-tester")
    return url


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def field(output: str, name: str) -> str:
    match = re.search(rf"^{name}: (\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def audit_actions(url: str) -> list[tuple[str, str]]:
    async def read() -> list[tuple[str, str]]:
        db = Database(Settings(database_url=url))
        try:
            async with db.read_session() as session:
                rows = await session.scalars(select(AuditEntry).order_by(AuditEntry.id))
                return [(r.actor, r.action) for r in rows]
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_an_operator_sets_up_an_account_from_the_command_line(cli_db: str) -> None:
    assert "upgraded" in run("db", "upgrade")

    token = field(run("operators", "create", "--name", "Dana Ops"), "admin_token")
    assert token.startswith("amxop_")

    created = run(
        "accounts", "create", "--business-name", "Shop", "--contact-name", "Pat",
        "--email", "pat@shop.example",
    )  # fmt: skip
    account_id = field(created, "account_id")
    assert field(created, "api_key").startswith("amx_")

    key_out = run("keys", "create", "--account", account_id, "--name", "ci", "--scopes", "read")
    key_id = field(key_out, "key_id")
    listing = run("keys", "list", "--account", account_id)
    assert key_id in listing
    assert "scopes=read" in listing
    assert field(key_out, "api_key") not in listing  # keys are never shown again

    run("keys", "revoke", "--account", account_id, "--key", key_id)
    assert "REVOKED" in run("keys", "list", "--account", account_id)

    domain = run(
        "senders", "add", "--account", account_id, "--channel", "email",
        "--address", "@Shop.Example",
    )  # fmt: skip
    assert "@shop.example" in domain
    default = run(
        "senders", "add", "--account", account_id, "--channel", "email",
        "--address", "noreply@shop.example", "--default",
    )  # fmt: skip
    assert "noreply@shop.example" in default

    sender_id = default.split()[0]
    assert "noreply@shop.example  (default)" in run("senders", "list", "--account", account_id)
    run("senders", "remove", "--account", account_id, "--sender", sender_id)
    assert "noreply@shop.example" not in run("senders", "list", "--account", account_id)

    assert "'Dana Ops'" in run("operators", "list")
    run("operators", "revoke", "--name", "Dana Ops")
    assert "REVOKED" in run("operators", "list")
    assert token not in run("operators", "list")

    actions = audit_actions(cli_db)
    assert ("cli:cli-tester", "operator.revoke") in actions
    assert ("cli:cli-tester", "sender.delete") in actions
    assert ("cli:cli-tester", "api_key.revoke") in actions
    assert ("cli:cli-tester", "account.create") in actions


def test_errors_are_reported_with_their_code(cli_db: str) -> None:
    run("db", "upgrade")
    result = subprocess.run(
        [sys.executable, "-m", "amnex", "keys", "list", "--account", "acc_nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "error (not_found): no account acc_nope" in result.stderr


def test_a_domain_cannot_be_the_default_sender(cli_db: str) -> None:
    run("db", "upgrade")
    account_id = field(
        run("accounts", "create", "--business-name", "B", "--contact-name", "C", "--email",
            "c@b.example"),
        "account_id",
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "amnex", "senders", "add", "--account", account_id,
         "--channel", "email", "--address", "@b.example", "--default"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "validation_failed" in result.stderr
