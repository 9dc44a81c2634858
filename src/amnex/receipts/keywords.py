"""Receipts: what a recipient's reply asks for — opt out, opt back in, help, or nothing.

Pure functions, no I/O, no clock. `classify_reply` reads an inbound SMS and answers with a
`ReplyClassification`: the intent, how it was recognised (`"keyword"` or `"free_text"`) and
what matched (the keyword, or the free-text pattern's name), for the evidence the caller
records with the original text. The caller applies it to the suppression list of the account
that owns the number written to and sends one reply (`opt_out_confirmation`,
`opt_in_confirmation`, `help_reply`).

Normalisation (`amnex.compliance.content.words`): NFKC (fullwidth STOP is STOP),
format characters removed (zero-width spaces and joiners), casefolded, accents on Latin
letters dropped (ARRÊT is ARRET), look-alike Cyrillic and Greek letters unmasked in words
that mix scripts, punctuation, symbols and emoji dropped.

**Keywords.** A reply is a keyword when, once normalised, it is the keyword alone, or the
keyword with only politeness around it ("Stop please", "please STOP", "STOP!!!", "🛑 stop",
"Arrêt svp"), or the keyword repeated ("stop stop"), or the keyword spelt out one letter at a
time when that is the whole message ("S T O P", "s.t.o.p"). Anything more ("Stop by the
store", "stop at 5") is not a keyword and goes to the free-text classifier. Opt-out keywords are
the CTIA/carrier set (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT) with the FCC 2024
additions (REVOKE, OPTOUT, OPT OUT) and the account's own; in other languages: Spanish BAJA,
ALTO, PARAR, CANCELAR; French ARRET (the CWTA's Canadian French keyword) and DESABONNER;
German STOPP, ABMELDEN; Portuguese SAIR, PARAR. Opt-in is START, UNSTOP, YES only, and HELP
is HELP, INFO, and AIDE (CWTA) and AYUDA: a false opt-out costs the recipient one
confirmation and a START, a false opt-in sends messages to someone who asked us to stop, so
only the opt-out list is generous. A keyword in more than one list counts as an opt-out.

**Free text** (FCC 2024 order, 47 CFR 64.1200(a)(10): consent may be revoked by any
reasonable means). English only, opt-out only, by explicit patterns over each clause of
the reply (clauses end at . ! ? ; , : line breaks, dashes, "and/or/but/so/then", and before
"I'll ..."), each pattern anchored at the clause's end so that nothing may follow it but
politeness ("please", "now", "again"):

- stop/quit/cease + texting, messaging, contacting, spamming, bothering, or sending + me or
  messages ("stop texting me", "Stop texting me please", "quit sending these");
- stop/cancel/end + the messages, texts, alerts, reminders, updates ("stop these texts");
- stop getting/receiving + messages ("how do I stop getting these");
- remove/take/delete + me or my number (+ from/off a list) ("remove me from this list",
  "take me off your list", "delete my number"), not "take me off the waitlist";
- unsubscribe/opt out/opt me out (+ me), "I want to unsubscribe", "I want out",
  "I already unsubscribed", "I said stop", "how do I opt out";
- don't/do not/never + text, message, contact (+ me/this number/anymore/again)
  ("don't text me anymore", "do not contact me"), and "I don't want these messages";
- "no more messages", "leave me alone", "wrong number" (whoever consented, it was not this
  person), "lose my number";
- an opt-out keyword standing alone as a clause, with politeness or "I said" around it
  ("wrong number, stop", "No. STOP.", "I said stop"), and a reply that opens with an opt-out
  keyword in capitals ("STOP this is harassment").

Negation turns the stopping patterns off: "don't stop the updates", "please don't remove
me", "I don't want to unsubscribe", "can't stop laughing" are not opt-outs — unless the
negation is rhetorical ("why won't you stop texting me", "if you don't stop texting me").
A question about why something happened ("why did you unsubscribe me") is not a request.
Not opt-outs either: another sense of stop ("when does the bus stop", "I'll stop by
tomorrow", "is this the stop for 5th street"), "keep texting me", "not interested" (a
refusal of an offer, not of the messages), "who is this". The corpus in
`tests/receipts/keyword_corpus.json` is the specification by example.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from amnex.compliance.content import fold, words

__all__ = [
    "DEFAULT_HELP_REPLY",
    "DEFAULT_OPT_IN_CONFIRMATION",
    "DEFAULT_OPT_OUT_CONFIRMATION",
    "HELP_KEYWORDS",
    "NOTHING",
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "ReplyClassification",
    "ReplyIntent",
    "classify_reply",
    "help_reply",
    "opt_in_confirmation",
    "opt_out_confirmation",
]


class ReplyIntent(enum.StrEnum):
    """What a reply asks for."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    NONE = "none"


