"""`amnex privacy report`: the attestation from the command line, for people and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amnex.cli import app

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "privacy-records.example.toml"


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    for name in ("AMNEX_CONFIG_FILE", "AMNEX_MASTER_KEY", "AMNEX_PRIVACY_RECORDS_FILE"):
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
