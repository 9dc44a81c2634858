"""The SSRF guard: internal addresses, in every disguise, are refused unless the operator allows."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from amnex.webhooks.ssrf import (
    AddressPolicy,
    UnsafeDestination,
    check_url,
    resolve_and_vet,
    url_port,
    vet_ip,
)

STRICT = AddressPolicy()
DEV = AddressPolicy(allow_loopback=True)
PRIVATE_OK = AddressPolicy(allow_private=True)

FORBIDDEN = [
    ("127.0.0.1", "destination_loopback"),
    ("127.255.0.9", "destination_loopback"),
    ("::1", "destination_loopback"),
    ("10.0.0.1", "destination_private"),
    ("172.16.5.4", "destination_private"),
    ("172.31.255.255", "destination_private"),
    ("192.168.1.1", "destination_private"),
    ("100.64.0.1", "destination_private"),
    ("fd12:3456::1", "destination_private"),
    ("fc00::1", "destination_private"),
    ("169.254.1.1", "destination_link_local"),
    ("fe80::1", "destination_link_local"),
    ("fe80::1%eth0", "destination_link_local"),
    ("224.0.0.1", "destination_multicast"),
    ("239.255.255.250", "destination_multicast"),
    ("ff02::1", "destination_multicast"),
    ("0.0.0.0", "destination_unspecified"),  # noqa: S104 - an address to refuse, not to bind
    ("0.1.2.3", "destination_unspecified"),
    ("::", "destination_unspecified"),
    ("255.255.255.255", "destination_reserved"),
    ("240.0.0.1", "destination_reserved"),
    ("192.0.2.10", "destination_reserved"),
    ("198.18.0.1", "destination_reserved"),
    ("2001:db8::1", "destination_reserved"),
    ("fec0::1", "destination_reserved"),
    ("64:ff9b:1::a00:1", "destination_reserved"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "destination_reserved"),
    ("169.254.169.254", "destination_metadata"),
    ("169.254.170.2", "destination_metadata"),
    ("100.100.100.200", "destination_metadata"),
    ("192.0.0.192", "destination_metadata"),
    ("fd00:ec2::254", "destination_metadata"),
    # IPv6 forms that reach an IPv4 address are judged by that address.
    ("::ffff:127.0.0.1", "destination_loopback"),
    ("::ffff:10.0.0.1", "destination_private"),
    ("::ffff:169.254.169.254", "destination_metadata"),
    ("::127.0.0.1", "destination_loopback"),
    ("::10.1.2.3", "destination_private"),
    ("2002:7f00:1::1", "destination_loopback"),
    ("2002:a9fe:a9fe::1", "destination_metadata"),
    ("2002:c0a8:101::", "destination_private"),
    ("64:ff9b::7f00:1", "destination_loopback"),
    ("64:ff9b::a9fe:a9fe", "destination_metadata"),
    ("64:ff9b::c0a8:101", "destination_private"),
]

PUBLIC = [
    "93.184.215.14",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("address", "code"), FORBIDDEN)
def test_internal_addresses_are_refused_by_default(address: str, code: str) -> None:
    with pytest.raises(UnsafeDestination) as caught:
        vet_ip(address, STRICT)

    assert caught.value.code == code


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert vet_ip(address, STRICT) == ipaddress.ip_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"])
def test_dev_policy_allows_loopback_in_any_form(address: str) -> None:
    assert vet_ip(address, DEV)


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.0.1"])
def test_dev_policy_still_refuses_private_networks(address: str) -> None:
    with pytest.raises(UnsafeDestination, match="private"):
        vet_ip(address, DEV)


def test_allowing_private_networks_does_not_allow_loopback_or_link_local() -> None:
    assert vet_ip("10.0.0.1", PRIVATE_OK)
    assert vet_ip("fd12::1", PRIVATE_OK)
    for address in ("127.0.0.1", "169.254.1.1"):
        with pytest.raises(UnsafeDestination):
            vet_ip(address, PRIVATE_OK)


def test_an_allowlisted_network_is_permitted_and_nothing_around_it() -> None:
    policy = AddressPolicy.from_settings(allowed_networks=["10.20.0.0/16", "fd12::/64"])

    assert vet_ip("10.20.3.4", policy)
    assert vet_ip("::ffff:10.20.3.4", policy)
    assert vet_ip("fd12::5", policy)
    with pytest.raises(UnsafeDestination, match="private"):
        vet_ip("10.21.0.1", policy)


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200"])
def test_metadata_services_are_refused_whatever_the_operator_allows(address: str) -> None:
    policy = AddressPolicy.from_settings(
        allow_loopback=True,
        allow_private=True,
        allowed_networks=["169.254.0.0/16", "100.64.0.0/10", "fd00::/8"],
    )

    with pytest.raises(UnsafeDestination) as caught:
        vet_ip(address, policy)
    assert caught.value.code == "destination_metadata"


def test_policies_with_equal_settings_are_equal_and_hashable() -> None:
    first = AddressPolicy.from_settings(allow_loopback=True, allowed_networks=["10.0.0.0/8"])
    second = AddressPolicy.from_settings(allow_loopback=True, allowed_networks=["10.0.0.0/8"])

    assert first == second
    assert len({first, second}) == 1


AddrInfo = tuple[Any, Any, Any, str, tuple[Any, ...]]


def answer(*addresses: str) -> list[AddrInfo]:
    infos: list[AddrInfo] = []
    for address in addresses:
        if ":" in address:
            infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, 443, 0, 0)))
        else:
            infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 443)))
    return infos


class FakeResolver:
    """Answers for named hosts; counts the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: Any, **kwargs: Any) -> list[AddrInfo]:
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer(*self.answers[host])


