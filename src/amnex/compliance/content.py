"""Compliance: content rules — may this body go out, as written, on this channel?

Pure functions, no I/O but reading the packaged rule list (`data/content_rules.json`), no
clock. One function per rule, each answering with a `Verdict` under the rule name
`content`; `check_content` runs them in this fixed order and stops at the first rejection:

1. **Forbidden content** (`check_forbidden_content`, code `content_forbidden`): the caller
   passes the categories that apply (`US_CATEGORIES` for US destinations: SHAFT — sex, hate,
   alcohol, firearms, tobacco — plus cannabis and phishing; `PHISHING` alone elsewhere).
   A category matches by its terms (whole words or phrases) or by its patterns (every group
   of phrases present, some only together with a link: "verify your account" + a link,
   a parcel + "on hold" + a fee + a link). The detail names the category and pattern, never
   the body or the words that matched.
2. **Public link shorteners** (`check_link_shorteners`): per-account policy `"allow"`,
   `"flag"` (the message goes, with a `ContentFlag` the caller records) or `"block"` (code
   `link_shortener_blocked`). Hosts are found with or without a scheme.
3. **Marketing SMS/MMS on first contact** (configurable): the body names the sender — the
   account's brand (`sender_identification_missing`) — and says how to opt out ("Reply STOP
   to opt out", "Responde BAJA", "STOP pour ..."; `opt_out_language_missing`).
4. **Marketing email** (CAN-SPAM, 15 U.S.C. 7704(a)(5)): the body carries the account's
   physical postal address (`postal_address_missing`) and an unsubscribe link
   (`unsubscribe_link_missing`): the `{{unsubscribe_url}}` placeholder, which the email
   channel fills with the account's one-click unsubscribe URL, or a URL of the sender's own
   next to unsubscribe wording or with "unsubscribe"/"opt-out" in it.

Transactional messages skip 3 and 4; push runs only 1 and 2.

Matching is robust to the usual evasions and conservative about meaning. Text is folded
(`fold`): NFKC (fullwidth and mathematical letters become plain ones), format characters
removed (zero-width spaces and joiners, soft hyphens, bidi controls), casefolded, accents on
Latin letters dropped, typographic quotes and dashes made plain, Cyrillic and Greek
look-alikes mapped to Latin inside words that mix them with Latin letters ("sex" spelt
with a Cyrillic dze), whitespace collapsed. Words letter-spaced out ("s e x", "s.e.x") are joined.
Then phrases must match whole words: "Essex" is not "sex" and "classic" is not "ass".
A word written wholly in look-alike letters of another script is left alone: the Russian
word for mouth looks like "pot" and stays Russian.

The rules run on the API's accept path for every message, so they take shortcuts that
cannot change an answer; a test compares every verdict with the reference path (private
`_fast_paths` off: each step and each regular expression over the whole text) on the tested
bodies and on random text. `check_content` folds a body once and builds its words view once
for all rules. ASCII text is folded by lower-casing it, making "`" plain and collapsing
whitespace (no other step can change ASCII); other text skips each step that none of its
distinct non-ASCII characters can change. Phrases are looked up in the view's set of words:
a phrase can match only if the body has each of its words, so it is filed under its
longest word and searched for (" phrase " in the view padded with spaces) only when the
body has that word, and a category none of whose filing words the body has is skipped.
Links to shorteners are looked for only in the space-separated runs holding a listed domain.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Final, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from amnex.compliance.verdict import ALLOW, Reject, Verdict
from amnex.messages.schemas import Category, Channel

__all__ = [
    "CODE_CONTENT_FORBIDDEN",
    "CODE_LINK_SHORTENER_BLOCKED",
    "CODE_OPT_OUT_LANGUAGE_MISSING",
    "CODE_POSTAL_ADDRESS_MISSING",
    "CODE_SENDER_IDENTIFICATION_MISSING",
    "CODE_UNSUBSCRIBE_LINK_MISSING",
    "FLAG_LINK_SHORTENER",
    "PHISHING",
    "RULE_CONTENT",
    "SHAFT_CATEGORIES",
    "UNSUBSCRIBE_PLACEHOLDER",
    "US_CATEGORIES",
    "ContentCheck",
    "ContentFlag",
    "ContentPolicy",
    "ShortenerPolicy",
    "check_content",
    "check_forbidden_content",
    "check_link_shorteners",
    "check_opt_out_language",
    "check_postal_address",
    "check_sender_identification",
    "check_unsubscribe_link",
    "find_link_shorteners",
    "fold",
    "forbidden_categories",
    "words",
]

RULE_CONTENT: Final = "content"

CODE_CONTENT_FORBIDDEN: Final = "content_forbidden"
"""The body falls in a forbidden content category that applies to the destination."""
CODE_LINK_SHORTENER_BLOCKED: Final = "link_shortener_blocked"
"""The body links through a public link shortener and the account blocks them."""
CODE_SENDER_IDENTIFICATION_MISSING: Final = "sender_identification_missing"
"""A first marketing SMS to a recipient does not name the account's brand."""
CODE_OPT_OUT_LANGUAGE_MISSING: Final = "opt_out_language_missing"
"""A first marketing SMS to a recipient does not say how to opt out (Reply STOP ...)."""
CODE_POSTAL_ADDRESS_MISSING: Final = "postal_address_missing"
"""A marketing email does not carry the account's physical postal address (CAN-SPAM)."""
CODE_UNSUBSCRIBE_LINK_MISSING: Final = "unsubscribe_link_missing"
"""A marketing email carries no unsubscribe link (CAN-SPAM)."""

