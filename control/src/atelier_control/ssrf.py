"""SSRF guard for URLs the server itself will call (webhook endpoints): DESIGN §4.

A URL passes when its scheme is http or https, it carries no credentials, and every address its host
resolves to is a public (globally routable) unicast address: no loopback, private (RFC 1918, ULA),
link-local (cloud metadata at 169.254.169.254), CGNAT, multicast, reserved, unspecified or
IPv4-mapped/6to4/NAT64 forms of those. Operators may allow-list hosts or networks (``ATELIER_SSRF_ALLOW``:
comma-separated host names, IPs or CIDRs), e.g. an internal receiver or a loopback test server, and may restrict
the ports URLs can name (``ATELIER_WEBHOOK_ALLOWED_PORTS``, e.g. ``443,8443``; empty: any port). The port rule
applies to allow-listed hosts too.

The check runs at registration and again at send time, and the sender connects to the very address
that was checked (see :func:`resolve_checked`), so a DNS answer that changes in between (rebinding)
cannot redirect a request to an internal address. Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from atelier_contracts.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
MAX_URL_LENGTH = 2000

# not is_global, or special purpose, even where Python's table calls them global
_BLOCKED_NETS = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32", "100::/64",
)]


class UnsafeUrl(InvalidInput):
    """The URL may not be called: wrong scheme, credentials, or a non-public address."""

    title = "Unsafe URL"


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks exempt from the address rules (they still need http/https)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, value: str | Iterable[str] | None) -> AllowList:
        items = value.split(",") if isinstance(value, str) else list(value or [])
        hosts: set[str] = set()
        nets: list[IPNetwork] = []
        for raw in items:
            item = raw.strip().lower()
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.rstrip("."))
        return cls(frozenset(hosts), tuple(nets))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


def parse_ports(value: str | Iterable[int | str] | None) -> frozenset[int]:
    """The ports of a comma-separated list such as ``"443, 8443"`` (empty: no restriction)."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    ports: set[int] = set()
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError(f"not a TCP port: {item!r}")
        ports.add(int(item))
    return frozenset(ports)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in ipaddress.ip_network("64:ff9b::/96") or ip in ipaddress.ip_network("::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = _embedded_v4(ip)
        if v4 is not None and ip != ipaddress.IPv6Address("::"):
            return is_public(v4)
    if any(ip.version == n.version and ip in n for n in _BLOCKED_NETS):
        return False
    return bool(ip.is_global) and not ip.is_multicast and not ip.is_reserved


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]).split("%", 1)[0] for info in infos})


@dataclass(frozen=True)
class CheckedUrl:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def check_url(url: str, *, allow: AllowList | None = None, resolver: Resolver | None = None,
              field: str = "url", ports: frozenset[int] | None = None) -> CheckedUrl:
    """Raise :class:`UnsafeUrl` (naming ``field``) unless ``url`` may be called; returns the vetted addresses.

    ``ports``, when not empty, are the only ports the URL may use (its explicit port, else 443/80)."""
    allow = allow or AllowList()
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"the URL is longer than {MAX_URL_LENGTH} characters", field=field)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}", field=field) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl("the URL must start with https:// (or http://)", field=field)
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL must not carry a user name or password", field=field)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("the URL has no host", field=field)
    port = port or (443 if scheme == "https" else 80)
    if ports and port not in ports:
        allowed = ", ".join(str(p) for p in sorted(ports))
        raise UnsafeUrl(f"port {port} is not allowed; webhook URLs may only use the ports {allowed} "
                        "(ATELIER_WEBHOOK_ALLOWED_PORTS)", field=field)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
            if not allow.allows_host(host):
                raise UnsafeUrl(f"{host} is a loopback name; webhooks must reach a public address", field=field)
        try:
            addresses = (resolver or system_resolver)(host, port)
        except (OSError, UnicodeError) as exc:
            raise UnsafeUrl(f"the host {host} does not resolve: {exc}", field=field) from exc
        if not addresses:
            raise UnsafeUrl(f"the host {host} does not resolve", field=field)
    if not allow.allows_host(host):
        for a in addresses:
            ip = ipaddress.ip_address(a)
            if not is_public(ip) and not allow.allows_ip(ip):
                what = "loopback" if ip.is_loopback else "link-local" if ip.is_link_local else \
                    "private" if ip.is_private else "non-public"
                via = "" if literal is not None else f" ({host} resolves to it)"
                raise UnsafeUrl(f"{a} is a {what} address{via}; webhooks must reach a public address "
                                "(operators can allow-list it with ATELIER_SSRF_ALLOW)", field=field)
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


def resolve_checked(url: str, *, allow: AllowList | None = None, resolver: Resolver | None = None,
                    ports: frozenset[int] | None = None) -> CheckedUrl:
    """:func:`check_url` at send time; connect to ``addresses[0]`` so the checked address is the one used."""
    return check_url(url, allow=allow, resolver=resolver, ports=ports)
