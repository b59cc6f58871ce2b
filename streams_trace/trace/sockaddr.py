"""Decode and encode the sockaddrs a traced program passes to connect, bind and sendto.

Pure functions over bytes: sockaddr_in, sockaddr_in6 (v4-mapped addresses are
reported as IPv4 with ``mapped`` set) and sockaddr_un.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

AF_UNIX, AF_INET, AF_INET6 = socket.AF_UNIX, socket.AF_INET, socket.AF_INET6
SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family (host order), port (network), addr
SOCKADDR_IN6 = struct.Struct("=H2sI16sI")  # family, port, flowinfo, addr, scope_id
MAX_SOCKADDR = 128  # sizeof(struct sockaddr_storage)


@dataclass(frozen=True)
class SockAddr:
    family: int
    host: str = ""  # IPv4 dotted quad for AF_INET and v4-mapped AF_INET6; IPv6 text otherwise
    port: int = 0
    path: str = ""  # AF_UNIX only ("@name" for the abstract namespace)
    mapped: bool = False  # an IPv4 address carried by an AF_INET6 sockaddr
    scope_id: int = 0  # AF_INET6: the interface of a link-local address (fe80::1%eth0)

    @property
    def is_ip(self) -> bool:
        return self.family in (AF_INET, AF_INET6)

    @property
    def key(self) -> tuple[str, int]:
        """(host, port): the same for 1.2.3.4:80 and [::ffff:1.2.3.4]:80."""
        return (self.host, self.port)

    def __str__(self) -> str:
        if self.family == AF_UNIX:
            return f"unix:{self.path}"
        if self.family == AF_INET6 and not self.mapped:
            scope = f"%{self.scope_id}" if self.scope_id else ""
            return f"[{self.host}{scope}]:{self.port}"
        return f"{self.host}:{self.port}"


def decode(data: bytes) -> SockAddr | None:
    """The sockaddr in ``data``, or None when it is too short or of another family."""
    if len(data) < 2:
        return None
    (family,) = struct.unpack_from("=H", data)
    if family == AF_INET and len(data) >= 8:
        port = struct.unpack_from("!H", data, 2)[0]
        return SockAddr(AF_INET, socket.inet_ntop(AF_INET, data[4:8]), port)
    if family == AF_INET6 and len(data) >= 24:
        port = struct.unpack_from("!H", data, 2)[0]
        address = ipaddress.IPv6Address(data[8:24])
        if address.ipv4_mapped is not None:
            return SockAddr(AF_INET6, str(address.ipv4_mapped), port, mapped=True)
        scope_id = struct.unpack_from("=I", data, 24)[0] if len(data) >= 28 else 0
        return SockAddr(AF_INET6, str(address), port, scope_id=scope_id)
    if family == AF_UNIX:
        raw = data[2:]
        if raw[:1] == b"\0":
            return SockAddr(AF_UNIX, path="@" + raw[1:].decode("utf-8", "replace"))
        return SockAddr(AF_UNIX, path=raw.split(b"\0", 1)[0].decode("utf-8", "replace"))
    return SockAddr(family)


def encode(address: SockAddr) -> bytes:
    """The kernel's bytes for ``address`` (an IPv4 host in AF_INET6 becomes v4-mapped)."""
    port = struct.pack("!H", address.port)
    if address.family == AF_INET:
        return SOCKADDR_IN.pack(AF_INET, port, socket.inet_pton(AF_INET, address.host))
    if address.family == AF_INET6:
        host = ipaddress.ip_address(address.host)
        if isinstance(host, ipaddress.IPv4Address):
            host = ipaddress.IPv6Address("::ffff:" + str(host))
        return SOCKADDR_IN6.pack(AF_INET6, port, 0, host.packed, address.scope_id)
    if address.family == AF_UNIX:
        if address.path.startswith("@"):
            return struct.pack("=H", AF_UNIX) + b"\0" + address.path[1:].encode()
        return struct.pack("=H", AF_UNIX) + address.path.encode() + b"\0"
    raise ValueError(f"cannot encode address family {address.family}")


def python_address(address: SockAddr, family: int) -> tuple[str, int] | tuple[str, int, int, int]:
    """``address`` as Python's socket module wants it for a socket of ``family``."""
    if family == AF_INET6:
        host = f"::ffff:{address.host}" if ":" not in address.host else address.host
        return (host, address.port, 0, address.scope_id)
    return (address.host, address.port)


def address_key(address: tuple) -> tuple[str, int]:
    """A Python socket address as (host, port), like ``SockAddr.key`` (v4-mapped as IPv4)."""
    host = str(address[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, int(address[1])