FLAG_LINK_SHORTENER: Final = "link_shortener"
"""The code of the flag a `"flag"` shortener policy raises on a message it lets through."""

UNSUBSCRIBE_PLACEHOLDER: Final = "{{unsubscribe_url}}"
"""Written in a marketing email, replaced by the email channel with the recipient's
one-click unsubscribe URL; it satisfies the unsubscribe-link rule."""

SHAFT_CATEGORIES: Final = frozenset({"sex", "hate", "alcohol", "firearms", "tobacco"})
PHISHING: Final = "phishing"
US_CATEGORIES: Final = SHAFT_CATEGORIES | {"cannabis", PHISHING}
"""What US carriers filter: SHAFT, cannabis (SHAFT-C) and phishing."""

ShortenerPolicy = Literal["allow", "flag", "block"]


@dataclass(frozen=True, slots=True)
class ContentFlag:
    """Something worth recording about a message that is let through (`code`, `detail`)."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class ContentCheck:
    """The content rules' verdict, and the flags raised by rules that let the message go."""

    verdict: Verdict
    flags: tuple[ContentFlag, ...] = ()


@dataclass(frozen=True, slots=True)
class ContentPolicy:
    """The account's content settings, and the categories that apply to this destination.

    `brand` is what a first marketing SMS must name; corporate suffixes (Inc., LLC, Co., ...)
    are not needed in the body. `postal_address_pattern` is a regular expression (matched
    case-insensitively against the visible text, whitespace collapsed) for accounts whose
    footer writes the address in several ways; either it or `postal_address` must match.
    """

    brand: str
    forbidden_categories: frozenset[str] = frozenset()
    shortener_policy: ShortenerPolicy = "flag"
    extra_shorteners: frozenset[str] = frozenset()
    require_opt_out_on_first_contact: bool = True
    postal_address: str | None = None
    postal_address_pattern: str | None = None


_ALLOWED: Final = ContentCheck(ALLOW)  # immutable, so shared


# --- folding -------------------------------------------------------------------------------

# Every format (Cf) character, plus the invisible fillers and selectors that are not Cf
# (combining grapheme joiner, Hangul fillers, Mongolian and emoji variation selectors).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4"
    "\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
_LATIN_ACCENTS = re.compile("(?<=[a-z])[\u0300-\u036f]+")
_PLAIN_PUNCTUATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201b": "'",
        "\u02bc": "'",
        "\u2032": "'",
        "`": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2033": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
        "\u3002": ".",  # ideographic full stop: browsers read it as a dot in host names
    }
)
# Lower-case Cyrillic and Greek letters that look like Latin ones (after casefolding, so
# the Cyrillic capitals they come from, TE EN EM VE KA, look like T, H, M, B, K too).
_LOOKALIKES: Final[Mapping[str, str]] = {
    "\u0430": "a",  # cyrillic small letter a
    "\u0432": "b",  # cyrillic small letter ve
    "\u0435": "e",  # cyrillic small letter ie
    "\u043a": "k",  # cyrillic small letter ka
    "\u043c": "m",  # cyrillic small letter em
    "\u043d": "h",  # cyrillic small letter en
    "\u043e": "o",  # cyrillic small letter o
    "\u0440": "p",  # cyrillic small letter er
    "\u0441": "c",  # cyrillic small letter es
    "\u0442": "t",  # cyrillic small letter te
    "\u0443": "y",  # cyrillic small letter u
    "\u0445": "x",  # cyrillic small letter ha
    "\u0455": "s",  # cyrillic small letter dze
    "\u0456": "i",  # cyrillic small letter byelorussian-ukrainian i
    "\u0458": "j",  # cyrillic small letter je
    "\u04bb": "h",  # cyrillic small letter shha
    "\u0501": "d",  # cyrillic small letter komi de
    "\u051b": "q",  # cyrillic small letter qa
    "\u051d": "w",  # cyrillic small letter we
    "\u04cf": "l",  # cyrillic small letter palochka
    "\u0131": "i",  # latin small letter dotless i
    "\u0261": "g",  # latin small letter script g
    "\u03b1": "a",  # greek small letter alpha
    "\u03b2": "b",  # greek small letter beta
    "\u03b5": "e",  # greek small letter epsilon
    "\u03b9": "i",  # greek small letter iota
    "\u03ba": "k",  # greek small letter kappa
    "\u03bd": "v",  # greek small letter nu
    "\u03bf": "o",  # greek small letter omicron
    "\u03c1": "p",  # greek small letter rho
    "\u03c4": "t",  # greek small letter tau
    "\u03c5": "u",  # greek small letter upsilon
    "\u03c7": "x",  # greek small letter chi
}
_LOOKALIKE_TABLE = str.maketrans(dict(_LOOKALIKES))
_LOOKALIKE_CHAR = re.compile("[" + "".join(_LOOKALIKES) + "]")
_LETTERS = re.compile(r"[^\W\d_]+")
_ASCII_LETTER = re.compile("[a-z]")
_WHITESPACE = re.compile(r"\s+")
# What `words` keeps: letters and digits, and apostrophes inside words ("don't").
_NOT_WORD = re.compile(r"(?:[^\w']|_)+|(?<!\w)'+|'+(?!\w)")
_LETTER_SPACED = re.compile(r"(?<!\S)(?:[^\W\d_] ){2,}[^\W\d_](?!\S)")


