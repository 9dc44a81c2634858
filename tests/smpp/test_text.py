"""SMS text: GSM 03.38, UCS-2, Latin-1, the cheapest encoding, and parts that keep chars whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amnex.channels.smpp.text import (
    GSM_BASIC,
    GSM_EXTENSION,
    PART_LIMIT,
    EncodingError,
    choose_encoding,
    concatenation_udh,
    count_units,
    decode,
    encode,
    encoding_for_data_coding,
    prepare_text,
    smart_replace,
    split_text,
    ucs2_forcing_characters,
)

GSM_CHARS = [ch for i, ch in enumerate(GSM_BASIC) if i != 0x1B] + list(GSM_EXTENSION)


@pytest.mark.parametrize(
    ("text", "encoding", "units"),
    [
        ("Hello", "GSM-7", 5),
        ("Price: 5€", "GSM-7", 10),  # € is ESC + 0x65: two septets
        ("[x]{y}", "GSM-7", 10),  # four extension characters, two septets each
        ("Grüße", "GSM-7", 5),  # ü and ß are in the basic table
        ("Привет", "UCS-2", 6),
        ("ok 👍", "UCS-2", 5),  # a surrogate pair counts two
        ("café", "Latin-1", 4),
    ],
)
def test_units_are_what_the_network_counts(text: str, encoding: str, units: int) -> None:
    assert count_units(text, encoding) == units  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "latin1", "expected"),
    [
        ("Your code is 1234", False, "GSM-7"),
        ("Ça coûte 5 €", False, "UCS-2"),  # û is not GSM
        ("Ça coûte 5 €", True, "UCS-2"),  # € is not Latin-1 either
        ("Ça coûte 5 francs", True, "Latin-1"),
        ("It’s here", False, "UCS-2"),  # the curly apostrophe
    ],
)
def test_the_cheapest_encoding_is_chosen(text: str, latin1: bool, expected: str) -> None:
    assert choose_encoding(text, allow_latin1=latin1) == expected


def test_gsm7_bytes_are_unpacked_septets_with_escapes() -> None:
    assert encode("@A€", "GSM-7") == bytes([0x00, 0x41, 0x1B, 0x65])
    assert decode(bytes([0x00, 0x41, 0x1B, 0x65]), "GSM-7") == "@A€"
    with pytest.raises(EncodingError):
        encode("п", "GSM-7")


def test_ucs2_is_utf16_big_endian() -> None:
    assert encode("Я👍", "UCS-2") == "Я👍".encode("utf-16-be")
    assert decode("Я👍".encode("utf-16-be"), "UCS-2") == "Я👍"


@given(st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=400))
def test_gsm7_round_trips(text: str) -> None:
    assert decode(encode(text, "GSM-7"), "GSM-7") == text


@pytest.mark.parametrize(
    ("text", "encoding", "parts"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # 160 septets
        ("€" * 81, "GSM-7", 2),
        ("я" * 70, "UCS-2", 1),
        ("я" * 71, "UCS-2", 2),
        ("я" * 134, "UCS-2", 2),
        ("я" * 135, "UCS-2", 3),
    ],
)
def test_segment_counts(text: str, encoding: str, parts: int) -> None:
    assert len(split_text(text, encoding)) == parts  # type: ignore[arg-type]


def test_an_escape_sequence_is_never_split() -> None:
    # 152 plain septets, then € (2 septets) would straddle the 153-septet boundary.
    parts = split_text("a" * 152 + "€" + "b" * 20, "GSM-7")
    assert parts[0] == "a" * 152
    assert parts[1].startswith("€")


def test_a_surrogate_pair_is_never_split() -> None:
    parts = split_text("я" * 66 + "👍" + "я" * 10, "UCS-2")
    assert parts[0] == "я" * 66
    assert parts[1].startswith("👍")


@given(st.text(max_size=700), st.sampled_from(["GSM-7", "UCS-2"]))
def test_parts_join_back_to_the_text_and_fit_their_limit(text: str, encoding: str) -> None:
    if encoding == "GSM-7":
        text = "".join(ch for ch in text if ch in GSM_CHARS)
    parts = split_text(text, encoding)  # type: ignore[arg-type]
    assert "".join(parts) == text
    if len(parts) > 1:
        assert all(count_units(p, encoding) <= PART_LIMIT[encoding] for p in parts)  # type: ignore[arg-type,index]


def test_smart_encoding_keeps_typographic_text_in_gsm7() -> None:
    text = "It’s “great” – see you… at 5\u00a0pm"
    cleaned, replaced = smart_replace(text)
    assert cleaned == 'It\'s "great" - see you... at 5 pm'
    assert replaced == ["’", "“", "”", "–", "…", "\u00a0"]
    prepared = prepare_text(text, smart_encoding=True)
    assert (prepared.encoding, prepared.segments) == ("GSM-7", 1)
    assert prepared.replaced == ("’", "“", "”", "–", "…", "\u00a0")


def test_the_characters_that_forced_ucs2_are_reported() -> None:
    prepared = prepare_text("Hi José, it’s ready ✅")
    assert prepared.encoding == "UCS-2"
    assert prepared.forced_ucs2_by == ("’", "✅")
    assert ucs2_forcing_characters("plain") == []


def test_prepared_parts_carry_the_data_coding() -> None:
    long = prepare_text("x" * 200)
    assert (long.encoding, long.data_coding, long.segments) == ("GSM-7", 0, 2)
    assert long.parts[0] == b"x" * 153
    assert prepare_text("Привет").data_coding == 8


def test_concatenation_header() -> None:
    assert concatenation_udh(0x2A, 3, 1) == bytes.fromhex("0500032a0301")
    with pytest.raises(ValueError, match="sequence"):
        concatenation_udh(1, 2, 3)


@pytest.mark.parametrize(
    ("data_coding", "encoding"),
    [(0x00, "GSM-7"), (0x01, "Latin-1"), (0x03, "Latin-1"), (0x08, "UCS-2"), (0x04, None)],
)
def test_data_coding_values(data_coding: int, encoding: str | None) -> None:
    assert encoding_for_data_coding(data_coding) == encoding
