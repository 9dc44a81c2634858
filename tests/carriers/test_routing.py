"""Carriers: which route and connectors a message gets (pure, table-driven)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from amnex.carriers.routing import RouteEntry, RouteTable

ACCOUNT = "acc_own"
OTHER = "acc_other"
US = "+14155550100"
CHICAGO = "+13125550100"
GB = "+447400123456"
FR = "+33612345678"


def route(
    id: str,
    *connector_ids: str,
    account_id: str | None = None,
    country: str | None = None,
    prefix: str = "",
    priority: int = 0,
    channel: str = "sms",
) -> RouteEntry:
    return RouteEntry(
        id=id,
        channel=channel,
        account_id=account_id,
        country=country,
        prefix=prefix,
        connector_ids=connector_ids or ("con_a",),
        priority=priority,
    )


def table(
    *routes: RouteEntry, enabled: tuple[str, ...] = ("con_a", "con_b", "con_c")
) -> RouteTable:
    return RouteTable(
        routes=routes, enabled_connectors=frozenset(enabled), static_channels=frozenset({"email"})
    )


@dataclass(frozen=True)
class Case:
    routes: tuple[RouteEntry, ...]
    to: str
    expected: str | None
    account_id: str = ACCOUNT
    enabled: tuple[str, ...] = ("con_a", "con_b", "con_c")


CASES = {
    "no routes, no route": Case((), US, None),
    "a platform route matches everything": Case((route("platform"),), FR, "platform"),
    "the account's route beats the platform's": Case(
        (route("platform", prefix="1415"), route("own", account_id=ACCOUNT)), US, "own"
    ),
    "another account's route is not used": Case((route("theirs", account_id=OTHER),), US, None),
    "another account's route leaves the platform's": Case(
        (route("theirs", account_id=OTHER, prefix="1415"), route("platform")), US, "platform"
    ),
    "the longer prefix wins": Case(
        (route("one", prefix="1"), route("area", prefix="1415"), route("all")), US, "area"
    ),
    "a prefix that does not begin the number does not match": Case(
        (route("chicago", prefix="1312"), route("all")), US, "all"
    ),
    "the number's plus is not part of what a prefix matches": Case(
        (route("chicago", prefix="1312"),), CHICAGO, "chicago"
    ),
    "a GB route takes a GB number": Case(
        (route("us", country="US"), route("gb", country="GB")), GB, "gb"
    ),
    "a US route takes a US number": Case(
        (route("us", country="US"), route("gb", country="GB")), US, "us"
    ),
    "a country route matches no other country": Case((route("gb", country="GB"),), FR, None),
    "a country beats no country at the same prefix": Case(
        (route("any"), route("us", country="US")), US, "us"
    ),
    "a longer prefix beats a country": Case(
        (route("us", country="US"), route("area", prefix="1415")), US, "area"
    ),
    "priority breaks a tie": Case(
        (route("low", priority=1), route("high", priority=5), route("zero")), US, "high"
    ),
    "priority does not beat a longer prefix": Case(
        (route("high", priority=100), route("area", prefix="14")), US, "area"
    ),
    "a route whose connectors are all disabled does not match": Case(
        (route("specific", "con_a", "con_b", prefix="1415"), route("fallback", "con_c")),
        US,
        "fallback",
        enabled=("con_c",),
    ),
    "nothing matches when every connector is disabled": Case(
        (route("only"),), US, None, enabled=()
    ),
    "a route of another channel is not used": Case((route("mms", channel="mms"),), US, None),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_best_route(case: Case) -> None:
    routes = table(*case.routes, enabled=case.enabled)

    best = routes.best_route("sms", case.account_id, case.to)

    assert (best.id if best else None) == case.expected
    assert routes.has_route("sms", case.account_id, case.to) is (case.expected is not None)


@pytest.mark.parametrize(
    ("connector_ids", "enabled", "expected"),
    [
        pytest.param(("con_a", "con_b"), ("con_a", "con_b"), ("con_a", "con_b"), id="in-order"),
        pytest.param(("con_b", "con_a"), ("con_a", "con_b"), ("con_b", "con_a"), id="route-order"),
        pytest.param(
            ("con_a", "con_b", "con_c"), ("con_a", "con_c"), ("con_a", "con_c"), id="skip"
        ),
        pytest.param(("con_a",), (), (), id="none-enabled"),
    ],
)
def test_connectors_for_keeps_the_failover_order_and_skips_disabled_ones(
    connector_ids: tuple[str, ...], enabled: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    routes = table(route("r", *connector_ids), enabled=enabled)

    assert routes.connectors_for("sms", ACCOUNT, US) == expected


def test_connectors_for_a_message_nothing_routes_is_empty() -> None:
    assert table(route("gb", country="GB")).connectors_for("sms", ACCOUNT, US) == ()


def test_email_is_routed_by_settings_not_by_the_table() -> None:
    routes = table()

    assert routes.has_route("email", ACCOUNT, "alex@example.com")
    assert routes.best_route("email", ACCOUNT, "alex@example.com") is None
    assert not routes.has_route("sms", ACCOUNT, US)
    assert not RouteTable().has_route("email", ACCOUNT, "alex@example.com")


def test_the_order_routes_are_given_in_does_not_matter() -> None:
    routes = (
        route("platform"),
        route("own", account_id=ACCOUNT),
        route("area", prefix="1415"),
        route("us", country="US", priority=3),
    )

    winners = {table(*order).best_route("sms", ACCOUNT, US) for order in (routes, routes[::-1])}

    assert {w.id for w in winners if w} == {"own"}