# Private, and True in production: the equivalence test turns it off to run the reference
# path (every regular expression over the whole text, no shortcut) and compares verdicts.
_fast_paths = True

_NON_ASCII = re.compile("[^\x00-\x7f]")
_LATIN_MARK = re.compile("[\u0300-\u036f]")
_PUNCTUATION_TO_PLAIN: Final[Mapping[str, str]] = {
    chr(code): str(plain) for code, plain in _PLAIN_PUNCTUATION.items()
}
_NON_ASCII_PUNCTUATION: Final = frozenset(ch for ch in _PUNCTUATION_TO_PLAIN if not ch.isascii())
_LOOKALIKE_LETTERS: Final = frozenset(_LOOKALIKES)
# The same replacements as `_NOT_WORD`, split in steps that are cheap on long text: the
# apostrophes `_NOT_WORD` drops (not between two word characters, underscores included), then
# every character but letters, digits and the apostrophes left.
_DROPPED_APOSTROPHE = re.compile(r"'(?:(?<!\w')|(?!\w))")
_NOT_WORD_KEEPING_APOSTROPHES = re.compile(r"(?:[^\w']|_)+")
_ASCII_WORD_CHARS = str.maketrans(
    {code: " " for code in range(128) if not (chr(code).isalnum() or chr(code) == "'")}
)
# Necessary for `_LETTER_SPACED` to match a words view (searched in " " + view + " "):
# cheap to search because it starts with a literal.
_LETTER_SPACED_HINT = re.compile(r" [^\W\d_] [^\W\d_] [^\W\d_](?!\S)")
_SET_THRESHOLD_CHARS = 4096
_MANY_DISTINCT_CHARS = 16


def _unmask_word(match: re.Match[str]) -> str:
    word = match.group()
    if _LOOKALIKE_CHAR.search(word) and _ASCII_LETTER.search(word):
        return word.translate(_LOOKALIKE_TABLE)
    return word


def _non_ascii_chars(text: str) -> set[str]:
    """The distinct non-ASCII characters of `text` (cheap when there are a few in long text)."""
    if len(text) <= _SET_THRESHOLD_CHARS:
        return {ch for ch in set(text) if not ch.isascii()}
    found: set[str] = set()
    rest = text
    at = 0
    while (match := _NON_ASCII.search(rest, at)) is not None:
        if len(found) == _MANY_DISTINCT_CHARS:
            return {ch for ch in set(text) if not ch.isascii()}
        found.add(match.group())
        at = match.start()  # all before is ASCII, and stays where it is
        rest = rest.replace(match.group(), "")
    return found


def _fold_reference(text: str) -> str:
    """`fold` step by step over the whole text: the definition the fast paths must match."""
    text = unicodedata.normalize("NFKC", _INVISIBLE.sub("", text)).casefold()
    text = _LATIN_ACCENTS.sub("", unicodedata.normalize("NFD", text))
    text = unicodedata.normalize("NFC", text).translate(_PLAIN_PUNCTUATION)
    if _LOOKALIKE_CHAR.search(text):
        text = _LETTERS.sub(_unmask_word, text)
    return _WHITESPACE.sub(" ", text).strip()


def fold(text: str) -> str:
    """`text` as the content rules compare it: NFKC, no format characters, casefolded, no
    accents on Latin letters, plain quotes and dashes, look-alike letters unmasked in words
    that mix scripts, whitespace collapsed to single spaces.

    ASCII text takes a shortcut (lower-case, "`" made plain, whitespace collapsed); other text
    skips each step that none of its distinct non-ASCII characters can change."""
    if not _fast_paths:
        return _fold_reference(text)
    return _fold_fast(text)[0]


def _fold_fast(text: str) -> tuple[str, set[str]]:
    """`fold(text)`, and the non-ASCII characters it may hold (a superset)."""
    if text.isascii():
        # On ASCII, NFKC, NFD and NFC are the identity; no format character, combining accent
        # or look-alike letter is ASCII; the only ASCII quote made plain is "`"; casefold is
        # lower. `str.split` and `\s` both split on the `str.isspace` characters.
        return " ".join(text.lower().replace("`", "'").split()), set()
    if _INVISIBLE.search("".join(_non_ascii_chars(text))):  # all format characters are non-ASCII
        text = _INVISIBLE.sub("", text)
    text = unicodedata.normalize("NFKC", text).casefold()
    if text.isascii():
        return " ".join(text.replace("`", "'").split()), set()
    chars = _non_ascii_chars(text)
    # NFD decomposes character by character: it yields a combining accent only if one of the
    # distinct characters does. Without one, NFC(NFD(text)) is NFC(text).
    if _LATIN_MARK.search(unicodedata.normalize("NFD", "".join(chars))):
        text = unicodedata.normalize(
            "NFC", _LATIN_ACCENTS.sub("", unicodedata.normalize("NFD", text))
        )
        chars = _non_ascii_chars(text)
    elif not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
        chars = _non_ascii_chars(text)
    # No plain replacement is itself replaced, so one `replace` per character present is the
    # `translate` of the reference.
    for ch in chars & _NON_ASCII_PUNCTUATION:
        text = text.replace(ch, _PUNCTUATION_TO_PLAIN[ch])
    text = text.replace("`", "'")
    if not chars.isdisjoint(_LOOKALIKE_LETTERS):
        text = _LETTERS.sub(_unmask_word, text)
    return " ".join(text.split()), chars - _NON_ASCII_PUNCTUATION


