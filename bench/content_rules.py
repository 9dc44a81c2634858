"""Bench: CPU cost of `amnex.compliance.content.check_content` per message, in µs per call.

The content rules run on the API's accept path for every message, inside a request budget of
about 290 µs of CPU. This prints, for each case, the MEDIAN over `--repeats` timeit repeats of
the time per call (each repeat runs the call enough times to last about `--min-repeat-s`):

    hello         sms, transactional: "Hello"
    otp           sms, transactional: a one-time code
    marketing     sms, marketing, first contact: brand, link and "Reply STOP"
    email-5kb     email, marketing: a ~5 KB HTML newsletter with its text part
    email-500kb   email, marketing: the same newsletter grown to ~500 KB

Every case uses ContentPolicy(brand="Shop", forbidden_categories=US_CATEGORIES) (the emails
also carry the account's postal address, so every rule runs to the end), and each verdict is
printed so a run also shows the cases still pass.

    .venv/bin/python bench/content_rules.py [--repeats 7] [--min-repeat-s 0.2] [--cases ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass

from amnex.compliance.content import US_CATEGORIES, ContentCheck, ContentPolicy, check_content
from amnex.messages.schemas import Category, Channel

ADDRESS = "Shop Inc., 500 Market Street, Suite 200, San Francisco, CA 94105"
SMS_POLICY = ContentPolicy(brand="Shop", forbidden_categories=frozenset(US_CATEGORIES))
EMAIL_POLICY = ContentPolicy(
    brand="Shop", forbidden_categories=frozenset(US_CATEGORIES), postal_address=ADDRESS
)

_PRODUCT = (
    '<tr><td class="product"><a href="https://shop.example/p/{n}?utm_source=newsletter">'
    '<img src="https://cdn.shop.example/img/{n}.jpg" alt="Product {n}" width="180"></a>'
    "<h3>Everyday sneaker, style {n}</h3><p>Breathable mesh, cushioned sole and a price you "
    "will like: now &euro;{price}.99 instead of &euro;{was}.99. Free returns within 30 "
    'days.</p><p><a href="https://shop.example/p/{n}">Shop now &rarr;</a></p></td></tr>\n'
)
_HEAD = (
    '<!doctype html><html><head><meta charset="utf-8"><title>Weekend sale</title>'
    "<style>body{{font-family:Arial,sans-serif}} .product{{padding:12px}}</style></head>"
    '<body><table width="600" align="center"><tr><td><h1>Shop: 20% off all shoes</h1>'
    "<p>Hi there, this weekend only everything in the shoe aisle is 20% off.</p></td></tr>\n"
)
_FOOT = (
    "<tr><td><p>You get this email because you signed up at shop.example.</p>"
    f"<p>{ADDRESS}</p>"
    '<p><a href="{{{{unsubscribe_url}}}}">Unsubscribe</a> &middot; '
    '<a href="https://shop.example/prefs">Email preferences</a></p></td></tr></table>'
    "</body></html>\n"
)


def newsletter(size_bytes: int) -> tuple[str, str]:
    """A marketing email of about `size_bytes` (HTML part plus text part)."""
    html_parts = [_HEAD.format()]
    text_parts = ["Shop: 20% off all shoes this weekend.\n"]
    n = 0
    while sum(map(len, html_parts)) + sum(map(len, text_parts)) < size_bytes - 700:
        n += 1
        html_parts.append(_PRODUCT.format(n=n, price=40 + n % 50, was=50 + n % 50))
        text_parts.append(f"Everyday sneaker, style {n}: https://shop.example/p/{n}\n")
    html_parts.append(_FOOT.format())
    text_parts.append(f"{ADDRESS}\nUnsubscribe: {{{{unsubscribe_url}}}}\n")
    return "".join(text_parts), "".join(html_parts)


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[], ContentCheck]


def _sms(body: str, category: Category) -> Callable[[], ContentCheck]:
    channel: Channel = "sms"
    return lambda: check_content(
        body, channel=channel, category=category, policy=SMS_POLICY, first_contact=True
    )


def _email(size_bytes: int) -> Callable[[], ContentCheck]:
    text, markup = newsletter(size_bytes)
    return lambda: check_content(
        text,
        channel="email",
        category="marketing",
        policy=EMAIL_POLICY,
        first_contact=True,
        subject="Shop: 20% off all shoes this weekend",
        html_body=markup,
    )


CASES = (
    Case("hello", _sms("Hello", "transactional")),
    Case("otp", _sms("Your code is 482913. It expires in 10 minutes.", "transactional")),
    Case(
        "marketing",
        _sms(
            "Shop: 20% off all shoes this weekend at https://shop.example/sale "
            "Reply STOP to opt out",
            "marketing",
        ),
    ),
    Case("email-5kb", _email(5_000)),
    Case("email-500kb", _email(500_000)),
)


def time_per_call_us(call: Callable[[], object], *, repeats: int, min_repeat_s: float) -> float:
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    per_repeat = timer.timeit(number)
    number = max(1, int(number * min_repeat_s / per_repeat)) if per_repeat else number
    runs = timer.repeat(repeat=repeats, number=number)
    return statistics.median(runs) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-repeat-s", type=float, default=0.2)
    parser.add_argument("--cases", default=",".join(case.name for case in CASES))
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON line of the results (bench/quick.py)"
    )
    args = parser.parse_args(argv)
    rows: list[dict[str, object]] = []
    wanted = set(args.cases.split(","))
    out = sys.stdout
    out.write(f"{'case':<12} {'µs/call':>12}  verdict\n")
    for case in CASES:
        if case.name not in wanted:
            continue
        result = case.call()
        code = getattr(result.verdict, "code", "allow")
        us = time_per_call_us(case.call, repeats=args.repeats, min_repeat_s=args.min_repeat_s)
        flags = f" flags={[flag.code for flag in result.flags]}" if result.flags else ""
        out.write(f"{case.name:<12} {us:>12.1f}  {code}{flags}\n")
        out.flush()
        # No baseline is measured here: the figure is an absolute CPU cost per call.
        rows.append({"figure": f"content {case.name}", "value": us, "unit": "µs/call"})
    if args.json:
        out.write(json.dumps({"benchmark": "content_rules", "ok": True, "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