HowRecognised = Literal["keyword", "free_text"]


@dataclass(frozen=True, slots=True)
class ReplyClassification:
    """The intent of a reply, how it was recognised, and what matched (for the evidence).

    `matched` is the keyword in capitals ("STOP", "OPT OUT", an account's own keyword) or the
    free-text pattern's name ("stop_contacting"); both are None when the intent is NONE.
    """

    intent: ReplyIntent
    how: HowRecognised | None = None
    matched: str | None = None


NOTHING: Final = ReplyClassification(ReplyIntent.NONE)

OPT_OUT_KEYWORDS: Final = frozenset(
    {
        *("stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit"),
        *("revoke", "optout", "opt out"),
        *("baja", "alto", "parar", "cancelar"),  # Spanish
        *("arret", "desabonner"),  # French (accents are dropped: ARRÊT, DÉSABONNER)
        *("stopp", "abmelden"),  # German
        "sair",  # Portuguese (PARAR is in the Spanish line)
    }
)
OPT_IN_KEYWORDS: Final = frozenset({"start", "unstop", "yes"})
HELP_KEYWORDS: Final = frozenset({"help", "info", "aide", "ayuda"})

# Words that may surround a keyword without changing it, in the keywords' languages.
_POLITENESS: Final = frozenset(
    {
        *("please", "pls", "plz", "pleas", "thanks", "thank you", "thankyou", "thx", "ty"),
        *("now", "ok", "okay", "asap", "por favor", "gracias", "merci", "svp"),
        *("s'il vous plait", "s'il te plait", "bitte", "danke", "obrigado", "obrigada"),
        *("grazie", "per favore"),
    }
)
_MAX_PHRASE_WORDS: Final = 3


def _keyword_core(tokens: Sequence[str]) -> tuple[str, ...]:
    """`tokens` without politeness at either end ("please stop thanks" -> ("stop",))."""
    start, end = 0, len(tokens)
    changed = True
    while changed and start < end:
        changed = False
        for size in range(_MAX_PHRASE_WORDS, 0, -1):
            if end - start >= size and " ".join(tokens[start : start + size]) in _POLITENESS:
                start += size
                changed = True
                break
            if end - start >= size and " ".join(tokens[end - size : end]) in _POLITENESS:
                end -= size
                changed = True
                break
    return tuple(tokens[start:end])