def _word_list(folded: str, chars: Iterable[str] | None = None) -> list[str]:
    """The words of text already folded, in order (the fast path of `_NOT_WORD`); `chars`
    holds every non-ASCII character of `folded` (or more), if known."""
    if "'" in folded:
        folded = _DROPPED_APOSTROPHE.sub(" ", folded)
    if not folded.isascii():
        # A regular expression's \w without "_" is `str.isalnum`.
        for ch in _non_ascii_chars(folded) if chars is None else chars:
            if not ch.isalnum():
                folded = folded.replace(ch, " ")
        if not folded.isascii():
            return _NOT_WORD_KEEPING_APOSTROPHES.sub(" ", folded).split()
    return folded.translate(_ASCII_WORD_CHARS).split()


def _words_of_folded(folded: str) -> str:
    """The `words` view of text already folded."""
    if not _fast_paths:
        return _WHITESPACE.sub(" ", _NOT_WORD.sub(" ", folded)).strip()
    return " ".join(_word_list(folded))


def words(text: str) -> str:
    """The folded words of `text`, one space apart: punctuation, symbols and emoji go, and
    apostrophes stay only inside a word."""
    return _words_of_folded(fold(text))


class _View(NamedTuple):
    """A `words` view (`text`), its distinct words and the text padded with a space each side:
    a phrase of whole words is in the view exactly when " phrase " is in `padded`."""

    text: str
    tokens: frozenset[str]
    padded: str

    @classmethod
    def of(cls, text: str) -> _View:
        return cls(text, frozenset(text.split()), f" {text} ")

    def has_phrase(self, phrase: str) -> bool:
        """Is `phrase` (a `words` view itself) in this view as whole words?"""
        if not _fast_paths:
            return re.search(rf"(?<!\S){re.escape(phrase)}(?!\S)", self.text) is not None
        return f" {phrase} " in self.padded


class _Body(str):
    """A body that keeps its folded views, so `check_content` folds it once for all rules.

    Only `check_content` makes these, for the length of one call: nothing keeps message
    content around (no cache of bodies).
    """

    _folded: str | None = None
    _non_ascii: set[str] | None = None  # what `_fold_fast` says the folded text may hold
    _views: tuple[_View, ...] | None = None


def _folded_of(text: str) -> str:
    if not isinstance(text, _Body):
        return fold(text)
    if text._folded is None:
        if _fast_paths:
            text._folded, text._non_ascii = _fold_fast(text)
        else:
            text._folded = fold(text)
    return text._folded


def _compute_views(text: str) -> tuple[_View, ...]:
    folded = _folded_of(text)
    if not _fast_paths:
        view = _View.of(_words_of_folded(folded))
    else:
        word_list = _word_list(folded, text._non_ascii if isinstance(text, _Body) else None)
        joined_words = " ".join(word_list)
        view = _View(joined_words, frozenset(word_list), f" {joined_words} ")
        if not _LETTER_SPACED_HINT.search(view.padded):
            return (view,)
    joined = _join_letter_spacing(view.text)
    return (view,) if joined == view.text else (view, _View.of(joined))


def _views_of(text: str) -> tuple[_View, ...]:
    """The body's words view, then the same with letter-spaced words joined if that differs."""
    if not isinstance(text, _Body):
        return _compute_views(text)
    if text._views is None:
        text._views = _compute_views(text)
    return text._views


def _words_view_of(text: str) -> _View:
    return _views_of(text)[0]


def _join_letter_spacing(text: str) -> str:
    """Words spelled out letter by letter ("s e x", from "s.e.x" or "S E X") joined up."""
    return _LETTER_SPACED.sub(lambda match: match.group().replace(" ", ""), text)


@dataclass(frozen=True, slots=True)
class _Phrases:
    """Phrases matched as whole words of a `words` view.

    `pattern` matches any of them. `occur_in` answers the same question with set and
    substring look-ups: a phrase is there only if the view has every word of it, so each
    phrase of several words is filed under one of its words (the longest, likely the rarest)
    and looked for only when the view has that word.
    """

    pattern: re.Pattern[str]
    single_words: frozenset[str]
    by_key_word: Mapping[str, tuple[str, ...]]  # multi-word phrases, padded with spaces

    @property
    def key_words(self) -> frozenset[str]:
        """A view without any of these words has none of the phrases."""
        return self.single_words | frozenset(self.by_key_word)

    def occur_in(self, view: _View) -> bool:
        if not _fast_paths:
            return self.pattern.search(view.text) is not None
        if not view.tokens.isdisjoint(self.single_words):
            return True
        for word in view.tokens.intersection(self.by_key_word):
            if any(phrase in view.padded for phrase in self.by_key_word[word]):
                return True
        return False


