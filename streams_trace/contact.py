"""Contact strings: ``HOST:PORT`` pairs naming where something accepts connections.

One parser for every place that takes one: conf files, command-line options and
the gateway. IPv6 literals are written in brackets, ``[::1]:8888``.
"""

from __future__ import annotations

import ipaddress
import random
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

# RFC 1123 host names, plus the underscore some sites use in internal names.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+$")

GLOBUS_NAME_PREFIX = "globus."


class ContactError(ValueError):
    """A contact string that is not HOST:PORT; the message says what is wrong."""


@dataclass(frozen=True, order=True)
class Contact:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) pair for socket calls."""
        return (self.host, self.port)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def overlaps(self, other: Contact) -> bool:
        """Whether a socket listening on one of the two would take connections meant for
        the other: the same port, and the same address or a wildcard one. (A name other
        than localhost counts as itself: telling more would take a lookup.)"""
        if self.port != other.port:
            return False
        mine, theirs = _addresses(self.host), _addresses(other.host)
        return bool(ANY_ADDRESS in mine or ANY_ADDRESS in theirs or mine & theirs)


ANY_ADDRESS = "*"


def _addresses(host: str) -> frozenset[str]:
    """The canonical addresses ``host`` stands for (ANY_ADDRESS for a wildcard)."""
    if host == "localhost":
        return frozenset({"127.0.0.1", "::1"})
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return frozenset({host})
    return frozenset({ANY_ADDRESS if address.is_unspecified else str(address)})


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ContactError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_contact(text: str) -> Contact:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``; raise ContactError with the reason."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ContactError(f"{text!r} is not [IPV6]:PORT")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ContactError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ContactError(f"{text!r} is not HOST:PORT (for example 10.0.2.164:8888)")
        if ":" in host:
            raise ContactError(f"{text!r}: write an IPv6 address in brackets, [{host}]:PORT")
        if not _HOSTNAME.match(host):
            raise ContactError(f"{host!r} is not a valid host name or address")
    return Contact(host.lower(), parse_port(port_text))


def parse_tunnel_id(text: str) -> str:
    """Tunnel IDs are UUIDs; return the canonical lower-case form."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise ContactError(f"{text!r} is not a tunnel ID (a UUID)") from None


def globus_name(tunnel_id: str) -> str:
    """The dummy host name that stands for a tunnel: ``globus.<TUNNEL_ID>``."""
    return GLOBUS_NAME_PREFIX + tunnel_id


_handed_out: set[int] = set()  # by free_port, in this process
_chance = random.Random()  # its own: tests may seed the shared generator


def _ephemeral_ports() -> range:
    """The ports the kernel hands out to bind(port 0) and to outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody uses right now (for demos, tests and benchmarks).

    Taken outside the kernel's ephemeral range where there is room: a port from inside
    it stays free only until some bind to port 0 or outgoing connection happens to get
    it, such as a gateway's own access point (seen in CI, where every connection of a
    test module then went nowhere). Never the same port twice in one process: one handed
    out earlier may be free only because its user has not bound it yet. Where the range
    leaves no room (or none of 64 tries is free), the kernel picks one from the range.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ephemeral = _ephemeral_ports()
    below, above = range(10000, max(10000, ephemeral.start)), range(ephemeral.stop, 65536)
    room = len(below) + len(above)
    for _ in range(64 if room else 0):
        draw = _chance.randrange(room)  # every port outside the range equally likely
        port = below[draw] if draw < len(below) else above[draw - len(below)]
        if port not in _handed_out and _bindable(family, host, port):
            _handed_out.add(port)
            return port
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _bindable(family: int, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
