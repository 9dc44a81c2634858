"""Privacy: secrets sealed under the master key open only with that key and in their context."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from amnex.config import Settings
from amnex.errors import MasterKeyMissing
from amnex.privacy.crypto import (
    CryptoError,
    SecretBox,
    ensure_key_file,
    generate_key,
    load_master_key,
    load_previous_master_keys,
    parse_key,
)

CONTEXT = "connector:con_one"


def key_settings(
    master_key: SecretStr | None = None, master_key_file: Path | None = None
) -> Settings:
    """Settings naming only the key (explicit values win over the environment)."""
    return Settings(master_key=master_key, master_key_file=master_key_file)


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(parse_key(generate_key()))


def test_a_sealed_secret_opens_to_itself(box: SecretBox) -> None:
    sealed = box.seal("s3cret!", context=CONTEXT)

    assert sealed.startswith("v1.")
    assert "s3cret!" not in sealed
    assert box.open(sealed, context=CONTEXT) == "s3cret!"


def test_non_ascii_and_empty_secrets_round_trip(box: SecretBox) -> None:
    for secret in ("", "pässwörd", "密码"):
        assert box.open(box.seal(secret, context=CONTEXT), context=CONTEXT) == secret


def test_two_seals_of_one_value_differ(box: SecretBox) -> None:
    first = box.seal("same", context=CONTEXT)
    second = box.seal("same", context=CONTEXT)

    assert first != second
    assert box.open(first, context=CONTEXT) == box.open(second, context=CONTEXT) == "same"


def test_a_secret_does_not_open_in_another_context(box: SecretBox) -> None:
    sealed = box.seal("s3cret!", context=CONTEXT)

    with pytest.raises(CryptoError):
        box.open(sealed, context="connector:con_two")


def test_a_secret_does_not_open_with_another_key(box: SecretBox) -> None:
    sealed = box.seal("s3cret!", context=CONTEXT)
    other = SecretBox(parse_key(generate_key()))

    with pytest.raises(CryptoError):
        other.open(sealed, context=CONTEXT)


@pytest.mark.parametrize("position", [0, 12, -1], ids=["nonce", "ciphertext", "tag"])
def test_a_tampered_secret_does_not_open(box: SecretBox, position: int) -> None:
    sealed = box.seal("s3cret!", context=CONTEXT)
    raw = bytearray(base64.urlsafe_b64decode(sealed.removeprefix("v1.")))
    raw[position] ^= 0x01
    tampered = "v1." + base64.urlsafe_b64encode(bytes(raw)).decode()

    with pytest.raises(CryptoError):
        box.open(tampered, context=CONTEXT)


@pytest.mark.parametrize(
    "sealed", ["s3cret!", "v2.AAAA", "v1.not base64!", "v1.", "v1.AAAA"], ids=repr
)
def test_a_value_that_is_not_a_sealed_secret_does_not_open(box: SecretBox, sealed: str) -> None:
    with pytest.raises(CryptoError):
        box.open(sealed, context=CONTEXT)


def test_without_a_key_nothing_is_sealed_or_opened(box: SecretBox) -> None:
    sealed = box.seal("s3cret!", context=CONTEXT)
    keyless = SecretBox(None)

    assert not keyless.available
    assert box.available
    with pytest.raises(MasterKeyMissing, match="amnex crypto generate-key"):
        keyless.seal("s3cret!", context=CONTEXT)
    with pytest.raises(MasterKeyMissing):
        keyless.open(sealed, context=CONTEXT)


def test_no_key_in_settings_gives_a_box_without_a_key() -> None:
    settings = key_settings()

    assert load_master_key(settings) is None
    assert not SecretBox.from_settings(settings).available


def test_the_key_is_read_from_settings() -> None:
    key = generate_key()
    settings = key_settings(master_key=SecretStr(key))

    assert load_master_key(settings) == base64.b64decode(key)


def test_the_key_is_read_from_a_key_file(tmp_path: Path, box: SecretBox) -> None:
    key = generate_key()
    path = tmp_path / "master.key"
    path.write_text(f"{key}\n")  # as editors and `echo` leave it
    from_file = SecretBox.from_settings(key_settings(master_key_file=path))
    from_text = SecretBox.from_settings(key_settings(master_key=SecretStr(key)))

    assert from_file.open(from_text.seal("s3cret!", context=CONTEXT), context=CONTEXT) == "s3cret!"


def test_a_missing_key_file_is_an_error_not_a_missing_key(tmp_path: Path) -> None:
    settings = key_settings(master_key_file=tmp_path / "nowhere.key")

    with pytest.raises(CryptoError, match="cannot read the master key file"):
        load_master_key(settings)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not a key!", id="not-base64"),
        pytest.param(base64.b64encode(b"short").decode(), id="too-short"),
        pytest.param(base64.b64encode(bytes(33)).decode(), id="too-long"),
        pytest.param(base64.urlsafe_b64encode(bytes([0xFB] * 32)).decode(), id="urlsafe-alphabet"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_key_text_is_rejected(text: str, tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(text)

    with pytest.raises(CryptoError):
        parse_key(text)
    with pytest.raises(CryptoError):
        SecretBox.from_settings(key_settings(master_key=SecretStr(text)))
    with pytest.raises(CryptoError):
        SecretBox.from_settings(key_settings(master_key_file=path))


def test_generated_keys_are_32_random_bytes() -> None:
    first, second = generate_key(), generate_key()

    assert len(parse_key(first)) == 32
    assert first != second


def test_ensure_key_file_creates_an_owner_only_key_once(tmp_path: Path) -> None:
    path = tmp_path / "master.key"

    ensure_key_file(path)
    key = path.read_text()
    ensure_key_file(path)

    assert path.read_text() == key
    assert len(parse_key(key)) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- previous master keys (rotation) ---------------------------------------------------------


def test_a_box_opens_values_under_a_previous_key_and_seals_under_the_current_one() -> None:
    old, new = parse_key(generate_key()), parse_key(generate_key())
    under_old = SecretBox(old).seal("s3cret!", context=CONTEXT)
    rotated = SecretBox(new, previous=[old])

    resealed = rotated.seal("s3cret!", context=CONTEXT)

    assert rotated.open(under_old, context=CONTEXT) == "s3cret!"
    assert SecretBox(new).open(resealed, context=CONTEXT) == "s3cret!"
    with pytest.raises(CryptoError):
        SecretBox(old).open(resealed, context=CONTEXT)
    with pytest.raises(CryptoError):
        rotated.open(under_old, context="connector:con_two")


def test_reseal_moves_a_value_to_the_current_key_once_and_refuses_an_unknown_key() -> None:
    old, new, stranger = (parse_key(generate_key()) for _ in range(3))
    under_old = SecretBox(old).seal("s3cret!", context=CONTEXT)
    rotated = SecretBox(new, previous=[old])

    resealed = rotated.reseal(under_old, context=CONTEXT)

    assert not rotated.opens_with_current(under_old, context=CONTEXT)
    assert resealed is not None
    assert rotated.opens_with_current(resealed, context=CONTEXT)
    assert SecretBox(new).open(resealed, context=CONTEXT) == "s3cret!"
    assert rotated.reseal(resealed, context=CONTEXT) is None
    assert not rotated.opens_with_current("not sealed", context=CONTEXT)
    with pytest.raises(CryptoError):
        rotated.reseal(SecretBox(stranger).seal("x", context=CONTEXT), context=CONTEXT)


def test_previous_keys_are_read_from_settings_in_order() -> None:
    first, second, current = generate_key(), generate_key(), generate_key()
    settings = Settings(
        master_key=SecretStr(current), previous_master_keys=SecretStr(f" {first} ,{second},")
    )
    under_second = SecretBox(parse_key(second)).seal("s3cret!", context=CONTEXT)

    box = SecretBox.from_settings(settings)

    assert load_previous_master_keys(settings) == [parse_key(first), parse_key(second)]
    assert box.previous_count == 2
    assert box.open(under_second, context=CONTEXT) == "s3cret!"
    assert load_previous_master_keys(key_settings()) == []


def test_a_bad_previous_key_is_named_by_its_position() -> None:
    settings = Settings(
        master_key=SecretStr(generate_key()),
        previous_master_keys=SecretStr(f"{generate_key()},not a key!"),
    )

    with pytest.raises(CryptoError, match="previous master key 2 is not valid base64"):
        SecretBox.from_settings(settings)


def test_previous_keys_without_a_current_one_are_refused() -> None:
    settings = Settings(
        master_key=None, master_key_file=None, previous_master_keys=SecretStr(generate_key())
    )

    with pytest.raises(CryptoError, match="no current one"):
        SecretBox.from_settings(settings)