def _phrases(phrases: Iterable[str]) -> _Phrases | None:
    """`phrases` in their `words` form, to match as whole words of a `words` view."""
    folded = sorted({words(phrase) for phrase in phrases} - {""}, key=len, reverse=True)
    if not folded:
        return None
    body = "|".join(re.escape(phrase) for phrase in folded)
    by_key_word: dict[str, list[str]] = {}
    for phrase in folded:
        if " " in phrase:
            key = max(phrase.split(" "), key=len)
            by_key_word.setdefault(key, []).append(f" {phrase} ")
    return _Phrases(
        pattern=re.compile(rf"(?<!\S)(?:{body})(?!\S)"),
        single_words=frozenset(phrase for phrase in folded if " " not in phrase),
        by_key_word={word: tuple(padded) for word, padded in by_key_word.items()},
    )


# --- links ---------------------------------------------------------------------------------

_HOST = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_URL = re.compile(
    rf"(?<![\w@.-])(?P<scheme>[a-z][a-z0-9+.-]*://)?(?P<host>{_HOST})(?![\w-])"
    r"(?P<path>[/?#:][^\s<>\"']*)?"
)
_SCHEME_URL = re.compile(r"(?<![a-z])(?:https?://|www\.)[^\s<>\"']+")
# Top-level domains that make a bare "word.tld" a link without a scheme or path: the common
# generic ones and the country codes shorteners and lures use. "Mr.Smith" is no link.
_BARE_LINK_TLDS: Final = frozenset(
    {
        *("com", "net", "org", "info", "biz", "io", "co", "me", "us", "xyz", "top", "site"),
        *("online", "link", "click", "app", "shop", "store", "live", "club", "icu", "vip"),
        *("ly", "gl", "gd", "at", "cc", "to", "cn", "ru", "tk", "ml", "ga", "cf", "gq", "ws"),
        *("in", "uk", "de", "fr", "es", "ca", "au"),
    }
)


def _hosts(folded: str) -> Iterable[str]:
    for match in _URL.finditer(folded):
        yield match.group("host")


def _has_link(folded: str) -> bool:
    """Does the body carry something a phone or mail client would make a link?"""
    if _SCHEME_URL.search(folded):
        return True
    for match in _URL.finditer(folded):
        host = match.group("host")
        if match.group("path") or host.rpartition(".")[2] in _BARE_LINK_TLDS:
            return True
    return False


# --- the packaged rules --------------------------------------------------------------------


class _PatternData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    all: list[list[str]] = Field(min_length=1)
    link: bool = False
    negatable: bool = False


class _CategoryData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    description: str
    terms: list[str] = []
    exceptions: list[str] = Field(default=[], alias="except")
    patterns: list[_PatternData] = []


class _OptOutLanguageData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    about: str
    verbs: list[str]
    keywords: list[str]
    keyword_then: list[str]
    phrases: list[str]


class _RulesData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    about: str
    categories: dict[str, _CategoryData]
    link_shorteners: list[str]
    opt_out_language: _OptOutLanguageData


@dataclass(frozen=True, slots=True)
class _Pattern:
    name: str
    groups: tuple[_Phrases, ...]
    needs_link: bool
    negatable: bool


@dataclass(frozen=True, slots=True)
class _Category:
    name: str
    terms: _Phrases | None
    exceptions: _Phrases | None
    patterns: tuple[_Pattern, ...]
    key_words: frozenset[str]
    """A view without any of these words matches neither a term nor a pattern (whose first
    group must match)."""


@dataclass(frozen=True, slots=True)
class _Rules:
    categories: Mapping[str, _Category]
    names: frozenset[str]
    shorteners: frozenset[str]
    opt_out_language: _Phrases


def _compile_pattern(data: _PatternData) -> _Pattern:
    groups = tuple(_phrases(group) for group in data.all)
    if any(group is None for group in groups):
        raise ValueError(f"content pattern {data.name!r} has an empty group")
    return _Pattern(
        name=data.name,
        groups=tuple(group for group in groups if group is not None),
        needs_link=data.link,
        negatable=data.negatable,
    )


def _compile_category(name: str, data: _CategoryData) -> _Category:
    terms = _phrases(data.terms)
    patterns = tuple(_compile_pattern(pattern) for pattern in data.patterns)
    key_words = frozenset().union(
        *(pattern.groups[0].key_words for pattern in patterns),
        terms.key_words if terms is not None else (),
    )
    return _Category(
        name=name,
        terms=terms,
        exceptions=_phrases(data.exceptions),
        patterns=patterns,
        key_words=key_words,
    )


@functools.cache
def _rules() -> _Rules:
    source = resources.files("amnex.compliance").joinpath("data/content_rules.json")
    data = _RulesData.model_validate_json(source.read_text(encoding="utf-8"))
    categories = {
        name: _compile_category(name, category) for name, category in data.categories.items()
    }
    language = data.opt_out_language
    instructions = [
        *(f"{verb} {keyword}" for verb in language.verbs for keyword in language.keywords),
        *(f"{keyword} {then}" for keyword in language.keywords for then in language.keyword_then),
        *language.phrases,
    ]
    opt_out_language = _phrases(instructions)
    if opt_out_language is None:
        raise ValueError("the content rules list no opt-out language")
    return _Rules(
        categories=categories,
        names=frozenset(categories),
        shorteners=frozenset(domain.casefold() for domain in data.link_shorteners),
        opt_out_language=opt_out_language,
    )