def _as_keyword(core: tuple[str, ...], keywords: Collection[str]) -> str | None:
    """The keyword `core` is, alone or repeated ("stop stop"), else None."""
    if not core:
        return None
    for size in range(1, len(core) + 1):
        if len(core) % size:
            continue
        unit = " ".join(core[:size])
        if unit in keywords and core == core[:size] * (len(core) // size):
            return unit
    return None


def _normalised_keywords(extra: Iterable[str]) -> frozenset[str]:
    return frozenset(filter(None, (words(keyword) for keyword in extra)))


def _classify_keyword(
    tokens: Sequence[str],
    *,
    opt_out: Collection[str],
    opt_in: Collection[str],
    help_: Collection[str],
) -> ReplyClassification | None:
    if len(tokens) > 1 and all(len(token) == 1 for token in tokens):
        tokens = ["".join(tokens)]  # "s t o p", spelt out as the whole message
    core = _keyword_core(tokens)
    # The whole reply first: an account's keyword may itself hold a politeness word
    # ("Hilfe bitte"); then the reply without politeness around it.
    for candidate in (tuple(tokens), core):
        for keywords, intent in (
            (opt_out, ReplyIntent.OPT_OUT),
            (opt_in, ReplyIntent.OPT_IN),
            (help_, ReplyIntent.HELP),
        ):
            keyword = _as_keyword(candidate, keywords)
            if keyword is not None:
                return ReplyClassification(intent, "keyword", keyword.upper())
    return None


# --- free text -----------------------------------------------------------------------------

_CLAUSE_BREAK = re.compile(
    r"[.!?;,:\n\u2026]+|\s[-\u2013\u2014]+\s|\b(?:and|or|but|so|then)\b"
    r"|\b(?=(?:i'll|i will|i'm going to|or else)\b)"
)

# Building blocks, over `words()` output (lower case, apostrophes kept inside words).
_ME = r"(?:me|us|this number|this phone|this line|my (?:number|phone|cell|line)|here)"
_TO_ME = rf"(?:to )?{_ME}"
_MESSAGES = (
    r"(?:messages?|msgs?|texts?|text messages?|sms|smses|spam|junk|crap|shit|"
    r"notifications?|alerts?|promos?|promotions?|ads|advertisements?|marketing|offers|"
    r"updates|reminders|emails?)"
)
_DETERMINERS = (
    r"(?:(?:the|these|those|this|your|ur|all|any|all the|all these|all those|all your|"
    r"any more|anymore|more|such|stupid|damn|fucking|annoying|spam|promotional|marketing|"
    r"text|sms) )*"
)
_SOME_MESSAGES = rf"{_DETERMINERS}{_MESSAGES}"
_LIST = (
    rf"{_DETERMINERS}(?:(?:mailing|texting|text|sms|messaging|contact|marketing|email|"
    r"subscriber|distribution|call|calling) )*(?:list|lists|database|db|system|contacts|"
    rf"program|subscription|subscriptions|{_MESSAGES})"
)
_FROM_LIST = rf"(?: (?:from|off|of) {_LIST})?"
_TAIL = (
    r"(?: (?:please|pls|plz|now|already|immediately|asap|thanks|thank you|thx|ok|okay|"
    r"right now|again|anymore|any more|ever again|for good|forever|lol|dude|man|bro|sorry|"
    r"buddy|ty))*"
)
_LEAD = (
    r"(?:(?:please|pls|plz|ok|okay|just|seriously|omg|ugh|hey|hi|hello|yes|yeah|no|nope|"
    r"nah|sorry|dude|bro|so|now|again|i said|i told you|i asked you to|i already said|"
    r"can you|could you|would you|will you) )*"
)
_CORE_KEYWORD = r"(?:stop|stopall|stop all|unsubscribe|unsub|optout|opt out|revoke)"

_FREE_TEXT: Final[Sequence[tuple[str, re.Pattern[str], bool]]] = [
    # (name, pattern, whether a preceding negation cancels it)
    (
        "stop_contacting",
        re.compile(
            r"\b(?:stop|quit|cease)(?: all)? (?:"
            r"(?:texting|txting|messaging|msging|contacting|spamming|bothering|harassing|"
            rf"pestering)(?: {_TO_ME}| {_SOME_MESSAGES})?"
            rf"|(?:sending|send)(?: (?:me|us))?(?: {_SOME_MESSAGES}| (?:these|those|them|this))"
            rf"(?: {_TO_ME})?|sending (?:me|us)){_TAIL}$"
        ),
        True,
    ),
    (
        "stop_messages",
        re.compile(
            rf"\b(?:stop|cancel|end|cease|halt)(?: {_SOME_MESSAGES}(?: {_TO_ME})?"
            rf"|(?: (?:these|those|them|this|this shit|this crap|this spam))){_TAIL}$"
        ),
        True,
    ),
    (
        "stop_receiving",
        re.compile(
            rf"\bstop (?:getting|receiving)(?: {_SOME_MESSAGES}| (?:these|those|them|this))"
            rf"(?: {_TO_ME})?{_TAIL}$"
        ),
        True,
    ),
    (
        "remove_me",
        re.compile(
            r"\b(?:remove|delete|take|erase|drop|scratch) (?:me|us|this number|"
            r"my (?:number|phone number|phone|cell|cell number|name|info|information|"
            r"contact|contact info|details|data))"
            rf"(?: (?:from|off) (?:{_LIST}|here)| off)?{_TAIL}$"
        ),
        True,
    ),
    (
        "unsubscribe",
        re.compile(
            r"\b(?:unsubscribe|unsub|opt(?: me)? out|optout|sign me out|unenroll me|"
            rf"unregister me|count me out)(?: {_ME})?{_FROM_LIST}{_TAIL}$"
        ),
        True,
    ),
    (
        "want_out",
        re.compile(
            r"\b(?:want|wanna|would like|'d like|need|wish|would love|like) (?:to )?(?:be )?"
            r"(?:out|unsubscribed|opted out|removed|taken off|off (?:the|this|your) list)"
            rf"{_FROM_LIST}{_TAIL}$"
        ),
        True,
    ),
    (
        "already_asked",
        re.compile(
            r"\b(?:i|i've|i have|i already|i've already|i have already|already) "
            rf"(?:unsubscribed|opted out|said stop|replied stop|texted stop){_TAIL}$"
        ),
        True,
    ),
    (
        "do_not_contact",
        re.compile(
            r"\b(?:don't|dont|do not|never|please never) (?:ever )?"
            r"(?:text|txt|message|msg|sms|contact|spam|bother|harass)"
            rf"(?: {_TO_ME})?(?: (?:again|anymore|any more|ever again))?{_TAIL}$"
        ),
        False,
    ),
    (
        "do_not_send",
        re.compile(
            rf"\b(?:don't|dont|do not|never) (?:ever )?send(?: (?:me|us))? {_SOME_MESSAGES}"
            rf"(?: {_TO_ME})?{_TAIL}$"
        ),
        False,
    ),
    (
        "do_not_want_messages",
        re.compile(
            r"\b(?:don't|dont|do not|no longer) (?:want|wish|need|like)(?: to)?"
            rf"(?: (?:get|receive|be getting|be receiving))? {_SOME_MESSAGES}"
            rf"(?: {_TO_ME})?{_TAIL}$"
            r"|\b(?:don't|dont|do not|no longer) (?:want|wish) to be "
            rf"(?:contacted|texted|messaged){_TAIL}$"
        ),
        False,
    ),
    ("no_more_messages", re.compile(rf"^{_LEAD}no more {_SOME_MESSAGES}{_TAIL}$"), False),
    ("leave_me_alone", re.compile(rf"\bleave (?:me|us) (?:the fuck )?alone{_TAIL}$"), True),
    (
        "wrong_number",
        re.compile(
            r"\b(?:wrong (?:number|person|#)|not the right (?:number|person))"
            rf"{_TAIL}$"
        ),
        True,
    ),
    ("lose_my_number", re.compile(rf"\b(?:lose|forget) (?:my|this) number{_TAIL}$"), True),
    (
        "keyword_clause",
        re.compile(rf"^{_LEAD}{_CORE_KEYWORD}(?: {_CORE_KEYWORD})*(?: me)?{_TAIL}$"),
        False,
    ),
]

_NEGATIONS: Final = frozenset(
    {
        *("don't", "dont", "not", "never", "can't", "cant", "cannot", "won't", "wont"),
        *("didn't", "didnt", "doesn't", "doesnt", "shouldn't", "wouldn't", "couldn't"),
        *("isn't", "aren't", "ain't", "nor"),
    }
)
_NEGATION_WINDOW_WORDS: Final = 4
# "why won't you stop", "if you don't stop": the negation asks for the stop.
_RHETORICAL: Final = frozenset({"why", "if", "unless"})
# Asking about something that happened: "why did you unsubscribe me", "did you remove me".
_ASKING_ABOUT: Final = frozenset({"why", "did", "didn't", "have", "has"})
_ASKING_MAX_WORDS: Final = 3
_CAPITAL_KEYWORD = re.compile(r"\A\W*(?:STOP|STOPALL|UNSUBSCRIBE|OPTOUT|REVOKE)\b")


def _cancelled(before: Sequence[str], *, negatable: bool) -> bool:
    """Does what precedes a match in its clause turn the request off?"""
    window = before[-_NEGATION_WINDOW_WORDS:]
    negations = [i for i, word in enumerate(window) if word in _NEGATIONS]
    if negations:
        offset = len(before) - len(window) + negations[0]
        rhetorical = any(word in _RHETORICAL for word in before[:offset])
        return negatable and not rhetorical
    return bool(before) and before[0] in _ASKING_ABOUT and len(before) <= _ASKING_MAX_WORDS


def _classify_clause(clause: str) -> str | None:
    for name, pattern, negatable in _FREE_TEXT:
        match = pattern.search(clause)
        if match is None:
            continue
        if _cancelled(clause[: match.start()].split(), negatable=negatable):
            continue
        return name
    return None


def _classify_free_text(original: str, normalised_clauses: Iterable[str]) -> str | None:
    for clause in normalised_clauses:
        name = _classify_clause(clause)
        if name is not None:
            return name
    if _CAPITAL_KEYWORD.match(unicodedata.normalize("NFKC", original)):
        return "capital_keyword"
    return None


def classify_reply(
    text: str,
    *,
    extra_opt_out: Collection[str] = (),
    extra_opt_in: Collection[str] = (),
    extra_help: Collection[str] = (),
) -> ReplyClassification:
    """What an inbound reply asks for: a keyword first, then the free-text opt-out patterns.

    `extra_*` are the account's own keywords (normalised like the reply; a phrase of up to
    three words is fine). See the module docstring for what is and is not recognised.
    """
    opt_out = OPT_OUT_KEYWORDS | _normalised_keywords(extra_opt_out)
    opt_in = (OPT_IN_KEYWORDS | _normalised_keywords(extra_opt_in)) - opt_out
    help_ = (HELP_KEYWORDS | _normalised_keywords(extra_help)) - opt_out - opt_in
    tokens = words(text).split()
    if not tokens:
        return NOTHING
    keyword = _classify_keyword(tokens, opt_out=opt_out, opt_in=opt_in, help_=help_)
    if keyword is not None:
        return keyword
    clauses = (words(part) for part in _CLAUSE_BREAK.split(fold(text)))
    name = _classify_free_text(text, (clause for clause in clauses if clause))
    if name is None:
        return NOTHING
    return ReplyClassification(ReplyIntent.OPT_OUT, "free_text", name)


# --- replies -------------------------------------------------------------------------------

DEFAULT_OPT_OUT_CONFIRMATION: Final = (
    "{brand}: You have been unsubscribed and will receive no more messages. "
    "Reply START to resubscribe."
)
DEFAULT_OPT_IN_CONFIRMATION: Final = (
    "{brand}: You are subscribed again. Msg frequency varies. Msg&data rates may apply. "
    "Reply HELP for help, STOP to opt out."
)
DEFAULT_HELP_REPLY: Final = (
    "{brand}: For help contact {contact}. Msg&data rates may apply. Reply STOP to opt out."
)
# When the account has given no contact at all (it always has an email address, so only a
# caller that passes none gets this).
DEFAULT_HELP_REPLY_NO_CONTACT: Final = (
    "{brand}: Msg&data rates may apply. Msg frequency varies. Reply STOP to opt out."
)


def _render(template: str, *, brand: str, contact: str = "") -> str:
    # Plain replacement, not str.format: an account's text may contain other braces.
    return template.replace("{brand}", brand.strip()).replace("{contact}", contact.strip())


def opt_out_confirmation(brand: str, *, override: str | None = None) -> str:
    """The one reply to an opt-out (CTIA: names the sender, confirms no further messages,
    says how to come back). An account's `override` may use `{brand}`."""
    template = override if override and override.strip() else DEFAULT_OPT_OUT_CONFIRMATION
    return _render(template, brand=brand)


def opt_in_confirmation(brand: str, *, override: str | None = None) -> str:
    """The one reply to an opt-in (CTIA: program name, frequency, "Msg&data rates may
    apply", HELP and STOP instructions). An account's `override` may use `{brand}`."""
    template = override if override and override.strip() else DEFAULT_OPT_IN_CONFIRMATION
    return _render(template, brand=brand)


def help_reply(brand: str, contact: str, *, override: str | None = None) -> str:
    """The reply to HELP (CTIA: the sender, a way to reach them — phone, email or URL —,
    "Msg&data rates may apply", how to opt out). `override` may use `{brand}`, `{contact}`."""
    default = DEFAULT_HELP_REPLY if contact.strip() else DEFAULT_HELP_REPLY_NO_CONTACT
    template = override if override and override.strip() else default
    return _render(template, brand=brand, contact=contact)
