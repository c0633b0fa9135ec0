"""The client's IP: the socket peer, or X-Forwarded-For when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from starlette.requests import HTTPConnection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def parse_proxies(spec: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip())


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_ip(conn: HTTPConnection, trusted_proxies: str) -> str:
    peer = conn.client.host if conn.client else "0.0.0.0"
    proxies = parse_proxies(trusted_proxies)
    if not proxies or not _trusted(peer, proxies):
        return peer
    forwarded = conn.headers.get("x-forwarded-for", "")
    # Walk from the nearest hop back; the first untrusted address is the client.
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not _trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return peer