def forbidden_categories() -> frozenset[str]:
    """Every forbidden content category the packaged rules know."""
    return _rules().names


# --- 1. forbidden content ------------------------------------------------------------------

_NEGATIONS: Final = frozenset({"not", "never", "don't", "dont", "nobody", "cannot", "can't"})
_NEGATION_WINDOW_WORDS: Final = 3


def _negated(text: str, start: int) -> bool:
    """Is the phrase starting at `start` closely preceded by a negation ("do not share")?"""
    before = text[:start].rsplit(maxsplit=_NEGATION_WINDOW_WORDS)[-_NEGATION_WINDOW_WORDS:]
    return any(word in _NEGATIONS for word in before)


def _group_matches(group: _Phrases, view: _View, *, negatable: bool) -> bool:
    if not group.occur_in(view):
        return False
    if not negatable:
        return True
    text = view.text
    return any(not _negated(text, match.start()) for match in group.pattern.finditer(text))


def _matching_pattern(category: _Category, view: _View, folded: str) -> str | None:
    """The name of the first of `category`'s patterns that `view` matches, else None."""
    for pattern in category.patterns:
        if all(_group_matches(g, view, negatable=pattern.negatable) for g in pattern.groups) and (
            not pattern.needs_link or _has_link(folded)
        ):
            return pattern.name
    return None


def _category_match(category: _Category, views: Iterable[_View], folded: str) -> str | None:
    """How `category` matches the body ("" for one of its terms, else a pattern's name)."""
    for view in views:
        if _fast_paths and view.tokens.isdisjoint(category.key_words):
            continue
        if category.terms is not None and category.terms.occur_in(view):
            # Only now blank out the exceptions ("root beer"), and look again.
            text = view.text
            if category.exceptions is not None:
                text = category.exceptions.pattern.sub(" ", text)
            if category.terms.pattern.search(text):
                return ""
        pattern = _matching_pattern(category, view, folded)
        if pattern is not None:
            return pattern
    return None


@functools.lru_cache(maxsize=64)
def _key_words(categories: frozenset[str]) -> frozenset[str]:
    """Words without which no category of `categories` can match."""
    rules = _rules()
    return frozenset().union(*(rules.categories[name].key_words for name in categories))


def check_forbidden_content(text: str, *, categories: Collection[str]) -> Verdict:
    """Reject a body in one of `categories` (names from `forbidden_categories()`).

    `text` is everything the recipient reads (subject, text, HTML with its tags removed).
    An unknown category name is a programming error and raises ValueError: a typo must not
    silently turn a rule off.
    """
    rules = _rules()
    if not rules.names.issuperset(categories):
        unknown = set(categories) - rules.names
        raise ValueError(f"unknown content categories: {sorted(unknown)}")
    if not categories:
        return ALLOW
    body = text if isinstance(text, _Body) else _Body(text)
    views = _views_of(body)
    if _fast_paths:
        key_words = _key_words(frozenset(categories))
        for view in views:
            if not view.tokens.isdisjoint(key_words):
                break
        else:
            return ALLOW
    folded = _folded_of(body)
    for name, category in rules.categories.items():  # the data file's order: stable details
        if name not in categories:
            continue
        how = _category_match(category, views, folded)
        if how is not None:
            detail = f"the message falls in the forbidden content category {name!r}"
            if how:
                detail += f" (pattern {how!r})"
            return Reject(CODE_CONTENT_FORBIDDEN, RULE_CONTENT, detail)
    return ALLOW


# --- 2. public link shorteners -------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _domains_pattern(domains: frozenset[str]) -> re.Pattern[str] | None:
    """Finds each of `domains` in text (dotless ones aside: no host suffix matches them).

    Written to start with the literal "." (then the rest of the domain, then a look-behind
    for its first label), which the regular expression engine finds fast.
    """
    first_labels: dict[str, list[str]] = {}
    for domain in sorted(domains):
        label, dot, rest = domain.partition(".")
        if dot:
            first_labels.setdefault(rest, []).append(label)
    if not first_labels:
        return None
    branches = (
        re.escape(rest)
        + "(?:"
        + "|".join(f"(?<={re.escape(f'{label}.{rest}')})" for label in labels)
        + ")"
        for rest, labels in first_labels.items()
    )
    return re.compile(r"\.(?:" + "|".join(branches) + ")")


def _hosts_with_domains(folded: str, domains: frozenset[str]) -> Iterable[str]:
    """`_hosts(folded)` less hosts that hold none of `domains` (so end with none of them).

    A link never spans whitespace, and whitespace satisfies the lookarounds of `_URL` as the
    ends of the text do: so `_URL` finds the same links in each space-separated run of
    `folded` (single spaces: it is folded) as in the whole, and only the runs holding one of
    `domains` need looking at.
    """
    pattern = _domains_pattern(domains)
    if pattern is None:
        return
    runs: dict[int, int] = {}  # start -> end, in order of the text
    for match in pattern.finditer(folded):
        start = folded.rfind(" ", 0, match.start()) + 1
        if start not in runs:
            end = folded.find(" ", match.start())
            runs[start] = len(folded) if end == -1 else end
    for start, end in runs.items():
        yield from _hosts(folded[start:end])


