"""Email: unsubscribe tokens (sealed, unforgeable, stable per message) and link filling."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from amnex.config import Settings
from amnex.email.unsubscribe import (
    TOKEN_MAX_LENGTH,
    UnsubscribeClaim,
    UnsubscribeTokens,
    check_public_url,
    fill_html,
    fill_text,
)
from amnex.privacy.crypto import generate_key

MESSAGE_ID = "msg_01JBCDEFGHJKMNPQRSTVWXYZ012"


@pytest.fixture
def tokens() -> UnsubscribeTokens:
    return UnsubscribeTokens(b"k" * 32, key_source="unsubscribe_secret")


def issue(tokens: UnsubscribeTokens, address: str = "alex@example.com") -> str:
    return tokens.issue(account_id="acc_1", address=address, message_id=MESSAGE_ID)


def test_a_token_opens_to_its_account_channel_address_and_message(
    tokens: UnsubscribeTokens,
) -> None:
    token = issue(tokens)

    assert tokens.open(token) == UnsubscribeClaim("acc_1", "email", "alex@example.com", MESSAGE_ID)


def test_a_token_is_url_safe_and_does_not_show_the_address(tokens: UnsubscribeTokens) -> None:
    token = issue(tokens, "alex.secret@example.com")

    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in token)
    assert "alex" not in token.lower()
    for start in range(3):
        # The address is not in the token in base64 either, at any alignment.
        encoded = base64.urlsafe_b64encode(b"x" * start + b"alex.secret@example.com")
        assert encoded[4:20].decode() not in token
    assert len(token) < 200


def test_every_attempt_at_a_message_gets_the_same_token(tokens: UnsubscribeTokens) -> None:
    assert issue(tokens) == issue(tokens)
    assert issue(tokens) != issue(tokens, "other@example.com")


def test_a_changed_character_anywhere_in_the_token_is_refused(tokens: UnsubscribeTokens) -> None:
    token = issue(tokens)

    for index, char in enumerate(token):
        replacement = "A" if char != "A" else "B"
        altered = token[:index] + replacement + token[index + 1 :]
        assert tokens.open(altered) is None, f"altered at {index}"


def test_a_token_moved_to_another_message_id_is_refused(tokens: UnsubscribeTokens) -> None:
    token = issue(tokens)
    version, _message_id, sealed = token.split(".")
    other_id = "msg_01JBCDEFGHJKMNPQRSTVWXYZ999"

    assert tokens.open(f"{version}.{other_id}.{sealed}") is None


def test_a_token_from_another_key_is_refused(tokens: UnsubscribeTokens) -> None:
    other = UnsubscribeTokens(b"z" * 32, key_source="unsubscribe_secret")

    assert other.open(issue(tokens)) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "1",
        "1..",
        "1.msg_1.",
        "2.msg_1.AAAA",
        "1.msg_1.!!!!",
        "1.msg_1.AAAA",
        "1.msg/1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "1.msg_1." + "A" * TOKEN_MAX_LENGTH,
        "1.msg_1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_tokens_are_refused(tokens: UnsubscribeTokens, token: str) -> None:
    assert tokens.open(token) is None


def test_processes_with_the_same_settings_agree_on_tokens() -> None:
    settings = Settings(master_key=SecretStr(generate_key()))
    worker = UnsubscribeTokens.from_settings(settings)
    api = UnsubscribeTokens.from_settings(settings)

    assert api.open(issue(worker)) is not None
    assert worker.key_source == "master_key"


def test_the_key_source_is_the_secret_then_the_master_key_then_the_database_url() -> None:
    master = SecretStr(generate_key())
    with_secret = Settings(unsubscribe_secret=SecretStr("s" * 40), master_key=master)
    with_master = Settings(master_key=master)
    bare = Settings(database_url="sqlite+aiosqlite:///one.db")

    assert UnsubscribeTokens.from_settings(with_secret).key_source == "unsubscribe_secret"
    assert UnsubscribeTokens.from_settings(with_master).key_source == "master_key"
    assert UnsubscribeTokens.from_settings(bare).key_source == "database_url"
    token = issue(UnsubscribeTokens.from_settings(with_master))
    assert UnsubscribeTokens.from_settings(with_secret).open(token) is None
    other_db = Settings(database_url="sqlite+aiosqlite:///two.db")
    assert (
        UnsubscribeTokens.from_settings(other_db).open(issue(UnsubscribeTokens.from_settings(bare)))
        is None
    )


def test_issue_refuses_a_message_id_that_is_not_one() -> None:
    tokens = UnsubscribeTokens(b"k" * 32, key_source="unsubscribe_secret")
    with pytest.raises(ValueError, match="message id"):
        tokens.issue(account_id="acc_1", address="a@example.com", message_id="msg.1")


# The public URL


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://amnex.example.com", "https://amnex.example.com"),
        ("https://amnex.example.com/", "https://amnex.example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://example.com/amnex/", "https://example.com/amnex"),
    ],
)
def test_public_url_is_kept_without_its_trailing_slash(value: str, expected: str) -> None:
    assert check_public_url(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "amnex.example.com",
        "ftp://amnex.example.com",
        "https://",
        "https://amnex.example.com/?a=1",
        "https://amnex.example.com/#top",
        "https://amnex.example.com/a b",
        "https://ämnex.example.com",
        "https://amnex.example.com/" + "a" * 200,
    ],
)
def test_public_url_that_cannot_prefix_a_link_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="public_url"):
        check_public_url(value)


# Filling bodies

URL = "https://amnex.example.com/v1/unsubscribe/1.msg_1.abc"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Bye: {{unsubscribe_url}}", f"Bye: {URL}"),
        ("Bye: {{ unsubscribe_url }} or {{UNSUBSCRIBE_URL}}", f"Bye: {URL} or {URL}"),
        ("Sale!\n", f"Sale!\n\nTo unsubscribe from these emails, open this link: {URL}\n"),
        ("", f"To unsubscribe from these emails, open this link: {URL}\n"),
    ],
)
def test_text_gets_the_link_in_its_placeholders_or_a_footer(body: str, expected: str) -> None:
    assert fill_text(body, URL) == expected


def test_html_placeholders_get_the_escaped_link() -> None:
    url = "https://x.example/u?a=1&b=<2>"

    filled = fill_html('<a href="{{unsubscribe_url}}">Unsubscribe</a>', url)

    assert filled == '<a href="https://x.example/u?a=1&amp;b=&lt;2&gt;">Unsubscribe</a>'


def test_html_without_a_placeholder_gets_a_footer_before_its_body_ends() -> None:
    filled = fill_html("<html><body><p>Sale!</p></BODY></html>", URL)

    assert filled.startswith("<html><body><p>Sale!</p><p ")
    assert filled.endswith(
        f'<a href="{URL}">unsubscribe from these emails</a> at any time.</p></BODY></html>'
    )


def test_html_without_a_body_element_gets_the_footer_at_its_end() -> None:
    filled = fill_html("<p>Sale!</p>", URL)

    assert filled.startswith("<p>Sale!</p><p ")
    assert filled.endswith("at any time.</p>")