@pytest.fixture
async def resolver(monkeypatch: pytest.MonkeyPatch) -> FakeResolver:
    """The running loop's resolver, replaced by a fake (the guard asks the loop)."""
    fake = FakeResolver({})
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake)
    return fake


async def test_a_host_with_only_public_addresses_is_returned_in_order(
    resolver: FakeResolver,
) -> None:
    resolver.answers["hook.example"] = ["93.184.215.14", "2606:4700::1", "93.184.215.14"]

    assert await resolve_and_vet("hook.example", 443, STRICT) == [
        "93.184.215.14",
        "2606:4700::1",
    ]


async def test_one_internal_address_among_public_ones_refuses_the_host(
    resolver: FakeResolver,
) -> None:
    resolver.answers["mixed.example"] = ["93.184.215.14", "10.0.0.1"]

    with pytest.raises(UnsafeDestination) as caught:
        await resolve_and_vet("mixed.example", 443, STRICT)
    assert caught.value.code == "destination_private"
    assert "mixed.example resolves to 10.0.0.1" in caught.value.detail


async def test_a_host_resolving_to_a_metadata_address_is_refused(resolver: FakeResolver) -> None:
    resolver.answers["metadata.example"] = ["169.254.169.254"]

    with pytest.raises(UnsafeDestination) as caught:
        await resolve_and_vet("metadata.example", 80, DEV)
    assert caught.value.code == "destination_metadata"


async def test_an_unknown_host_is_unresolvable(resolver: FakeResolver) -> None:
    with pytest.raises(UnsafeDestination) as caught:
        await resolve_and_vet("nowhere.example", 443, STRICT)
    assert caught.value.code == "destination_unresolvable"


async def test_an_empty_answer_is_unresolvable(resolver: FakeResolver) -> None:
    resolver.answers["empty.example"] = []

    with pytest.raises(UnsafeDestination, match="no addresses"):
        await resolve_and_vet("empty.example", 443, STRICT)


async def test_ip_literals_are_vetted_without_asking_dns(resolver: FakeResolver) -> None:
    assert await resolve_and_vet("127.0.0.1", 80, DEV) == ["127.0.0.1"]
    with pytest.raises(UnsafeDestination, match="loopback"):
        await resolve_and_vet("::1", 80, STRICT)
    assert resolver.asked == []


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://hook.example/", "url_invalid"),
        ("file:///etc/passwd", "url_invalid"),
        ("hook.example/path", "url_invalid"),
        ("https:///path", "url_invalid"),
        ("https://user:pass@hook.example/", "url_invalid"),
        ("https://token@hook.example/", "url_invalid"),
        ("https://hook.example:0/", "url_invalid"),
        ("https://hook.example:99999/", "url_invalid"),
        ("https://hook example/", "url_invalid"),
        ("https://hook.example/\n", "url_invalid"),
        ("https://2130706433/", "url_invalid"),
        ("https://0x7f.0.0.1/", "url_invalid"),
        ("https://127.1/", "url_invalid"),
        ("https://" + "a" * 2100 + ".example/", "url_invalid"),
        ("http://hook.example/", "url_not_https"),
    ],
)
def test_malformed_urls_are_refused_with_a_stable_code(url: str, code: str) -> None:
    with pytest.raises(UnsafeDestination) as caught:
        check_url(url, require_https=True)

    assert caught.value.code == code


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://hook.example/events?x=1", 443),
        ("https://Hook.Example:8443/", 8443),
        ("https://bücher.example/", 443),
        ("https://[2606:4700::1]/", 443),
        ("https://93.184.215.14:9000/", 9000),
        ("http://localhost:8000/hook", 8000),
    ],
)
def test_well_formed_urls_pass_with_their_port(url: str, port: int) -> None:
    parsed = check_url(url, require_https=url.startswith("https"))

    assert url_port(parsed) == port


def test_plain_http_is_accepted_when_https_is_not_required() -> None:
    assert check_url("http://hook.example/", require_https=False).scheme == "http"
