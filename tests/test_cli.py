"""The `amnex` command: schema, accounts, keys, senders, operators, carriers and simulators, as an
operator uses them."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from amnex.channels.smpp.pdu import SubmitSm
from amnex.channels.smpp.session import BindError, SmppSession
from amnex.cli import app
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.errors import Conflict
from amnex.privacy.audit import AuditEntry
from amnex.privacy.crypto import parse_key


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    for name in ("AMNEX_CONFIG_FILE",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AMNEX_DATABASE_URL", url)
    monkeypatch.setenv("USER", "cli-tester")
    return url


def run(*args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def field(output: str, name: str) -> str:
    match = re.search(rf"^{name}: (\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def audit_actions(url: str) -> list[tuple[str, str]]:
    return [(actor, action) for actor, action, _ in audit_rows(url)]


def audit_rows(url: str) -> list[tuple[str, str, str]]:
    """(actor, action, detail as JSON) of every audit row, oldest first."""

    async def read() -> list[tuple[str, str, str]]:
        db = Database(Settings(database_url=url))
        try:
            async with db.read_session() as session:
                rows = await session.scalars(select(AuditEntry).order_by(AuditEntry.id))
                return [(r.actor, r.action, json.dumps(r.detail)) for r in rows]
        finally:
            await db.dispose()

    return asyncio.run(read())


def stored_secrets(url: str) -> list[str | None]:
    async def read() -> list[str | None]:
        db = Database(Settings(database_url=url))
        try:
            async with db.engine.connect() as conn:
                rows = await conn.execute(text("SELECT secret FROM connectors ORDER BY name"))
                return list(rows.scalars())
        finally:
            await db.dispose()

    return asyncio.run(read())


def amnex(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a separate process, so errors go through `main()` (code, exit status)."""
    return subprocess.run(
        [sys.executable, "-m", "amnex", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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


CARRIER_A = (
    "--name",
    "Carrier A",
    "--host",
    "smsc-a.example",
    "--port",
    "2775",
    "--system-id",
    "amnex",
)


def test_an_operator_connects_carriers_and_routes_sms_from_the_command_line(
    cli_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = run("crypto", "generate-key").strip()
    assert len(parse_key(key)) == 32
    monkeypatch.setenv("AMNEX_MASTER_KEY", key)
    run("db", "upgrade")

    added = run(
        "connectors", "add", *CARRIER_A, "--password-stdin", "--binds", "2", "--window", "20",
        "--throughput-per-s", "30", "--split", "sar", "--tls", "--bind-type", "transmitter",
        "--set", "response_timeout_s=5", "--set", "allow_latin1=true", "--set", "source_ton=null",
        stdin="pw1234\n",
    )  # fmt: skip
    primary = field(added, "connector_id")
    assert primary.startswith("con_")
    backup = field(
        run("connectors", "add", "--name", "Carrier B", "--host", "smsc-b.example", "--port",
            "2776", "--system-id", "amnex-b", "--disabled"),
        "connector_id",
    )  # fmt: skip

    listing = run("connectors", "list")
    assert f"{primary}  'Carrier A'  smsc-a.example:2775  system_id=amnex" in listing
    assert "transmitter x2  window=20  per_s=30.0  tls=on  password=set  enabled" in listing
    assert f"{backup}  'Carrier B'" in listing
    assert "password=none  DISABLED" in listing
    by_name = {c["name"]: c for c in json.loads(run("connectors", "list", "--json"))}
    config = by_name["Carrier A"]["config"]
    assert (config["response_timeout_s"], config["allow_latin1"], config["source_ton"]) == (
        5.0,
        True,
        None,
    )
    assert (config["split"], config["tls"]) == ("sar", True)
    assert by_name["Carrier A"]["password_set"] is True

    updated = run("connectors", "update", primary, "--window", "10", "--no-tls", "--disable")
    assert "window=10  per_s=30.0  tls=off  password=set  DISABLED" in updated
    assert "enabled" in run("connectors", "update", primary, "--enable")
    run("connectors", "update", backup, "--enable", "--password", "pw5678")

    route = field(
        run("routes", "add", "--connector", primary, "--connector", backup, "--country", "us",
            "--prefix", "1312", "--priority", "3"),
        "route_id",
    )  # fmt: skip
    assert route.startswith("rte_")
    routes = run("routes", "list")
    assert (
        f"{route}  sms  account=*  country=US  prefix=1312  priority=3  "
        f"-> {primary} (Carrier A), {backup} (Carrier B)"
    ) in routes
    assert json.loads(run("routes", "list", "--json"))[0]["connector_ids"] == [primary, backup]

    # A connector a route sends to cannot be removed.
    with pytest.raises(Conflict):
        run("connectors", "remove", backup)
    assert f"removed {route}" in run("routes", "remove", route)
    assert f"removed {backup}" in run("connectors", "remove", backup)
    assert "Carrier B" not in run("connectors", "list")
    assert run("routes", "list") == ""

    [secret] = stored_secrets(cli_db)
    assert secret is not None
    assert secret.startswith("v1.")
    everything = " ".join(
        [*(s or "" for s in stored_secrets(cli_db)), *(d for _, _, d in audit_rows(cli_db))]
    )
    assert "pw1234" not in everything
    assert "pw5678" not in everything
    assert [action for actor, action in audit_actions(cli_db) if actor == "cli:cli-tester"] == [
        "connector.create",
        "connector.create",
        "connector.update",
        "connector.update",
        "connector.update",
        "route.create",
        "route.delete",
        "connector.delete",
    ]


def test_a_connector_password_needs_a_master_key(
    cli_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMNEX_MASTER_KEY", raising=False)
    monkeypatch.delenv("AMNEX_MASTER_KEY_FILE", raising=False)
    run("db", "upgrade")

    refused = amnex("connectors", "add", *CARRIER_A, "--password", "pw1234")
    no_password = amnex("connectors", "add", *CARRIER_A)

    assert refused.returncode == 1
    assert "error (master_key_missing)" in refused.stderr
    assert "amnex crypto generate-key" in refused.stderr
    assert no_password.returncode == 0, no_password.stderr
    assert "password=none" in no_password.stdout


def test_an_unusable_master_key_is_reported(cli_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMNEX_MASTER_KEY", "not-a-key")
    run("db", "upgrade")

    result = amnex("connectors", "add", *CARRIER_A, "--password", "pw1234")

    assert result.returncode == 1
    assert "error: the master key is not valid base64" in result.stderr


@pytest.mark.parametrize(
    ("options", "field_name"),
    [
        pytest.param(("--port", "0"), "port", id="port-zero"),
        pytest.param(("--window", "0"), "window", id="window-zero"),
        pytest.param(("--split", "both"), "split", id="unknown-split"),
        pytest.param(("--set", "colour=blue"), "colour", id="unknown-setting"),
        pytest.param(("--set", "password=x"), "password", id="password-is-not-a-setting"),
    ],
)
def test_a_bad_connector_setting_is_reported_by_name(
    cli_db: str, options: tuple[str, ...], field_name: str
) -> None:
    run("db", "upgrade")

    result = amnex("connectors", "add", *CARRIER_A, *options)

    assert result.returncode == 1
    assert "error (validation_failed)" in result.stderr
    assert field_name in result.stderr
    assert run("connectors", "list") == ""


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(("--password", "a", "--password-stdin"), id="two-passwords"),
        pytest.param(("--set", "window"), id="set-without-value"),
    ],
)
def test_contradictory_or_malformed_options_are_usage_errors(
    cli_db: str, options: tuple[str, ...]
) -> None:
    result = CliRunner().invoke(app, ["connectors", "add", *CARRIER_A, *options], input="b\n")

    assert result.exit_code == 2, result.output


def test_a_route_to_an_unknown_connector_is_refused(cli_db: str) -> None:
    run("db", "upgrade")

    result = amnex("routes", "add", "--connector", "con_nope")

    assert result.returncode == 1
    assert "error (validation_failed): connector_ids: no connector con_nope" in result.stderr


async def test_the_smsc_simulator_serves_binds_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "amnex", "simulate", "smsc", "--port", "0", "--system-id",
        "tester", "--password", "pw", "--receipt-delay-ms", "10", "--response-delay-ms", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        # Given the simulator, once it has printed where it listens and as whom
        announced: dict[str, str] = {}
        async with asyncio.timeout(30):
            while "password" not in announced:
                line = (await proc.stdout.readline()).decode()
                assert line, f"the simulator exited: {(await proc.stderr.read()).decode()}"
                name, sep, value = line.strip().partition(": ")
                if sep:
                    announced[name] = value

        # When an ESME binds with those credentials and submits
        session = SmppSession(
            announced["host"],
            int(announced["port"]),
            system_id=announced["system_id"],
            password=announced["password"],
            bind="transmitter",
            response_timeout_s=5,
        )
        await session.connect()
        bound = session.is_bound
        response = await session.submit(
            SubmitSm(source_addr="Amnex", destination_addr="13125550100", short_message=b"hi")
        )
        await session.unbind()
        impostor = SmppSession(
            announced["host"],
            int(announced["port"]),
            system_id="tester",
            password="wrong",
            response_timeout_s=5,
        )
        with pytest.raises(BindError):
            await impostor.connect()

        # And it is sent SIGTERM
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            returncode = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # Then it accepted the bind and the message, and stopped cleanly
    assert announced["system_id"] == "tester"
    assert bound
    assert response.command_status == 0
    assert response.message_id
    assert returncode == 0


def test_purge_reports_what_is_due_and_records_its_run(cli_db: str) -> None:
    run("db", "upgrade")

    dry = json.loads(run("purge", "--dry-run", "--json"))
    done = run("purge")

    assert dry == {
        "dry_run": True,
        "content": 0,
        "metadata": 0,
        "exports": 0,
        "audit_personal": 0,
        "audit_entries": 0,
        "webhook_log": 0,
    }
    assert done.strip() == (
        "content purged: 0; metadata purged: 0; exports purged: 0; audit personal purged: 0; "
        "audit entries purged: 0; webhook log purged: 0; content keys destroyed: 0"
    )
