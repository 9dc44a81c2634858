"""Settings: environment variables, a TOML file, precedence, and driver selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from amnex.config import Settings, load_settings


def test_environment_variables_use_the_amnex_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMNEX_SMTP_HOST", "relay.example")
    monkeypatch.setenv("AMNEX_SMTP_PORT", "2525")
    monkeypatch.setenv("AMNEX_TRUSTED_PROXIES", '["10.0.0.0/8"]')
    settings = Settings()
    assert (settings.smtp_host, settings.smtp_port) == ("relay.example", 2525)
    assert settings.trusted_proxies == ["10.0.0.0/8"]


def test_a_toml_file_is_read_and_the_environment_wins_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "amnex.toml"
    config.write_text('smtp_host = "from-file.example"\nsmtp_port = 587\nsmtp_tls = "starttls"\n')
    monkeypatch.delenv("AMNEX_CONFIG_FILE", raising=False)
    monkeypatch.setenv("AMNEX_SMTP_PORT", "465")
    settings = load_settings(config)
    assert settings.smtp_host == "from-file.example"
    assert settings.smtp_tls == "starttls"
    assert settings.smtp_port == 465


def test_a_typo_in_the_toml_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "amnex.toml"
    config.write_text('smtp_hots = "typo.example"\n')
    monkeypatch.setenv("AMNEX_CONFIG_FILE", str(config))
    with pytest.raises(ValidationError, match="smtp_hots"):
        Settings()


def test_a_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/amnex.db", "sqlite+aiosqlite:///data/amnex.db"),
        ("postgresql://u@db/amnex", "postgresql+asyncpg://u@db/amnex"),
        ("postgres://u@db/amnex", "postgresql+asyncpg://u@db/amnex"),
        ("postgresql+asyncpg://u@db/amnex", "postgresql+asyncpg://u@db/amnex"),
    ],
)
def test_plain_database_urls_get_the_async_driver(given: str, expected: str) -> None:
    assert Settings(database_url=given).database_url == expected


def test_the_poll_interval_cannot_exceed_100_ms() -> None:
    with pytest.raises(ValidationError):
        Settings(poll_interval_s=0.5)
