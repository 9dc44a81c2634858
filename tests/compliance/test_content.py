"""Content rules: forbidden categories, shorteners, first-contact SMS and CAN-SPAM email."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amnex.compliance import content as content_module
from amnex.compliance.content import (
    CODE_CONTENT_FORBIDDEN,
    CODE_LINK_SHORTENER_BLOCKED,
    CODE_OPT_OUT_LANGUAGE_MISSING,
    CODE_POSTAL_ADDRESS_MISSING,
    CODE_SENDER_IDENTIFICATION_MISSING,
    CODE_UNSUBSCRIBE_LINK_MISSING,
    FLAG_LINK_SHORTENER,
    PHISHING,
    RULE_CONTENT,
    SHAFT_CATEGORIES,
    UNSUBSCRIBE_PLACEHOLDER,
    US_CATEGORIES,
    ContentCheck,
    ContentFlag,
    ContentPolicy,
    check_content,
    check_forbidden_content,
    check_link_shorteners,
    check_opt_out_language,
    check_postal_address,
    check_sender_identification,
    check_unsubscribe_link,
    find_link_shorteners,
    fold,
    forbidden_categories,
    words,
)
from amnex.compliance.verdict import ALLOW, Reject, Verdict
from amnex.messages.schemas import Category, Channel


def rejected_with(verdict: Verdict) -> str | None:
    if isinstance(verdict, Reject):
        assert verdict.rule == RULE_CONTENT
        return verdict.code
    assert verdict == ALLOW
    return None


# --- folding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "folded"),
    [
        ("\uff33\uff25\uff38", "sex"),  # fullwidth
        ("\U0001d42c\U0001d41e\U0001d431", "sex"),  # mathematical bold
        ("s\u200be\u200dx\u00ad", "sex"),  # zero-width space and joiner, soft hyphen
        ("\u202eSale\u202c", "sale"),  # bidi override
        ("ARR\u00caT  D\u00e9sabonner", "arret desabonner"),
        ("\u0455ex", "sex"),  # Cyrillic dze in a Latin word
        ("\u0440\u043e\u0442", "\u0440\u043e\u0442"),  # a wholly Cyrillic word stays
        ("don\u2019t \u201cstop\u201d \u2014 ok", 'don\'t "stop" - ok'),
        ("  a \n\t b  ", "a b"),
        ("\u0928\u092e\u0938\u094d\u0924\u0947", "\u0928\u092e\u0938\u094d\u0924\u0947"),
    ],
)
def test_text_is_folded_before_matching(given: str, folded: str) -> None:
    assert fold(given) == folded


def test_every_format_character_is_removed() -> None:
    format_characters = [
        chr(code) for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"
    ]
    assert fold("a" + "".join(format_characters) + "b") == "ab"


def test_words_drop_punctuation_and_emoji_but_keep_apostrophes_inside_words() -> None:
    assert words("'Reply \"STOP\"' \U0001f6d1 (don't) e-cig!") == "reply stop don't e cig"


# --- forbidden content ---------------------------------------------------------------------


def test_the_named_category_sets_exist_in_the_rules() -> None:
    assert SHAFT_CATEGORIES | US_CATEGORIES | {PHISHING} <= forbidden_categories()
    assert forbidden_categories() == US_CATEGORIES


@pytest.mark.parametrize(
    ("body", "category"),
    [
        ("Hot sex tonight, reply now", "sex"),
        ("SEXY singles near you", "sex"),
        ("S E X chat 24/7", "sex"),
        ("s.e.x chat", "sex"),
        ("\uff33\uff25\uff38 chat", "sex"),
        ("s\u200bex chat", "sex"),
        ("\u0455ex chat", "sex"),
        ("Free porn", "sex"),
        ("Join the race war", "hate"),
        ("20% off all vodka this weekend", "alcohol"),
        ("Happy hour 5-7pm!", "alcohol"),
        ("Wine tasting Friday", "alcohol"),
        ("New Glock 19 in stock", "firearms"),
        ("Ammo sale: 9mm boxes", "firearms"),
        ("AR-15 parts restocked", "firearms"),
        ("Gun show this Saturday", "firearms"),
        ("Cheap cigarettes delivered", "tobacco"),
        ("New vape flavors in store", "tobacco"),
        ("E-cigs 2 for 1", "tobacco"),
        ("CBD oil 30% off", "cannabis"),
        ("Visit our dispensary", "cannabis"),
        ("Delta-8 gummies", "cannabis"),
        ("Your account has been suspended. Verify at http://acme-secure.top/login", "phishing"),
        ("Please verify your account: bit.ly/3xYz", "phishing"),
        ("Unusual activity detected, sign in at www.bank-check.com now", "phishing"),
        ("Enter your password at https://login.example.top to keep access", "phishing"),
        ("An agent will call you. Share the code with them to confirm.", "phishing"),
        ("Reply with the code we just sent you", "phishing"),
        (
            "USPS: your package is on hold due to an unpaid $1.99 fee. Pay: usps-help.top/p",
            "phishing",
        ),
        (
            "Parcel could not be delivered, pay the redelivery fee at https://x.example/p",
            "phishing",
        ),
        ("Congratulations, you've won a $500 gift card! Claim: tinyurl.com/abc", "phishing"),
    ],
)
def test_forbidden_content_is_rejected_naming_its_category(body: str, category: str) -> None:
    verdict = check_forbidden_content(body, categories=US_CATEGORIES)
    assert isinstance(verdict, Reject)
    assert (verdict.code, verdict.rule) == (CODE_CONTENT_FORBIDDEN, RULE_CONTENT)
    assert repr(category) in verdict.detail
    assert body not in verdict.detail


@pytest.mark.parametrize(
    "body",
    [
        "Visit Essex and Sussex this summer",
        "Middlesex County office hours",
        "A classic look for less",
        "Assess your plan at the class",
        "Root beer floats for the kids",
        "Rubbing alcohol and alcohol wipes restocked",
        "Try our non-alcoholic beer",
        "Hot glue gun and nail gun sale",
        "Water pistols for summer",
        "Nicotine patches are covered by your plan",
        "Engine oil change due",
        "Your Acme code is 123456. Do not share the code with anyone.",
        "Never share your code with anyone, not even us",
        "Your package arrives tomorrow. Track: https://ups.com/track/1Z",
        "Your order is on hold: payment failed. Update it in the app.",
        "Your account has been suspended for non-payment. Call us at 800-555-0199.",
        "Suspicious activity on your card ending 1234. Reply YES if it was you.",
        "Thanks for buying a gift card! Balance: https://acme.example/gc",
        "Your verification code is 882211",
        "Total: $1,488.00",
        "Meet Mr.Smith at 5",
        "Sesame Street tickets",
    ],
)
def test_innocent_content_is_allowed(body: str) -> None:
    assert check_forbidden_content(body, categories=US_CATEGORIES) == ALLOW


def test_only_the_categories_passed_apply() -> None:
    body = "Wine tasting Friday"
    assert check_forbidden_content(body, categories={PHISHING}) == ALLOW
    assert check_forbidden_content(body, categories=()) == ALLOW
    assert rejected_with(check_forbidden_content(body, categories={"alcohol"})) == (
        CODE_CONTENT_FORBIDDEN
    )


def test_a_pattern_match_names_the_pattern() -> None:
    verdict = check_forbidden_content(
        "You have won a gift card! https://prize.example", categories={PHISHING}
    )
    assert isinstance(verdict, Reject)
    assert verdict.detail == (
        "the message falls in the forbidden content category 'phishing' (pattern 'gift_card_lure')"
    )


def test_a_lure_without_a_link_is_not_phishing() -> None:
    assert check_forbidden_content("Please verify your account", categories={PHISHING}) == ALLOW


def test_an_unknown_category_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown content categories"):
        check_forbidden_content("hello", categories={"alcohl"})


# --- link shorteners -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ("Deal: bit.ly/3abc", ["bit.ly"]),
        ("Deal: https://BIT.LY/3abc", ["bit.ly"]),
        ("Deal: http://www.tinyurl.com/x and t.co/y", ["tinyurl.com", "t.co"]),
        ("\uff42\uff49\uff54\uff0e\uff4c\uff59/x", ["bit.ly"]),  # fullwidth
        ("b\u0456t.ly/x", ["bit.ly"]),  # Cyrillic i
        ("bit\u3002ly/x", ["bit.ly"]),  # ideographic full stop
        ("goo.gl. ow.ly, is.gd!", ["goo.gl", "ow.ly", "is.gd"]),
        ('<a href="https://cutt.ly/x">go</a>', ["cutt.ly"]),
        ("Reach us at help@bit.ly.example.com", []),
        ("Visit https://acme.com/bit.ly", []),
        ("Visit https://notbit.ly/x", []),
        ("Visit https://acme.com", []),
    ],
)
def test_public_shorteners_are_found_with_or_without_a_scheme(body: str, found: list[str]) -> None:
    assert find_link_shorteners(body) == found


def test_an_accounts_extra_shortener_domains_are_found_too() -> None:
    assert find_link_shorteners("go.example/x", extra_domains={"Go.Example"}) == ["go.example"]


def test_the_shortener_policy_allows_flags_or_blocks() -> None:
    body = "Sale! bit.ly/3abc"
    assert check_link_shorteners(body, policy="allow") == ContentCheck(ALLOW)
    assert check_link_shorteners(body, policy="flag") == ContentCheck(
        ALLOW, (ContentFlag(FLAG_LINK_SHORTENER, "public link shortener: bit.ly"),)
    )
    blocked = check_link_shorteners(body, policy="block")
    assert rejected_with(blocked.verdict) == CODE_LINK_SHORTENER_BLOCKED
    assert blocked.flags == ()
    assert check_link_shorteners("Sale! acme.com/s", policy="block") == ContentCheck(ALLOW)


# --- marketing SMS on first contact --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "brand", "code"),
    [
        ("ACME: 20% off today", "Acme", None),
        ("Sale at acme today", "Acme, Inc.", None),
        ("Acme Co: sale", "Acme Co", None),
        ("Sale at AT&T today", "AT&T", None),
        ("Sale at Acmeville today", "Acme", CODE_SENDER_IDENTIFICATION_MISSING),
        ("20% off today", "Acme", CODE_SENDER_IDENTIFICATION_MISSING),
        ("20% off today", "  ", CODE_SENDER_IDENTIFICATION_MISSING),
    ],
)
def test_a_first_marketing_sms_must_name_the_sender(
    body: str, brand: str, code: str | None
) -> None:
    verdict = check_sender_identification(
        body, category="marketing", brand=brand, first_contact=True, require_on_first_contact=True
    )
    assert rejected_with(verdict) == code


@pytest.mark.parametrize(
    "body",
    [
        "Acme: sale! Reply STOP to opt out",
        "Acme: sale! Text STOP to 12345",
        "Acme: sale! STOP to end",
        "Acme: sale! Txt STOP2END",
        "Acme: sale! Reply 'STOP' to unsubscribe.",
        "Acme: sale! Msg&data rates may apply. Reply HELP for help, STOP to cancel.",
        "Acme: sale! To opt-out, reply \u201cSTOP\u201d",
        "Acme: \u00a1oferta! Responde BAJA para cancelar",
        "Acme: oferta. Responda STOP",
        "Acme : promo ! STOP pour vous d\u00e9sabonner",
        "Acme : promo ! STOP au 36111",
        "Acme: Angebot! Antworte STOPP",
        "Acme: promo. Responda SAIR",
    ],
)
def test_opt_out_instructions_are_recognised_in_several_languages(body: str) -> None:
    verdict = check_opt_out_language(
        body, category="marketing", first_contact=True, require_on_first_contact=True
    )
    assert verdict == ALLOW


@pytest.mark.parametrize(
    "body",
    [
        "Acme: sale today!",
        "Acme: stop by our store today",
        "Acme: don't stop now, sale ends Friday",
        "Acme: reply YES to confirm",
    ],
)
def test_a_first_marketing_sms_without_opt_out_instructions_is_rejected(body: str) -> None:
    verdict = check_opt_out_language(
        body, category="marketing", first_contact=True, require_on_first_contact=True
    )
    assert rejected_with(verdict) == CODE_OPT_OUT_LANGUAGE_MISSING


@pytest.mark.parametrize(
    ("category", "first_contact", "required"),
    [("transactional", True, True), ("marketing", False, True), ("marketing", True, False)],
)
def test_the_first_contact_rules_apply_only_to_a_first_marketing_message_when_required(
    category: Category, first_contact: bool, required: bool
) -> None:
    body = "20% off today"
    assert (
        check_sender_identification(
            body,
            category=category,
            brand="Acme",
            first_contact=first_contact,
            require_on_first_contact=required,
        )
        == ALLOW
    )
    assert (
        check_opt_out_language(
            body, category=category, first_contact=first_contact, require_on_first_contact=required
        )
        == ALLOW
    )


# --- marketing email -----------------------------------------------------------------------

ADDRESS = "123 Main St., Suite 4, Springfield, IL 62701"


@pytest.mark.parametrize(
    ("text", "address", "pattern", "code"),
    [
        ("Acme\n123 MAIN ST\nSuite 4\nSpringfield IL 62701", ADDRESS, None, None),
        ("Acme, 123 Main St., Suite 4, Springfield, IL 62701, USA", ADDRESS, None, None),
        ("Acme, 123 Main Street, Springfield", ADDRESS, None, CODE_POSTAL_ADDRESS_MISSING),
        ("Acme, 123 Main Street, Springfield", ADDRESS, r"123 Main (St\.?|Street)", None),
        ("Acme, PO Box 77, Springfield", None, r"P\.?O\.? Box \d+", None),
        ("Acme, 123 Main St", None, None, CODE_POSTAL_ADDRESS_MISSING),
        ("Acme, 123 Main St", "   ", None, CODE_POSTAL_ADDRESS_MISSING),
    ],
)
def test_a_marketing_email_must_carry_the_postal_address(
    text: str, address: str | None, pattern: str | None, code: str | None
) -> None:
    verdict = check_postal_address(
        text, category="marketing", postal_address=address, postal_address_pattern=pattern
    )
    assert rejected_with(verdict) == code


def test_an_account_without_a_postal_address_is_told_so() -> None:
    verdict = check_postal_address("hi", category="marketing", postal_address=None)
    assert isinstance(verdict, Reject)
    assert "account has no postal address" in verdict.detail


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (f"Sale! {UNSUBSCRIBE_PLACEHOLDER}", None),
        ('<a href="{{ unsubscribe_url }}">Unsubscribe</a>', None),
        ('<a href="https://acme.example/u/8f2c">Unsubscribe</a>', None),
        ("To unsubscribe, visit https://acme.example/prefs", None),
        ("Manage your email preferences: https://acme.example/p", None),
        ("https://acme.example/unsubscribe?u=1", None),
        ("https://acme.example/opt-out/1", None),
        ("Pour vous d\u00e9sabonner : https://acme.example/d", None),
        ("Sale! https://acme.example/shop", CODE_UNSUBSCRIBE_LINK_MISSING),
        ("Reply with unsubscribe in the subject", CODE_UNSUBSCRIBE_LINK_MISSING),
        ("Sale! {{unsubscribe}}", CODE_UNSUBSCRIBE_LINK_MISSING),
    ],
)
def test_a_marketing_email_must_carry_an_unsubscribe_link(raw: str, code: str | None) -> None:
    assert rejected_with(check_unsubscribe_link(raw, category="marketing")) == code


def test_transactional_email_needs_neither_address_nor_unsubscribe_link() -> None:
    assert check_postal_address("receipt", category="transactional", postal_address=None) == ALLOW
    assert check_unsubscribe_link("receipt", category="transactional") == ALLOW


# --- the whole content gate ----------------------------------------------------------------

POLICY = ContentPolicy(
    brand="Acme",
    forbidden_categories=US_CATEGORIES,
    shortener_policy="flag",
    postal_address=ADDRESS,
)
GOOD_SMS = "Acme: 20% off today at acme.example/s. Reply STOP to opt out"
GOOD_EMAIL_HTML = (
    "<p>20% off!</p><p>Acme, 123 Main St.<br>Suite 4<br>Springfield, IL 62701</p>"
    '<p><a href="{{unsubscribe_url}}">Unsubscribe</a></p>'
)


@pytest.mark.parametrize(
    ("channel", "category", "body", "html_body", "code"),
    [
        ("sms", "marketing", GOOD_SMS, None, None),
        (
            "mms",
            "marketing",
            "20% off today. Reply STOP to opt out",
            None,
            "sender_identification_missing",
        ),
        ("sms", "marketing", "Acme: 20% off today", None, CODE_OPT_OUT_LANGUAGE_MISSING),
        ("sms", "transactional", "Your order shipped", None, None),
        (
            "sms",
            "marketing",
            "Acme: vodka 2 for 1. Reply STOP to opt out",
            None,
            CODE_CONTENT_FORBIDDEN,
        ),
        ("push", "marketing", "20% off today", None, None),
        ("push", "marketing", "Vodka 2 for 1", None, CODE_CONTENT_FORBIDDEN),
        ("email", "marketing", "20% off!", GOOD_EMAIL_HTML, None),
        ("email", "marketing", "20% off! {{unsubscribe_url}}", None, CODE_POSTAL_ADDRESS_MISSING),
        ("email", "marketing", f"20% off! {ADDRESS}", None, CODE_UNSUBSCRIBE_LINK_MISSING),
        ("email", "transactional", "Your receipt", None, None),
    ],
)
def test_check_content_runs_the_rules_for_the_channel_and_category(
    channel: Channel, category: Category, body: str, html_body: str | None, code: str | None
) -> None:
    result = check_content(
        body,
        channel=channel,
        category=category,
        policy=POLICY,
        first_contact=True,
        html_body=html_body,
    )
    assert rejected_with(result.verdict) == code


def test_forbidden_content_is_decided_before_shorteners() -> None:
    policy = ContentPolicy(
        brand="Acme", forbidden_categories=frozenset({"alcohol"}), shortener_policy="block"
    )
    result = check_content(
        "Acme: vodka at bit.ly/x",
        channel="sms",
        category="transactional",
        policy=policy,
        first_contact=False,
    )
    assert rejected_with(result.verdict) == CODE_CONTENT_FORBIDDEN


def test_a_flagged_shortener_survives_the_later_rules_that_allow() -> None:
    result = check_content(
        "Acme: sale at bit.ly/x. Reply STOP to opt out",
        channel="sms",
        category="marketing",
        policy=POLICY,
        first_contact=True,
    )
    assert result == ContentCheck(
        ALLOW, (ContentFlag(FLAG_LINK_SHORTENER, "public link shortener: bit.ly"),)
    )


def test_a_shortener_inside_html_is_found_and_blocked() -> None:
    policy = ContentPolicy(brand="Acme", shortener_policy="block", postal_address=ADDRESS)
    result = check_content(
        "hello",
        channel="email",
        category="transactional",
        policy=policy,
        first_contact=False,
        subject="Your order",
        html_body='<a href="https://bit.ly/x">track</a>',
    )
    assert rejected_with(result.verdict) == CODE_LINK_SHORTENER_BLOCKED


def test_the_subject_is_checked_for_forbidden_content() -> None:
    result = check_content(
        "see inside",
        channel="email",
        category="transactional",
        policy=POLICY,
        first_contact=False,
        subject="Free porn",
    )
    assert rejected_with(result.verdict) == CODE_CONTENT_FORBIDDEN


# --- the fast paths decide exactly as the reference path -----------------------------------

_TRICKY_TEXTS = [
    "",
    "Hello",
    "Your code is 482913. It expires in 10 minutes.",
    "Shop: 20% off all shoes this weekend at https://shop.example/sale Reply STOP to opt out",
    "_'s a''b 'x' don't rock'n'roll o'' ''o it's_ _'_",
    "`quoted` ascii with a back-tick, `stop`",
    "s e x, S.E.X, s-e-x and a b c d e f",
    "e\u0301te\u0301 \u01f0 \u039f\u0394\u039f\u03a3 caf\u00e9 na\u00efve \u1e9e",
    "\u0455ex b\u0456t.ly \u0440\u043e\u0442 p\u043e\u0442 \u03bf\u03ba",
    "bit\u3002ly/x \uff42\uff49\uff54\uff0e\uff4c\uff59/x x.bit.ly t.co/a at.com",
    "\u201cStop\u201d \u2014 don\u2019t `reply` \u00abSTOP\u00bb \u2212 1",
    "a\u00a0b\u3000c\u2028d\x1ce\x85f\tg\r\nh",
    "s\u200be\u200dx\u00ad \u202eSale\u202c \ufeffvodka \U000e0041",
    "\u20ac49.99 \u2192 \u00b7 \u2122 \u00bd \ufb01re \u2460",
    "Reply STOP2END or text 'STOP' \u2014 Responde BAJA para cancelar",
    "Do not share the code with anyone. Share the code with the agent.",
    "USPS: package on hold, unpaid fee, pay at usps-help.top/p",
    "Root beer, ginger beer and rubbing alcohol; wine-colored shirts",
    "Visit https://acme.com/bit.ly or help@bit.ly.example.com or notbit.ly",
    "To unsubscribe, visit https://acme.example/prefs \u2014 {{ unsubscribe_url }}",
]

_VOCABULARY = [
    *("sex", "s e x", "vodka", "root beer", "glue gun", "gun", "cbd oil", "vape", "stop"),
    *("reply", "to", "opt", "out", "verify", "your", "account", "code", "share", "the"),
    *("with", "not", "package", "on hold", "fee", "gift card", "you won", "unsubscribe"),
    *("bit.ly/x", "https://acme.example/u", "t.co", "www.x.com", "acme", "shop", "inc"),
    *("123 main st", "suite 4", "{{unsubscribe_url}}", "<a href='x'>", "</a>", "&amp;"),
]
_SEPARATORS = [" ", "  ", "\n", ". ", ", ", "'", "\u2019", "-", "_", "\u200b", "\u3002", "!"]
_ALPHABET = (
    "abcxyzSTOP019 .,'`_-:/@<>\"{}\t\n"
    "\u00e9\u0301\u0308\u00ad\u200b\u202e\u3002\u3000\u00a0\u2019\u201c\u2014\u2212"
    "\u0430\u0435\u043e\u0455\u0456\u03bf\u0131\uff33\uff45\U0001d42c\u00df\u01f0\u03a3\u20ac"
)


def _gates(text: str) -> list[tuple[Channel, Category, str | None, str | None]]:
    return [
        ("sms", "marketing", None, None),
        ("sms", "transactional", None, None),
        ("email", "marketing", "Hi", f"<p>{text}</p><style>x</style>"),
        ("push", "marketing", None, None),
    ]


def _verdicts(text: str) -> object:
    policy = ContentPolicy(
        brand="Acme Inc.",
        forbidden_categories=US_CATEGORIES,
        shortener_policy="flag",
        extra_shorteners=frozenset({"go.example"}),
        postal_address=ADDRESS,
    )
    gates = [
        check_content(
            text,
            channel=channel,
            category=category,
            policy=policy,
            first_contact=True,
            subject=subject,
            html_body=html_body,
        )
        for channel, category, subject, html_body in _gates(text)
    ]
    return (
        fold(text),
        words(text),
        find_link_shorteners(text, extra_domains={"Go.Example"}),
        check_forbidden_content(text, categories=US_CATEGORIES),
        check_unsubscribe_link(text, category="marketing"),
        check_postal_address(text, category="marketing", postal_address=ADDRESS),
        gates,
    )


def _reference_verdicts(text: str) -> object:
    """The same, computed with every fast path off (regular expressions over all the text)."""
    content_module._fast_paths = False
    try:
        return _verdicts(text)
    finally:
        content_module._fast_paths = True


def _assert_fast_path_decides_as_the_reference(text: str) -> None:
    assert _verdicts(text) == _reference_verdicts(text), repr(text)


@pytest.mark.parametrize("text", _TRICKY_TEXTS)
def test_the_fast_paths_decide_as_the_reference_path_on_tricky_texts(text: str) -> None:
    _assert_fast_path_decides_as_the_reference(text)


def test_the_fast_paths_decide_as_the_reference_path_on_every_tested_body() -> None:
    bodies = [
        value
        for name, function in globals().items()
        if name.startswith("test_") and hasattr(function, "pytestmark")
        for mark in function.pytestmark
        if mark.name == "parametrize"
        for row in mark.args[1]
        for value in (row if isinstance(row, tuple) else (row,))
        if isinstance(value, str)
    ]
    assert len(bodies) > 100
    for body in bodies:
        _assert_fast_path_decides_as_the_reference(body)


def test_the_fast_paths_decide_as_the_reference_path_on_long_text() -> None:
    # Long enough for the scanning shortcuts that only long texts take.
    paragraph = " ".join(_TRICKY_TEXTS) + " "
    for text in (paragraph * 40, "plain ascii words " * 400 + "s e x", "\u20ac1 " * 3000):
        _assert_fast_path_decides_as_the_reference(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=60))
def test_the_fast_paths_decide_as_the_reference_path_on_random_text(text: str) -> None:
    _assert_fast_path_decides_as_the_reference(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_the_fast_paths_decide_as_the_reference_path_on_any_unicode(text: str) -> None:
    _assert_fast_path_decides_as_the_reference(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_VOCABULARY), st.sampled_from(_SEPARATORS)),
        max_size=14,
    ),
    st.booleans(),
)
def test_the_fast_paths_decide_as_the_reference_path_on_rule_words(
    pieces: list[tuple[str, str]], upper: bool
) -> None:
    text = "".join(word + separator for word, separator in pieces)
    _assert_fast_path_decides_as_the_reference(text.upper() if upper else text)
