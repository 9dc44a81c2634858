"""`amnex privacy report`: the attestation from the command line, for people and as JSON;
`amnex crypto rotate-master`: a new master key for a database in use."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amnex.cli import app
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.privacy.content import ContentKeyring
from amnex.privacy.crypto import SecretBox, generate_key, parse_key

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "privacy-records.example.toml"


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    for name in (
        "AMNEX_CONFIG_FILE",
        "AMNEX_MASTER_KEY",
        "AMNEX_MASTER_KEY_FILE",
        "AMNEX_PREVIOUS_MASTER_KEYS",
        "AMNEX_PRIVACY_RECORDS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AMNEX_DATABASE_URL", url)
    return url


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_report_states_the_findings_for_people_and_as_json(
    cli_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("db", "upgrade")
    run("purge")

    text = run("privacy", "report")
    report = json.loads(run("privacy", "report", "--json"))
    monkeypatch.setenv("AMNEX_PRIVACY_RECORDS_FILE", str(EXAMPLE))
    configured = json.loads(run("privacy", "report", "--json"))

    assert "master key configured: NO" in text
    assert "content past retention: 0 (must be 0)" in text
    assert "  - no master key: content is stored unencrypted" in text
    assert "  - privacy contact not configured" in text
    assert "subject requests: 0 open, 0 overdue" in text
    assert report["content_past_retention"] == 0
    assert report["purges"]["last_24h"]["runs"] == 1
    assert report["records"]["configured"] is False
    assert "no master key: content is stored unencrypted" in report["findings"]
    assert configured["records"] == {"configured": True, "missing": []}
    assert configured["findings"] == ["no master key: content is stored unencrypted"]


def test_a_bad_records_file_stops_the_report_naming_the_field(
    cli_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "records.toml"
    bad.write_text(EXAMPLE.read_text(encoding="utf-8").replace("privacy@", "privacy-at-"))
    monkeypatch.setenv("AMNEX_PRIVACY_RECORDS_FILE", str(bad))
    run("db", "upgrade")

    result = CliRunner().invoke(app, ["privacy", "report"])

    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert f"privacy_records_file {bad}: privacy_contact:" in str(result.exception)


def start_content_keys(url: str, key: str) -> None:
    """What a worker does at start: create this period's and the next one's content keys."""

    async def start() -> None:
        db = Database(Settings(database_url=url))
        try:
            ring = await ContentKeyring.start(db, SecretBox(parse_key(key)), period_s=86_400)
            await ring.close()
        finally:
            await db.dispose()

    asyncio.run(start())


def test_rotate_master_rewraps_under_the_new_key_once_and_reports_what_it_cannot_open(
    cli_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: a database whose content keys and carrier password are under the old key
    old, new = generate_key(), generate_key()
    monkeypatch.setenv("AMNEX_MASTER_KEY", old)
    run("db", "upgrade")
    start_content_keys(cli_db, old)
    run(
        "connectors", "add", "--name", "Carrier A", "--host", "smsc.example", "--port", "2775",
        "--system-id", "amnex", "--password", "pw1234",
    )  # fmt: skip
    # ... and the settings of step 2: the new key, the old one as previous
    monkeypatch.setenv("AMNEX_MASTER_KEY", new)
    monkeypatch.setenv("AMNEX_PREVIOUS_MASTER_KEYS", old)

    # When: a dry run, the rotation, and the rotation again
    due = run("crypto", "rotate-master", "--dry-run")
    done = run("crypto", "rotate-master")
    again = json.loads(run("crypto", "rotate-master", "--json"))

    # Then
    assert due.splitlines()[0].split() == ["table", "due", "current", "changed", "unreadable"]
    assert "content_keys           2         0         0           0" in due
    assert "connectors             1         0         0           0" in due
    assert done.splitlines()[0].split()[1] == "rewrapped"
    assert "content_keys           2         0         0           0" in done
    assert "connectors             1         0         0           0" in done
    assert again["ok"] is True
    assert again["tables"]["content_keys"] == {
        "rewrapped": 0,
        "current": 2,
        "changed": 0,
        "unreadable": 0,
    }
    assert again["tables"]["connectors"]["current"] == 1
    # ... the new key alone now opens everything (step 4)
    monkeypatch.delenv("AMNEX_PREVIOUS_MASTER_KEYS")
    assert json.loads(run("crypto", "rotate-master", "--json"))["ok"] is True
    # ... and a process left with the old key opens nothing: the command says so and fails
    monkeypatch.setenv("AMNEX_MASTER_KEY", old)
    refused = CliRunner().invoke(app, ["crypto", "rotate-master"])
    assert refused.exit_code != 0
    assert isinstance(refused.exception, SystemExit)
    assert "open with no configured master key" in str(refused.exception)
    assert "content_keys: ck_" in str(refused.exception)
    assert "content_keys           0         0         0           2" in refused.output


def test_rotate_master_needs_a_current_master_key(cli_db: str) -> None:
    run("db", "upgrade")

    result = CliRunner().invoke(app, ["crypto", "rotate-master"])

    assert result.exit_code != 0
    assert "no master key" in str(result.exception)
