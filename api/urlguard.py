"""Where a webhook may go: http(s) URLs whose host resolves only to public addresses (SSRF guard).

The host is resolved and every address it resolves to is checked, in whatever spelling the URL used
(decimal, octal or hex IPv4, IPv6, IPv4 inside IPv6: mapped, compatible, 6to4, Teredo, NAT64).
Loopback, private, link-local, shared (CGNAT), reserved, multicast and unspecified addresses are
refused, and so is anything else that is not globally routable, cloud metadata addresses included.
`ARTGEN_WEBHOOK_ALLOW_HOSTS` lets chosen hosts or networks through. The API checks at submit (a 422);
the webhooks worker checks again before each attempt and connects to the address it checked, so a DNS
answer that changes in between (rebinding) cannot send a delivery inside the network.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 2048
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64, well-known and local-use).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# Not globally routable by the registries' tables, yet private in practice: cloud metadata and similar.
_ALWAYS_REFUSED = (
    ipaddress.IPv4Network("169.254.0.0/16"),  # link-local, where 169.254.169.254 (metadata) lives
    ipaddress.IPv6Network("fd00:ec2::/32"),  # AWS's IPv6 metadata (fd00:ec2::254)
    ipaddress.IPv4Network(
        "100.64.0.0/10"
    ),  # shared address space (CGNAT); 100.100.100.200 is Alibaba's metadata
)


class RefusedUrl(ValueError):
    """A webhook URL artgen will not call; the message says why, for a 422."""


@dataclass(frozen=True)
class AllowList:
    """`ARTGEN_WEBHOOK_ALLOW_HOSTS`: host names (exact, case-insensitive) and networks (an address is a /32
    or /128)."""

    hosts: frozenset[str]
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        hosts, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(entry.strip().lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        return host in self.hosts or any(address in network for network in self.networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and which a gateway may deliver to)."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    last32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in prefix for prefix in _NAT64):
        found.append(last32)
    if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed)
        found.append(last32)
    return found


def refusal(address: IPAddress) -> str | None:
    """Why an address may not receive webhooks, or None when it is public."""
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        candidates.extend(_embedded_ipv4(address))
    for candidate in candidates:
        for kind in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved"):
            if getattr(candidate, f"is_{kind}"):
                return f"{address} is a {kind.replace('_', '-')} address"
        if isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local:
            return f"{address} is a site-local address"
        if any(candidate in network for network in _ALWAYS_REFUSED if network.version == candidate.version):
            return f"{address} is a link-local, metadata or shared address"
        if not candidate.is_global:
            return f"{address} is not a public address"
    return None


def split_url(url: str) -> SplitResult:
    """The parts of an acceptable webhook URL; RefusedUrl for anything but plain http(s) to a host."""
    if len(url) > MAX_URL_CHARS:
        raise RefusedUrl(f"the URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedUrl(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise RefusedUrl("only http and https URLs can receive webhooks")
    if not parts.hostname:
        raise RefusedUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("the URL must not carry a user name or password")
    if port == 0:
        raise RefusedUrl("port 0 cannot be called")
    return parts


def resolve(parts: SplitResult, allow: AllowList) -> list[IPAddress]:
    """Every address the URL's host resolves to, each checked; RefusedUrl if any is refused (the
    connection could go to any of them) or if the host does not resolve."""
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedUrl(f"the host {host!r} does not resolve: {exc}") from exc
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    for address in addresses:
        why = refusal(address)
        if why is not None and not allow.allows(host, address):
            raise RefusedUrl(
                f"webhook host {host!r} resolves to {why}; only public addresses can receive webhooks"
            )
    if not addresses:
        raise RefusedUrl(f"the host {host!r} resolves to no address")
    return addresses


def check_webhook_url(url: str, allow: AllowList) -> list[IPAddress]:
    """The addresses `url` may be delivered to; RefusedUrl (with the reason) when it may not be called."""
    return resolve(split_url(url), allow)
