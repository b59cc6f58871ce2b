"""A small DNS responder inside the supervisor, for names only the tunnel knows.

Static programs (Go, musl, static glibc) resolve names without any library we
could hook, but every resolver ends in a UDP datagram to port 53. The
supervisor points the program's DNS sockets at this responder, which answers
``globus.<TUNNEL_ID>`` and the ``--globus-contact`` names with addresses of its
choosing and forwards every other query, unchanged, to the nameserver the
program meant to ask. The program still uses the real name (TLS keeps working).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import selectors
import socket
import struct
import time
from dataclasses import dataclass

from ..trace.sockaddr import SockAddr, address_key, python_address
from .loop import Loop

log = logging.getLogger("streams_trace.run")

HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
QTYPE_A = 1
QTYPE_AAAA = 28
QCLASS_IN = 1
FLAG_QR = 0x8000
FLAG_RD = 0x0100
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800
RCODE_SERVFAIL = 2
ANSWER_TTL = 60
FORWARD_TIMEOUT = 10.0
# Queries forwarded and not yet answered, at most: each holds a socket until its answer
# or FORWARD_TIMEOUT, and a silent nameserver must not run the supervisor out of them.
MAX_PENDING_FORWARDS = 256


@dataclass(frozen=True)
class Question:
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    end: int  # offset just after the question in the query


def parse_question(query: bytes) -> Question | None:
    """The first question of a standard query, or None when it is anything else."""
    if len(query) < HEADER.size:
        return None
    _, flags, qdcount, _, _, _ = HEADER.unpack_from(query)
    if flags & FLAG_QR or flags & OPCODE_MASK or qdcount != 1:
        return None
    labels = []
    offset = HEADER.size
    while True:
        if offset >= len(query):
            return None
        length = query[offset]
        offset += 1
        if length == 0:
            break
        if length > 63 or offset + length > len(query):
            return None  # compression pointers do not occur in a question
        labels.append(query[offset : offset + length].decode("ascii", "replace"))
        offset += length
    if offset + 4 > len(query):
        return None
    qtype, qclass = struct.unpack_from("!HH", query, offset)
    return Question(".".join(labels).lower(), qtype, qclass, offset + 4)


def hosts_file_addresses(name: str, path: str = "/etc/hosts") -> list[str]:
    """The addresses ``path`` gives ``name`` (IPv4-mapped IPv6 ones as IPv4): a program
    that reads the hosts file before asking DNS connects there, never asking us."""
    wanted = name.lower().rstrip(".")
    found = []
    try:
        with open(path, "rb") as hosts:
            lines = hosts.read(1 << 20).decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or wanted not in (field.lower().rstrip(".") for field in fields[1:]):
            continue
        try:
            address = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        found.append(str(address))
    return found


def build_answer(query: bytes, question: Question, ipv4: str | None) -> bytes:
    """A reply to ``query``: one A record for ``ipv4`` if it asked for A, else no data."""
    query_id, flags = struct.unpack_from("!HH", query)
    answers = b""
    if ipv4 is not None and question.qtype == QTYPE_A and question.qclass == QCLASS_IN:
        answers = struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, ANSWER_TTL, 4)
        answers += socket.inet_aton(ipv4)
    reply_flags = FLAG_QR | FLAG_RA | (flags & (FLAG_RD | OPCODE_MASK))
    header = HEADER.pack(query_id, reply_flags, 1, 1 if answers else 0, 0, 0)
    return header + query[HEADER.size : question.end] + answers


def build_failure(query: bytes) -> bytes | None:
    """A SERVFAIL reply to ``query``, or None for what is not a standard query. Every
    resolver then asks its next nameserver at once, as it would on an ICMP refusal."""
    question = parse_question(query)
    if question is None:
        return None
    query_id, flags = struct.unpack_from("!HH", query)
    reply_flags = FLAG_QR | FLAG_RA | (flags & (FLAG_RD | OPCODE_MASK)) | RCODE_SERVFAIL
    return HEADER.pack(query_id, reply_flags, 1, 0, 0, 0) + query[HEADER.size : question.end]


class Responder:
    """Answers the tunnel's names; forwards the rest to each client's own nameserver."""

    def __init__(self, loop: Loop, names: dict[str, str]) -> None:
        self.loop = loop
        self.names = {name.lower().rstrip("."): address for name, address in names.items()}
        self.nameserver_of: dict[tuple[str, int], SockAddr] = {}
        self.sockets: dict[int, socket.socket] = {}
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError:
                continue
            try:
                sock.bind((host, 0))
            except OSError:  # no IPv6 on this node
                sock.close()
                continue
            sock.setblocking(False)
            self.sockets[family] = sock
            loop.watch(sock, selectors.EVENT_READ, functools.partial(self._on_query, sock))
        self.answered = 0
        self.forwarded = 0
        self.pending = 0  # forwarded queries waiting for their answer
        # Relay mode cannot learn a program socket's address (no pidfd_getfd), so each
        # nameserver a program asks gets a socket of its own: what that socket does not
        # answer goes to that nameserver.
        self.dedicated: dict[tuple[int, SockAddr], socket.socket] = {}
        self.nameserver_of_socket: dict[int, SockAddr] = {}

    def address_for(self, family: int, mapped: bool) -> tuple | None:
        """Where a program socket of ``family`` should send its queries, or None."""
        if family == socket.AF_INET6 and not mapped and socket.AF_INET6 in self.sockets:
            host, port = self.sockets[socket.AF_INET6].getsockname()[:2]
            return (host, port, 0, 0)
        if socket.AF_INET not in self.sockets:
            return None
        host, port = self.sockets[socket.AF_INET].getsockname()
        if family == socket.AF_INET6:
            return ("::ffff:" + host, port, 0, 0)
        return (host, port)

    def address_for_nameserver(self, family: int, nameserver: SockAddr) -> SockAddr | None:
        """A responder address (as the program's sockaddr) that forwards to ``nameserver``."""
        own_family = socket.AF_INET6 if family == socket.AF_INET6 and not nameserver.mapped \
            else socket.AF_INET
        key = (own_family, nameserver)
        sock = self.dedicated.get(key)
        if sock is None:
            sock = socket.socket(own_family, socket.SOCK_DGRAM)
            try:
                sock.bind(("::1" if own_family == socket.AF_INET6 else "127.0.0.1", 0))
            except OSError:
                sock.close()
                return None
            sock.setblocking(False)
            self.dedicated[key] = sock
            self.nameserver_of_socket[sock.fileno()] = nameserver
            self.loop.watch(sock, selectors.EVENT_READ, functools.partial(self._on_query, sock))
        host, port = sock.getsockname()[:2]
        return SockAddr(family, str(host), int(port), mapped=family != own_family)

    def is_ours(self, query: bytes) -> bool:
        question = parse_question(query)
        return question is not None and question.name in self.names

    def register(self, client: tuple, nameserver: SockAddr) -> None:
        """Queries from ``client`` (a program's socket) that are not ours go to ``nameserver``."""
        self.nameserver_of[address_key(client)] = nameserver

    def _on_query(self, sock: socket.socket) -> None:
        while True:
            try:
                query, client = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            question = parse_question(query)
            if question is not None and question.name in self.names:
                self.answered += 1
                log.debug("dns: answered %s (type %d) for the tunnel", question.name,
                          question.qtype)
                try:
                    sock.sendto(build_answer(query, question, self.names[question.name]), client)
                except OSError:
                    pass
                continue
            self._forward(sock, query, client)

    def _forward(self, sock: socket.socket, query: bytes, client: tuple) -> None:
        nameserver = self.nameserver_of.get(address_key(client)) or \
            self.nameserver_of_socket.get(sock.fileno())
        if nameserver is None:
            return
        family = socket.AF_INET6 if ":" in nameserver.host else socket.AF_INET

        def reply_to_client(reply: bytes | None) -> None:
            if reply:
                try:
                    sock.sendto(reply, client)
                except OSError:
                    pass

        if self.pending >= MAX_PENDING_FORWARDS:
            log.debug("dns: %d queries already wait on their nameservers; failing one",
                      self.pending)
            reply_to_client(build_failure(query))
            return
        try:
            upstream = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:  # out of descriptors: the program hears so, the supervisor goes on
            reply_to_client(build_failure(query))
            return
        upstream.setblocking(False)
        try:
            # Connected: the kernel drops datagrams from anyone but the nameserver, the
            # check the client can no longer make itself (its answers come from us).
            upstream.connect(python_address(nameserver, family))  # with its scope
            upstream.send(query)
        except OSError:
            upstream.close()
            reply_to_client(build_failure(query))
            return
        self.forwarded += 1
        self.pending += 1

        def relay() -> None:
            try:
                reply = upstream.recv(65535)
            except BlockingIOError:
                return
            except OSError:  # refused (nothing listens there) or unreachable
                reply_to_client(build_failure(query))
                done()
                return
            if reply[:2] != query[:2]:
                return  # not the answer to this query (its id): wait on, up to the timeout
            reply_to_client(reply)
            done()

        def done() -> None:
            self.pending -= 1
            self.loop.unwatch(upstream)
            timer.cancel()
            upstream.close()

        self.loop.watch(upstream, selectors.EVENT_READ, relay)
        timer = self.loop.call_at(time.monotonic() + FORWARD_TIMEOUT, done)

    def close(self) -> None:
        for sock in [*self.sockets.values(), *self.dedicated.values()]:
            self.loop.unwatch(sock)
            sock.close()
