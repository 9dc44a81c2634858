"""Keywords: replies are read as opt-out, opt-in, help or nothing, and answered compliantly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amnex.channels.smpp.text import count_units, is_gsm7
from amnex.receipts.keywords import (
    DEFAULT_HELP_REPLY,
    DEFAULT_OPT_IN_CONFIRMATION,
    DEFAULT_OPT_OUT_CONFIRMATION,
    HELP_KEYWORDS,
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    ReplyClassification,
    ReplyIntent,
    classify_reply,
    help_reply,
    opt_in_confirmation,
    opt_out_confirmation,
)

CORPUS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "keyword_corpus.json").read_text(encoding="utf-8")
)["examples"]
MIN_EXAMPLES_EACH = 60


@pytest.mark.parametrize("example", CORPUS, ids=[repr(example["text"]) for example in CORPUS])
def test_every_corpus_reply_classifies_as_labelled(example: dict[str, Any]) -> None:
    result = classify_reply(example["text"])
    assert (result.intent.value, result.how) == (example["intent"], example.get("how"))


def test_the_corpus_has_enough_positive_and_negative_examples() -> None:
    positives = [example for example in CORPUS if example["intent"] != "none"]
    negatives = [example for example in CORPUS if example["intent"] == "none"]
    assert len(positives) >= MIN_EXAMPLES_EACH
    assert len(negatives) >= MIN_EXAMPLES_EACH
    assert {example["how"] for example in positives} == {"keyword", "free_text"}
    assert {example["intent"] for example in positives} == {"opt_out", "opt_in", "help"}


@pytest.mark.parametrize("keyword", sorted(OPT_OUT_KEYWORDS | OPT_IN_KEYWORDS | HELP_KEYWORDS))
def test_every_listed_keyword_is_recognised_alone_in_any_case(keyword: str) -> None:
    for written in (keyword, keyword.upper(), keyword.title() + "!"):
        result = classify_reply(written)
        assert result.how == "keyword"
        assert result.matched == keyword.upper()


def test_the_keyword_lists_do_not_overlap() -> None:
    assert not OPT_OUT_KEYWORDS & OPT_IN_KEYWORDS
    assert not (OPT_OUT_KEYWORDS | OPT_IN_KEYWORDS) & HELP_KEYWORDS


@pytest.mark.parametrize(
    ("reply", "intent", "matched"),
    [
        ("STOP", ReplyIntent.OPT_OUT, "STOP"),
        ("arr\u00eat", ReplyIntent.OPT_OUT, "ARRET"),
        ("Opt-Out", ReplyIntent.OPT_OUT, "OPT OUT"),
        ("stop stop", ReplyIntent.OPT_OUT, "STOP"),
        ("Stop texting me please", ReplyIntent.OPT_OUT, "stop_contacting"),
        ("remove me from this list", ReplyIntent.OPT_OUT, "remove_me"),
        ("wrong number, stop", ReplyIntent.OPT_OUT, "wrong_number"),
        ("START", ReplyIntent.OPT_IN, "START"),
        ("help", ReplyIntent.HELP, "HELP"),
    ],
)
def test_the_match_is_recorded_for_evidence(reply: str, intent: ReplyIntent, matched: str) -> None:
    result = classify_reply(reply)
    assert (result.intent, result.matched) == (intent, matched)


def test_nothing_recognised_carries_no_method_or_match() -> None:
    assert classify_reply("see you at the stop") == ReplyClassification(ReplyIntent.NONE)


def test_an_accounts_own_keywords_are_recognised_like_the_standard_ones() -> None:
    extra = {"extra_opt_out": ["ENOUGH", "no más"], "extra_opt_in": ["Join"]}
    assert classify_reply("Enough!!", **extra).matched == "ENOUGH"
    assert classify_reply("NO MAS", **extra).intent is ReplyIntent.OPT_OUT
    assert classify_reply("join please", **extra).intent is ReplyIntent.OPT_IN
    assert classify_reply("MENU", extra_help=["menu"]).intent is ReplyIntent.HELP
    assert classify_reply("Enough!!").intent is ReplyIntent.NONE


def test_a_keyword_an_account_also_lists_as_opt_in_stays_an_opt_out() -> None:
    result = classify_reply("stop", extra_opt_in=["STOP"], extra_help=["stop"])
    assert result.intent is ReplyIntent.OPT_OUT


@pytest.mark.parametrize(
    "reply",
    ["yes I want to start getting texts again", "please start sending again", "subscribe me"],
)
def test_opt_in_is_never_read_into_free_text(reply: str) -> None:
    # A false opt-in sends messages to someone who asked us to stop: keywords only.
    assert classify_reply(reply).intent is ReplyIntent.NONE


def test_the_intents_values_are_stable() -> None:
    assert [intent.value for intent in ReplyIntent] == ["opt_out", "opt_in", "help", "none"]


# --- replies -------------------------------------------------------------------------------


def test_the_default_opt_out_confirmation_names_the_brand_and_how_to_come_back() -> None:
    text = opt_out_confirmation("Acme")
    assert text.startswith("Acme: ")
    assert "unsubscribed" in text
    assert "no more messages" in text
    assert "Reply START" in text


def test_the_default_opt_in_confirmation_has_the_ctia_elements() -> None:
    text = opt_in_confirmation("Acme")
    for element in ("Acme", "Msg frequency varies", "Msg&data rates may apply", "HELP", "STOP"):
        assert element in text


def test_the_default_help_reply_has_the_ctia_elements() -> None:
    text = help_reply("Acme", "support@acme.example")
    assert text == (
        "Acme: For help contact support@acme.example. Msg&data rates may apply. "
        "Reply STOP to opt out."
    )


@pytest.mark.parametrize(
    "template", [DEFAULT_OPT_OUT_CONFIRMATION, DEFAULT_OPT_IN_CONFIRMATION, DEFAULT_HELP_REPLY]
)
def test_the_default_replies_fit_one_gsm7_segment_with_a_20_character_brand(
    template: str,
) -> None:
    text = template.replace("{brand}", "B" * 20).replace("{contact}", "+1 800 555 0199")
    assert is_gsm7(text)
    assert count_units(text, "GSM-7") <= 160


def test_an_account_override_replaces_the_default_and_may_name_the_brand() -> None:
    assert opt_out_confirmation("Acme", override="{brand}: done. {x}") == "Acme: done. {x}"
    assert help_reply("Acme", "acme.example/help", override="Call {contact}") == (
        "Call acme.example/help"
    )
    assert opt_in_confirmation("Acme", override="Welcome back") == "Welcome back"


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_a_blank_override_means_the_default(blank: str | None) -> None:
    assert opt_out_confirmation("Acme", override=blank) == opt_out_confirmation("Acme")
    assert opt_in_confirmation("Acme", override=blank) == opt_in_confirmation("Acme")
    assert help_reply("Acme", "x", override=blank) == help_reply("Acme", "x")


def test_an_accounts_keyword_may_itself_hold_a_politeness_word() -> None:
    found = classify_reply("Hilfe bitte!", extra_help=["Hilfe bitte"])
    assert (found.intent, found.matched) == (ReplyIntent.HELP, "HILFE BITTE")
    assert classify_reply("stop bitte").intent is ReplyIntent.OPT_OUT  # still politeness


def test_the_default_help_reply_without_any_contact_leaves_no_gap() -> None:
    text = help_reply("Shop", "")
    assert "contact ." not in text
    assert text.startswith("Shop: ")
    assert "Reply STOP to opt out" in text