def find_link_shorteners(text: str, *, extra_domains: Collection[str] = ()) -> list[str]:
    """The public shortener domains `text` links through, in order of first appearance."""
    domains = _rules().shorteners
    if extra_domains:
        domains = domains | {domain.casefold() for domain in extra_domains}
    folded = _folded_of(text)
    if not _fast_paths:
        hosts = _hosts(folded)
    elif "." not in folded:  # every host has one ("。" is folded to ".")
        return []
    else:
        hosts = _hosts_with_domains(folded, domains)
    found: list[str] = []
    for host in hosts:
        labels = host.split(".")
        for start in range(len(labels) - 1):
            candidate = ".".join(labels[start:])
            if candidate in domains and candidate not in found:
                found.append(candidate)
                break
    return found


def check_link_shorteners(
    text: str, *, policy: ShortenerPolicy, extra_domains: Collection[str] = ()
) -> ContentCheck:
    """Apply the account's shortener policy to the links in `text` (with or without scheme).

    Carriers filter public shorteners because anyone can hide any destination behind them:
    `"block"` rejects (`link_shortener_blocked`), `"flag"` lets the message go with a
    `link_shortener` flag naming the domains, `"allow"` does not look.
    """
    if policy == "allow":
        return _ALLOWED
    domains = find_link_shorteners(text, extra_domains=extra_domains)
    if not domains:
        return _ALLOWED
    named = ", ".join(domains)
    if policy == "block":
        detail = (
            f"the message links through a public link shortener ({named}); "
            "link to a domain of your own"
        )
        return ContentCheck(Reject(CODE_LINK_SHORTENER_BLOCKED, RULE_CONTENT, detail))
    flag = ContentFlag(FLAG_LINK_SHORTENER, f"public link shortener: {named}")
    return ContentCheck(ALLOW, (flag,))


# --- 3. marketing SMS on first contact -----------------------------------------------------

_CORPORATE_SUFFIXES: Final = frozenset(
    {
        *("inc", "incorporated", "llc", "l", "c", "ltd", "limited", "co", "corp"),
        *("corporation", "company", "plc", "gmbh", "ag", "sa", "sas", "srl", "bv", "nv"),
        *("pty", "lp", "llp"),
    }
)


def _brand_words(brand: str) -> str:
    """The brand's words without trailing corporate suffixes ("Acme Co., Inc." -> "acme")."""
    parts = words(brand).split()
    while len(parts) > 1 and parts[-1] in _CORPORATE_SUFFIXES:
        parts.pop()
    return " ".join(parts)


def _first_contact_rule_applies(
    category: Category, *, first_contact: bool, require_on_first_contact: bool
) -> bool:
    return category == "marketing" and first_contact and require_on_first_contact


def check_sender_identification(
    body: str,
    *,
    category: Category,
    brand: str,
    first_contact: bool,
    require_on_first_contact: bool,
) -> Verdict:
    """A first marketing SMS to a recipient must name the sender (CTIA Messaging Principles:
    the brand, case-insensitively, as whole words)."""
    if not _first_contact_rule_applies(
        category, first_contact=first_contact, require_on_first_contact=require_on_first_contact
    ):
        return ALLOW
    name = _brand_words(brand)
    if not name:
        detail = "the account has no brand name, so its first marketing message cannot name it"
        return Reject(CODE_SENDER_IDENTIFICATION_MISSING, RULE_CONTENT, detail)
    if _words_view_of(body).has_phrase(name):
        return ALLOW
    detail = f"a first marketing message to a recipient must name the sender ({brand.strip()!r})"
    return Reject(CODE_SENDER_IDENTIFICATION_MISSING, RULE_CONTENT, detail)


def check_opt_out_language(
    body: str, *, category: Category, first_contact: bool, require_on_first_contact: bool
) -> Verdict:
    """A first marketing SMS to a recipient must say how to opt out: an instruction such as
    "Reply STOP to opt out", "Text STOP", "STOP to end", "Responde BAJA", "STOP pour ...",
    "Antworte STOPP" (verbs, keywords and phrases in `data/content_rules.json`)."""
    if not _first_contact_rule_applies(
        category, first_contact=first_contact, require_on_first_contact=require_on_first_contact
    ):
        return ALLOW
    if _rules().opt_out_language.occur_in(_words_view_of(body)):
        return ALLOW
    detail = 'a first marketing message to a recipient must say how to opt out ("Reply STOP")'
    return Reject(CODE_OPT_OUT_LANGUAGE_MISSING, RULE_CONTENT, detail)


# --- 4. marketing email (CAN-SPAM) ---------------------------------------------------------

_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def _visible_html(markup: str) -> str:
    """The text an HTML body shows: scripts, styles and tags removed, entities decoded."""
    return html.unescape(_TAG.sub(" ", _SCRIPT_OR_STYLE.sub(" ", markup)))


