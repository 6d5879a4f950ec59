"""Where the product may connect to: SMTP servers, OAuth2 token servers and the monitor's webhook,
chosen by an administrator.

The same rules are checked twice: when settings are validated (on what was typed, without DNS,
since the server may be offline) and again at connect time, on the addresses a name resolved
to and on the address actually connected to (a name may resolve differently later).

- Link-local and cloud-metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254) are
  refused: a settings form must not become a way to read an instance's cloud credentials.
- Token and authorization URLs, and the monitor's webhook URL, must be https, except to a
  server on loopback (oauth_url_reason).
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

FORBIDDEN_NETWORKS = (
    (ipaddress.ip_network("169.254.0.0/16"), "a link-local address (cloud metadata services live there)"),
    (ipaddress.ip_network("fe80::/10"), "a link-local address"),
    (ipaddress.ip_network("fd00:ec2::254/128"), "a cloud metadata address"),
)


class OutboundRefused(Exception):
    """A connection the rules above do not allow; the message says why."""


def is_loopback_host(host: str) -> bool:
    """localhost, *.localhost (RFC 6761; a trailing dot and case aside), or a loopback address
    (127.0.0.0/8, ::1): where credentials may go without TLS. The one rule for Save and sending."""
    host = (host or "").strip().strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def may_send_credentials(host: str, *, tls: bool) -> bool:
    """Whether a password or token may be sent to `host`: over TLS, or to a server on loopback."""
    return tls or is_loopback_host(host)


def forbidden_reason(address: str) -> str | None:
    """Why connecting to this IP address is refused, or None when it is allowed."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for network, why in FORBIDDEN_NETWORKS:
        if ip.version == network.version and ip in network:
            return f"{ip} is {why}"
    return None


def host_literal_reason(host: str) -> str | None:
    """Why a host as typed is refused (only IP literals can be judged without DNS), or None."""
    return forbidden_reason(host.strip().strip("[]")) if host else None


def oauth_url_reason(url: str) -> str | None:
    """Why a token or authorization URL is refused, or None: https (http only on loopback), no
    link-local or metadata address, no user:password@ part."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an https URL"
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        return "must be https (plain http only to a server on loopback)"
    if parts.username or parts.password:
        return "must not carry a user name or password"
    reason = host_literal_reason(parts.hostname)
    return f"is refused: {reason}" if reason else None


def check_resolved(host: str, port: int) -> None:
    """Resolves `host` and raises OutboundRefused when any of its addresses is forbidden.

    A resolution failure is left to the connect that follows, which reports it as usual.
    """
    literal = host_literal_reason(host)
    if literal:
        raise OutboundRefused(f"connection to {host} refused: {literal}")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return
    check_addresses(host, [info[4][0] for info in infos])


def check_addresses(host: str, addresses) -> None:
    """Raises OutboundRefused when one of the addresses `host` resolved to is forbidden."""
    for address in addresses:
        reason = forbidden_reason(str(address))
        if reason:
            raise OutboundRefused(f"connection to {host} refused: {reason}")


def check_peer(host: str, peername) -> None:
    """Raises OutboundRefused when the socket's peer (as connected) is a forbidden address."""
    if peername:
        check_addresses(host, [peername[0]])
