"""Webhooks: the SSRF guard, which decides whether a client's URL may be called at all.

Design note. A webhook URL is chosen by a client, so without a guard the sender is a proxy
into the operator's network. `check_url` refuses malformed URLs (and plain HTTP outside dev
mode); `resolve_and_vet` resolves the host once and refuses it when any address is loopback,
private (RFC 1918, CGNAT, ULA), link-local, multicast, unspecified, reserved, or a cloud
metadata service, also when one of those hides inside an IPv6 form (IPv4-mapped,
IPv4-compatible, 6to4, NAT64). Refusing the host when any one address is bad, rather than
skipping that address, keeps a client from mixing a public address in to get past the check.
The client then connects to the vetted addresses only (`client.py`), so a DNS answer that
changes between the check and the connection (rebinding) changes nothing.

The operator may allow loopback (`amnex dev`), private networks, or named networks; metadata
addresses are never allowed, as no webhook receiver lives there.

    UnsafeDestination(code, detail)
        url_invalid, url_not_https                          (check_url)
        destination_unresolvable                            (resolve_and_vet: DNS failed)
        destination_metadata, destination_loopback, destination_private,
        destination_link_local, destination_multicast, destination_unspecified,
        destination_reserved                                (vet_ip)
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048

URL_INVALID = "url_invalid"
URL_NOT_HTTPS = "url_not_https"
DESTINATION_UNRESOLVABLE = "destination_unresolvable"
DESTINATION_METADATA = "destination_metadata"
DESTINATION_LOOPBACK = "destination_loopback"
DESTINATION_PRIVATE = "destination_private"
DESTINATION_LINK_LOCAL = "destination_link_local"
DESTINATION_MULTICAST = "destination_multicast"
DESTINATION_UNSPECIFIED = "destination_unspecified"
DESTINATION_RESERVED = "destination_reserved"


class UnsafeDestination(Exception):
    """A URL or address the sender refuses to call; `code` is stable, `detail` explains."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """What the operator allows beyond public addresses. Hashable, so pools can key on it."""

    allow_loopback: bool = False
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(
        cls,
        *,
        allow_loopback: bool = False,
        allow_private: bool = False,
        allowed_networks: Iterable[str] = (),
    ) -> AddressPolicy:
        """A policy from configuration text such as `["10.20.0.0/16", "fd12::/64"]`."""
        return cls(
            allow_loopback=allow_loopback,
            allow_private=allow_private,
            allowed_networks=tuple(ipaddress.ip_network(text) for text in allowed_networks),
        )


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS VPC DNS
        "169.254.169.123",  # AWS time sync
        "169.254.0.23",  # Tencent Cloud
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS time sync over IPv6
    )
)
UNSPECIFIED = _networks("0.0.0.0/8", "::/128")
LOOPBACK = _networks("127.0.0.0/8", "::1/128")
PRIVATE = _networks("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
LINK_LOCAL = _networks("169.254.0.0/16", "fe80::/10")
MULTICAST = _networks("224.0.0.0/4", "ff00::/8")
# Not covered by `is_global` in every Python version: site-local, local-use NAT64, Teredo.
RESERVED = _networks("240.0.0.0/4", "fec0::/10", "64:ff9b:1::/48", "2001::/32")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _in_any(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form would reach: mapped, compatible, 6to4 or NAT64."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _category(ip: IPAddress) -> str | None:
    """The forbidden category of one address, or None when it is public."""
    if ip in METADATA_ADDRESSES:
        return DESTINATION_METADATA
    for networks, code in (
        (UNSPECIFIED, DESTINATION_UNSPECIFIED),
        (LOOPBACK, DESTINATION_LOOPBACK),
        (PRIVATE, DESTINATION_PRIVATE),
        (LINK_LOCAL, DESTINATION_LINK_LOCAL),
        (MULTICAST, DESTINATION_MULTICAST),
        (RESERVED, DESTINATION_RESERVED),
    ):
        if _in_any(ip, networks):
            return code
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        return _category(inner)
    if not ip.is_global:
        return DESTINATION_RESERVED
    return None


def parse_ip(text: str) -> IPAddress:
    """An address from text, without an IPv6 zone (`fe80::1%eth0` is still link-local)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def vet_ip(ip: IPAddress | str, policy: AddressPolicy) -> IPAddress:
    """The address itself when the policy permits calling it; `UnsafeDestination` otherwise."""
    address = parse_ip(ip) if isinstance(ip, str) else ip
    category = _category(address)
    if category is None:
        return address
    if category == DESTINATION_METADATA:
        raise UnsafeDestination(category, f"{address} is a cloud metadata service")
    inner = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    candidates = [address] if inner is None else [address, inner]
    if any(_in_any(candidate, policy.allowed_networks) for candidate in candidates):
        return address
    if (category == DESTINATION_LOOPBACK and policy.allow_loopback) or (
        category == DESTINATION_PRIVATE and policy.allow_private
    ):
        return address
    label = category.removeprefix("destination_").replace("_", "-")
    raise UnsafeDestination(category, f"{address} is a {label} address")


async def resolve_and_vet(host: str, port: int, policy: AddressPolicy) -> list[str]:
    """Every address `host` resolves to, in resolver order, if the policy permits them all."""
    try:
        literal: IPAddress | None = parse_ip(host)
    except ValueError:
        literal = None
    if literal is not None:
        return [str(vet_ip(literal, policy))]

    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeDestination(DESTINATION_UNRESOLVABLE, f"{host} does not resolve") from exc

    addresses: list[str] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeDestination(DESTINATION_UNRESOLVABLE, f"{host} has no addresses")
    for address in addresses:
        try:
            vet_ip(address, policy)
        except UnsafeDestination as exc:
            raise UnsafeDestination(exc.code, f"{host} resolves to {exc.detail}") from None
    return addresses


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# A final label of digits or hex is an IPv4 address in disguise (`2130706433`, `0x7f.1`).
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


def _check_host(host: str) -> None:
    try:
        parse_ip(host)
    except ValueError:
        pass
    else:
        return
    if len(host) > 253 or _HOSTNAME.fullmatch(host) is None:
        raise UnsafeDestination(URL_INVALID, "the URL's host is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        raise UnsafeDestination(URL_INVALID, "the URL's host is a malformed IP address")


def check_url(url: str, *, require_https: bool) -> httpx.URL:
    """The parsed URL if its form is acceptable (scheme, host, port, no credentials)."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeDestination(URL_INVALID, f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeDestination(URL_INVALID, f"the URL does not parse: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeDestination(URL_INVALID, "the URL's scheme is not http or https")
    if require_https and parsed.scheme != "https":
        raise UnsafeDestination(URL_NOT_HTTPS, "webhook URLs must use https")
    if not parsed.raw_host:
        raise UnsafeDestination(URL_INVALID, "the URL has no host")
    if parsed.userinfo:
        raise UnsafeDestination(URL_INVALID, "the URL carries credentials")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UnsafeDestination(URL_INVALID, f"port {parsed.port} is out of range")
    _check_host(parsed.raw_host.decode("ascii").lower())
    return parsed


def url_port(url: httpx.URL) -> int:
    """The port a URL names, or its scheme's default."""
    if url.port is not None:
        return url.port
    return 443 if url.scheme == "https" else 80
