"""A small DNS responder inside the supervisor, for names only the tunnel knows.

Static programs (Go, musl, static glibc) resolve names without any library we
could hook, but every resolver ends in a UDP datagram to port 53. The
supervisor points the program's DNS sockets at this responder, which answers
``globus.<TUNNEL_ID>`` and the ``--globus-contact`` names with addresses of its
choosing and forwards every other query, unchanged, to the nameserver the
program meant to ask. The program still uses the real name (TLS keeps working).
Resolvers that ask over TCP (``options use-vc``, or a retry after a truncated
answer) reach it too: a TCP connect to a nameserver is pointed at the
responder's stream listener, which does the same per message (RFC 7766 framing).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import ipaddress
import logging
import selectors
import socket
import struct
import time
from dataclasses import dataclass

from ..trace.sockaddr import SockAddr, address_key, python_address
from .loop import Loop, Timer

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
# A DNS-over-TCP connection stops reading from one side while this much waits for the
# other: a program or nameserver that sends faster than the other reads cannot fill us.
STREAM_BUFFER = 1 << 17
LENGTH = struct.Struct("!H")  # the two-byte length before each message over TCP
MAX_STREAMS = 128  # DNS-over-TCP connections open at once; more are closed at once
ACCEPT_RETRY = 0.1  # s before accepting again when out of descriptors
# Stand-ins (a UDP and a TCP socket each) made at most: one per nameserver a program
# sends the tunnel's names to, so a program naming ever new "nameservers" cannot
# run the supervisor out of descriptors.
MAX_STAND_INS = 32


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


def _loopback_socket(family: int, kind: int) -> socket.socket | None:
    """A non-blocking socket of ours on the loopback address of ``family`` (listening, for
    a stream one), or None where the node has no such address (IPv6 turned off)."""
    try:
        sock = socket.socket(family, kind)
    except OSError:
        return None
    try:
        sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def _loopback_pair(family: int, attempts: int = 20) -> tuple[socket.socket, socket.socket] | None:
    """A UDP socket and a listening TCP socket of ours on one loopback port (the kernel
    picks the TCP port; the UDP one may be taken there, then another try)."""
    for _ in range(attempts):
        stream = _loopback_socket(family, socket.SOCK_STREAM)
        if stream is None:
            return None
        try:
            datagram = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            stream.close()
            return None
        try:
            datagram.bind(stream.getsockname()[:2])
        except OSError:
            datagram.close()
            stream.close()
            continue
        datagram.setblocking(False)
        return datagram, stream
    return None


class Responder:
    """Answers the tunnel's names; forwards the rest to each client's own nameserver."""

    def __init__(self, loop: Loop, names: dict[str, str]) -> None:
        self.loop = loop
        self.names = {name.lower().rstrip("."): address for name, address in names.items()}
        # A program socket's address -> the nameserver it asked, per kind (a TCP and a UDP
        # socket may have the same port number).
        self.nameserver_of: dict[int, dict[tuple[str, int], SockAddr]] = {
            socket.SOCK_DGRAM: {}, socket.SOCK_STREAM: {}}
        # (family, SOCK_DGRAM or SOCK_STREAM) -> our socket that program sockets reach
        self.sockets: dict[tuple[int, int], socket.socket] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                sock = _loopback_socket(family, kind)
                if sock is not None:
                    self.sockets[family, kind] = sock
                    self._watch(sock, kind)
        self.answered = 0
        self.forwarded = 0
        self.pending = 0  # forwarded queries waiting for their answer
        self.streams: set[StreamForwarder] = set()
        # Stand-ins, one pair per nameserver, for where a program's socket cannot be
        # registered by its address (relay mode; musl's sendto): what they do not
        # answer goes to that nameserver.
        self.dedicated: dict[tuple[int, SockAddr], tuple[socket.socket, socket.socket]] = {}
        self.nameserver_of_socket: dict[int, SockAddr] = {}
        # A stand-in's (host, port) -> the nameserver it stands in for: what a program
        # that checks where answers come from must be told instead (see redirect.py).
        self.stand_in_for: dict[tuple[str, int], SockAddr] = {}

    def _watch(self, sock: socket.socket, kind: int) -> None:
        on_ready = self._on_query if kind == socket.SOCK_DGRAM else self._on_stream
        self.loop.watch(sock, selectors.EVENT_READ, functools.partial(on_ready, sock))

    def address_for(self, family: int, mapped: bool,
                    kind: int = socket.SOCK_DGRAM) -> tuple | None:
        """Where a program socket of ``family`` and ``kind`` should send its queries, or
        None."""
        if family == socket.AF_INET6 and not mapped and (family, kind) in self.sockets:
            host, port = self.sockets[family, kind].getsockname()[:2]
            return (host, port, 0, 0)
        if (socket.AF_INET, kind) not in self.sockets:
            return None
        host, port = self.sockets[socket.AF_INET, kind].getsockname()
        if family == socket.AF_INET6:
            return ("::ffff:" + host, port, 0, 0)
        return (host, port)

    def address_for_nameserver(self, family: int, nameserver: SockAddr) -> SockAddr | None:
        """An address of ours (as the program's sockaddr of ``family``) that stands in for
        ``nameserver``: UDP and TCP on one port, answering the tunnel's names and passing
        on the rest to ``nameserver``. A resolver told it in place of the nameserver's
        address (musl's, or any in relay mode) may then also fall back to TCP on it.
        None when no stand-in can be made (no loopback, or MAX_STAND_INS reached)."""
        # An IPv6 socket reaches an IPv4 stand-in through a v4-mapped address (unless it
        # is IPV6_V6ONLY): the fallback where the node has no IPv6 loopback.
        own_families = [socket.AF_INET]
        if family == socket.AF_INET6 and not nameserver.mapped:
            own_families.insert(0, socket.AF_INET6)
        for own_family in own_families:
            pair = self.dedicated.get((own_family, nameserver)) or \
                self._add_stand_in(own_family, nameserver)
            if pair is not None:
                host, port = pair[0].getsockname()[:2]
                return SockAddr(family, str(host), int(port), mapped=family != own_family)
        return None

    def _add_stand_in(self, family: int,
                      nameserver: SockAddr) -> tuple[socket.socket, socket.socket] | None:
        if len(self.dedicated) >= MAX_STAND_INS:
            log.debug("dns: %d stand-ins for nameservers made already; no more",
                      len(self.dedicated))
            return None
        pair = _loopback_pair(family)
        if pair is None:
            return None
        self.dedicated[family, nameserver] = pair
        for kind, sock in zip((socket.SOCK_DGRAM, socket.SOCK_STREAM), pair, strict=True):
            self.nameserver_of_socket[sock.fileno()] = nameserver
            self._watch(sock, kind)
        self.stand_in_for[address_key(pair[0].getsockname())] = nameserver
        return pair

    def is_ours(self, query: bytes) -> bool:
        question = parse_question(query)
        return question is not None and question.name in self.names

    def register(self, client: tuple, nameserver: SockAddr,
                 kind: int = socket.SOCK_DGRAM) -> None:
        """Queries from ``client`` (a program's socket of ``kind``) that are not ours go to
        ``nameserver``."""
        self.nameserver_of[kind][address_key(client)] = nameserver

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
        # A stand-in's own nameserver first: the program's socket may also be registered
        # (connected to the shared responder once) for another nameserver.
        nameserver = self.nameserver_of_socket.get(sock.fileno()) or \
            self.nameserver_of[socket.SOCK_DGRAM].get(address_key(client))
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

    def _on_stream(self, listener: socket.socket) -> None:
        """A program's TCP connection to a nameserver, pointed here: serve it."""
        while True:
            try:
                conn, client = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that connection is gone: the next one
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                # Out of descriptors: the connection stays queued, and the listener
                # readable. Look again in a while instead of spinning on it meanwhile.
                self.loop.unwatch(listener)
                self.loop.call_at(time.monotonic() + ACCEPT_RETRY,
                                  functools.partial(self._accept_again, listener))
                return
            if len(self.streams) >= MAX_STREAMS:
                log.debug("dns: %d TCP connections already open; closing one more",
                          len(self.streams))
                self.nameserver_of[socket.SOCK_STREAM].pop(address_key(client), None)
                conn.close()  # the resolver asks its next nameserver
                continue
            self.streams.add(StreamForwarder(self, conn, client, listener.fileno()))

    def _accept_again(self, listener: socket.socket) -> None:
        if listener.fileno() >= 0:  # not closed meanwhile
            self._watch(listener, socket.SOCK_STREAM)

    def nameserver_for_stream(self, client: tuple, listener_fd: int) -> SockAddr | None:
        """The nameserver a TCP connection from ``client`` was meant for (registered by its
        address for this one connection, or by the listener it came to in relay mode)."""
        registered = self.nameserver_of[socket.SOCK_STREAM].pop(address_key(client), None)
        return self.nameserver_of_socket.get(listener_fd) or registered

    def close(self) -> None:
        for stream in list(self.streams):
            stream.close()
        dedicated = [sock for pair in self.dedicated.values() for sock in pair]
        for sock in [*self.sockets.values(), *dedicated]:
            self.loop.unwatch(sock)
            sock.close()


class Upstream(enum.Enum):
    """Our connection to the nameserver, for one of a program's DNS-over-TCP connections."""

    NONE = "not needed yet"
    CONNECTING = "connecting"
    OPEN = "open"
    SENT_ALL = "open, the program's end passed on"
    FAILED = "cannot be reached: SERVFAIL instead"
    CLOSED = "ended"


LIVE = (Upstream.CONNECTING, Upstream.OPEN, Upstream.SENT_ALL)


def take_messages(buffer: bytearray) -> list[bytes]:
    """The whole length-prefixed messages at the start of ``buffer``, taken out of it."""
    messages, offset = [], 0
    while len(buffer) - offset >= LENGTH.size:
        (length,) = LENGTH.unpack_from(buffer, offset)
        end = offset + LENGTH.size + length
        if end > len(buffer):
            break
        messages.append(bytes(buffer[offset + LENGTH.size : end]))
        offset = end
    del buffer[:offset]
    return messages


def framed(message: bytes) -> bytes:
    """``message`` with its two-byte length in front, as DNS over TCP sends it."""
    return LENGTH.pack(len(message)) + message


class StreamForwarder:
    """One DNS-over-TCP connection of a program: each message comes after its two-byte
    length. A query for the tunnel's names is answered here; every other message goes on,
    whole and in order, over our own TCP connection to the nameserver the program meant,
    and its replies come back whole, so an answer of ours never lands inside one of its.
    Each end's close reaches the other, as through any TCP proxy, and a nameserver that
    keeps the program waiting FORWARD_TIMEOUT without a byte loses the connection."""

    def __init__(self, responder: Responder, conn: socket.socket, client: tuple,
                 listener_fd: int) -> None:
        self.responder = responder
        self.loop = responder.loop
        self.conn = conn
        self.client = client
        self.listener_fd = listener_fd
        self.upstream: socket.socket | None = None
        self.state = Upstream.NONE
        self.from_client = bytearray()  # not yet a whole message
        self.from_upstream = bytearray()
        self.to_client = bytearray()
        self.to_upstream = bytearray()
        self.awaiting = 0  # queries passed on and not yet answered
        self.client_ended = False  # the program has sent all it will
        self.closed = False
        self.progress = time.monotonic()  # when the nameserver last moved a byte
        self.waiting = False  # on the nameserver, as of the last _update
        self.timer: Timer | None = None
        conn.setblocking(False)
        self._update()

    # -- the program's side --------------------------------------------------------------

    def _reads_client(self) -> bool:
        return (not self.client_ended and len(self.to_upstream) < STREAM_BUFFER
                and len(self.to_client) < STREAM_BUFFER)

    def _on_client(self) -> None:
        try:
            if self.to_client:
                del self.to_client[: self.conn.send(self.to_client)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the program reset or closed its end: nothing more to do
            self.close()
            return
        if self._reads_client():
            try:
                data = self.conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self.close()
                return
            if data == b"":
                self.client_ended = True  # a partial message left over is never answered
            elif data:
                self.from_client += data
                for message in take_messages(self.from_client):
                    self._on_message(message)
        self._update()

    def _on_message(self, message: bytes) -> None:
        question = parse_question(message)
        if question is not None and question.name in self.responder.names:
            self.responder.answered += 1
            log.debug("dns: answered %s (type %d) for the tunnel, over TCP", question.name,
                      question.qtype)
            self.to_client += framed(build_answer(message, question,
                                                  self.responder.names[question.name]))
            return
        if self.state is Upstream.NONE:
            self._open_upstream()
        if self.state in LIVE:
            self.responder.forwarded += 1
            self.awaiting += 1
            self.to_upstream += framed(message)
        else:  # as over UDP: SERVFAIL sends the resolver to its next nameserver at once
            self._fail(message)

    def _fail(self, message: bytes) -> None:
        failure = build_failure(message)
        if failure is not None:
            self.to_client += framed(failure)

    # -- the nameserver's side -------------------------------------------------------------

    def _open_upstream(self) -> None:
        self.state = Upstream.FAILED
        nameserver = self.responder.nameserver_for_stream(self.client, self.listener_fd)
        if nameserver is None:
            return
        family = socket.AF_INET6 if ":" in nameserver.host else socket.AF_INET
        try:
            upstream = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return
        upstream.setblocking(False)
        error = upstream.connect_ex(python_address(nameserver, family))  # with its scope
        if error not in (0, errno.EINPROGRESS):
            upstream.close()
            return
        self.upstream = upstream
        self.state = Upstream.CONNECTING
        self.progress = time.monotonic()

    def _on_upstream(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        if self.state is Upstream.CONNECTING:
            if upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._upstream_failed()
                self._update()
                return
            self.state = Upstream.OPEN
            self.progress = time.monotonic()
        try:
            if self.to_upstream:
                # Not progress: the kernel takes bytes for a nameserver that hangs too.
                del self.to_upstream[: upstream.send(self.to_upstream)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset: the program hears the end after what came before
            self._drop_upstream(Upstream.CLOSED)
            self._update()
            return
        if len(self.to_client) < STREAM_BUFFER:
            try:
                data = upstream.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":  # the nameserver is done: so is the program, after the rest
                self._drop_upstream(Upstream.CLOSED)
            elif data:
                self.progress = time.monotonic()
                self.from_upstream += data
                for message in take_messages(self.from_upstream):
                    self.to_client += framed(message)
                    # A query may get several messages (a zone transfer): the first
                    # answers it, the rest come while nothing is owed, untimed.
                    self.awaiting = max(self.awaiting - 1, 0)
        self._update()

    def _upstream_failed(self) -> None:
        """The nameserver cannot be reached: SERVFAIL each query it was to get."""
        waiting = take_messages(self.to_upstream)
        self.responder.forwarded -= len(waiting)
        self.awaiting = 0
        self._drop_upstream(Upstream.FAILED)
        for message in waiting:
            self._fail(message)

    def _drop_upstream(self, state: Upstream) -> None:
        if self.upstream is not None:
            self.loop.unwatch(self.upstream)
            self.upstream.close()
            self.upstream = None
        self.state = state

    def _waits_on_upstream(self) -> bool:
        """Whether the nameserver owes something (the connection, answers, or its end)
        that we are ready to read: while the program leaves its answers unread, the
        nameserver's silence is ours."""
        return self.state is Upstream.CONNECTING or (
            self.state in LIVE and (self.awaiting > 0 or self.client_ended)
            and len(self.to_client) < STREAM_BUFFER)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed or not self._waits_on_upstream():
            return
        if time.monotonic() - self.progress < FORWARD_TIMEOUT:
            self._update()  # it moved since: wait on from then
            return
        log.debug("dns: a nameserver kept a TCP query waiting %.0f s; giving up",
                  FORWARD_TIMEOUT)
        if self.state is Upstream.CONNECTING:
            self._upstream_failed()
        else:
            self._drop_upstream(Upstream.CLOSED)
        self._update()

    # -- both --------------------------------------------------------------------------

    def _update(self) -> None:
        """Close when both sides are through; else watch each socket for what it can do
        now, reading from neither while the other side has much to take."""
        if self.closed:
            return
        if not self.to_client and (self.state is Upstream.CLOSED or
                                   (self.client_ended and self.state not in LIVE)):
            self.close()
            return
        if (self.client_ended and self.state is Upstream.OPEN and not self.to_upstream
                and self.upstream is not None):
            with contextlib.suppress(OSError):
                self.upstream.shutdown(socket.SHUT_WR)  # the program's end, passed on
            self.state = Upstream.SENT_ALL
        client_events = selectors.EVENT_WRITE if self.to_client else 0
        if self._reads_client():
            client_events |= selectors.EVENT_READ
        if client_events:
            self.loop.watch(self.conn, client_events, self._on_client)
        else:
            self.loop.unwatch(self.conn)
        if self.upstream is not None:
            upstream_events = selectors.EVENT_WRITE if (
                self.state is Upstream.CONNECTING or self.to_upstream) else 0
            if self.state in (Upstream.OPEN, Upstream.SENT_ALL) and \
                    len(self.to_client) < STREAM_BUFFER:
                upstream_events |= selectors.EVENT_READ
            if upstream_events:
                self.loop.watch(self.upstream, upstream_events, self._on_upstream)
            else:
                self.loop.unwatch(self.upstream)
        waiting = self._waits_on_upstream()
        if waiting and not self.waiting:
            self.progress = time.monotonic()  # its time to answer starts now
        self.waiting = waiting
        if waiting and self.timer is None:
            self.timer = self.loop.call_at(self.progress + FORWARD_TIMEOUT, self._on_timer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._drop_upstream(Upstream.CLOSED)
        # Registered for a connection that never asked anything on: forget it.
        self.responder.nameserver_of[socket.SOCK_STREAM].pop(address_key(self.client), None)
        self.loop.unwatch(self.conn)
        self.conn.close()
        self.responder.streams.discard(self)