@functools.lru_cache(maxsize=256)
def _compiled_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def check_postal_address(
    text: str,
    *,
    category: Category,
    postal_address: str | None,
    postal_address_pattern: str | None = None,
) -> Verdict:
    """A marketing email must carry the sender's valid physical postal address.

    `text` is the visible text (HTML tags removed). The account's `postal_address` matches
    word for word, ignoring case, punctuation and line breaks ("123 Main St., Springfield"
    matches "123 MAIN ST<br>SPRINGFIELD"); `postal_address_pattern`, a regular expression,
    matches case-insensitively against the text with whitespace collapsed. An invalid
    pattern raises `re.error` (validate it when the account sets it).
    """
    if category != "marketing":
        return ALLOW
    address = words(postal_address or "")
    if address and _words_view_of(text).has_phrase(address):
        return ALLOW
    if postal_address_pattern:
        collapsed = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text))
        if _compiled_pattern(postal_address_pattern).search(collapsed):
            return ALLOW
    if not address and not postal_address_pattern:
        detail = "the account has no postal address, which every marketing email must carry"
    else:
        detail = "a marketing email must carry the sender's physical postal address"
    return Reject(CODE_POSTAL_ADDRESS_MISSING, RULE_CONTENT, detail)


_PLACEHOLDER = re.compile(r"\{\{\s*unsubscribe_url\s*\}\}")
_LINK = r"(?:https?://|mailto:|www\.)[^\s<>\"']+"
_UNSUBSCRIBE_URL = re.compile(r"(?:https?://|mailto:|www\.)[^\s<>\"']*(?:unsub|opt-?_?out)")
_UNSUBSCRIBE_WORDS = (
    r"(?:unsubscribe|unsub|opt[ -]?out|manage (?:your )?(?:email )?preferences|"
    r"email preferences|desabonner|desinscribir(?:se|te)?|darse de baja|darte de baja|"
    r"abmelden|abbestellen|descadastrar)"
)
# The wording before the link ("To unsubscribe, click here: https://...") or right after it
# (<a href="https://...">Unsubscribe</a>).
_UNSUBSCRIBE_NEAR_LINK = re.compile(
    rf"{_UNSUBSCRIBE_WORDS}.{{0,150}}?{_LINK}|{_LINK}.{{0,80}}?{_UNSUBSCRIBE_WORDS}",
    re.DOTALL,
)


def check_unsubscribe_link(raw: str, *, category: Category) -> Verdict:
    """A marketing email must carry an unsubscribe link.

    `raw` is the email as written (text and HTML with its tags, so `href`s count). Accepted:
    the `{{unsubscribe_url}}` placeholder (the email channel fills it with the recipient's
    one-click unsubscribe URL, the same as the List-Unsubscribe header); a URL with
    "unsub" or "opt-out" in it; or a URL within a sentence of unsubscribe wording (English,
    French, Spanish, German, Portuguese).
    """
    if category != "marketing":
        return ALLOW
    folded = _folded_of(raw)
    # Each search is skipped when a literal it needs is missing: "{{", "unsub" or "opt", a
    # link's "://", "mailto:" or "www.".
    fast = _fast_paths
    if (
        ((not fast or "{{" in folded) and _PLACEHOLDER.search(folded))
        or ((not fast or "unsub" in folded or "opt" in folded) and _UNSUBSCRIBE_URL.search(folded))
        or (
            (not fast or "://" in folded or "mailto:" in folded or "www." in folded)
            and _UNSUBSCRIBE_NEAR_LINK.search(folded)
        )
    ):
        return ALLOW
    detail = f"a marketing email must carry an unsubscribe link (or {UNSUBSCRIBE_PLACEHOLDER})"
    return Reject(CODE_UNSUBSCRIBE_LINK_MISSING, RULE_CONTENT, detail)


# --- the content gate ----------------------------------------------------------------------


def check_content(
    body: str,
    *,
    channel: Channel,
    category: Category,
    policy: ContentPolicy,
    first_contact: bool,
    subject: str | None = None,
    html_body: str | None = None,
) -> ContentCheck:
    """Every content rule for one message, in the order of the module docstring.

    The first rejection is the answer; flags raised before it are dropped with the message.
    """
    if not subject and not html_body:  # the common case: "\n".join([body]) is body
        visible = _Body(body)
    else:
        shown = _visible_html(html_body) if html_body else None
        visible = _Body("\n".join(part for part in (subject, body, shown) if part))
    # Without HTML the two are the same text: fold it once.
    raw = (
        _Body("\n".join(part for part in (subject, body, html_body) if part))
        if html_body
        else visible
    )
    verdict = check_forbidden_content(visible, categories=policy.forbidden_categories)
    if isinstance(verdict, Reject):
        return ContentCheck(verdict)
    links = check_link_shorteners(
        raw, policy=policy.shortener_policy, extra_domains=policy.extra_shorteners
    )
    if isinstance(links.verdict, Reject):
        return links
    required = policy.require_opt_out_on_first_contact
    if channel in ("sms", "mms"):
        verdict = check_sender_identification(
            visible,
            category=category,
            brand=policy.brand,
            first_contact=first_contact,
            require_on_first_contact=required,
        )
        if not isinstance(verdict, Reject):
            verdict = check_opt_out_language(
                visible,
                category=category,
                first_contact=first_contact,
                require_on_first_contact=required,
            )
    elif channel == "email":
        verdict = check_postal_address(
            visible,
            category=category,
            postal_address=policy.postal_address,
            postal_address_pattern=policy.postal_address_pattern,
        )
        if not isinstance(verdict, Reject):
            verdict = check_unsubscribe_link(raw, category=category)
    if isinstance(verdict, Reject):
        return ContentCheck(verdict)
    return links
