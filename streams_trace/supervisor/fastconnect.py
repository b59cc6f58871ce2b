"""The native connect path: a thread of C code (``native/fastconnect.c``) that reads the
user-notification listener for the supervisor.

It carries out each connect to one of the tunnel's addresses by itself (takes the
program's socket, connects it to the initiator access point, runs the LAN handshake,
answers the connect) and sends every other notification, untouched, to the Python
loop, which answers it as it always has. After each connect it did, it sends a record
of the outcome, from which the loop writes the ``-d`` line and keeps the counts.

The library is loaded with ctypes; its thread never touches Python objects. Where it
was not built (no compiler or no OpenSSL headers at install time), the Python path
(``redirect.ConnectRedirect``) does the same work at a higher cost per connect;
$STREAMS_TRACE_CONNECTS chooses: ``auto`` (the default), ``native`` (fail without
it) or ``python``.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..contact import Contact
from ..trace import sockaddr as sa_codec
from ..trace import usernotify
from ..trace.sockaddr import SockAddr

CONNECTS_ENV = "STREAMS_TRACE_CONNECTS"
CHOICES = ("auto", "native", "python")
LIBRARY_PATH = Path(__file__).with_name("libfastconnect.so")  # where setup.py builds it

# Wire format, native byte order, packed: must match native/fastconnect.c.
WIRE_VERSION = 2
MAX_TARGETS = 64
MAX_SECRET = 1024
SETUP_VERSION = 1
SETUP = struct.Struct(f"=II16sI{MAX_SECRET}s16s28sI")
TARGET = struct.Struct("=IHH16s")
OP = struct.Struct("=I")
OP_FORWARD = 1
OP_DONE = 2
DONE = struct.Struct("=IIiiIIiiQI")
MESSAGE_ROOM = 256  # the longest message, with room to spare
STOP_TIMEOUT = 10.0  # s: how long ``close`` waits for the thread to end


class Outcome(enum.IntEnum):
    AUTHENTICATED = 0
    CONNECTED_NO_SECRET = 1
    UNREACHABLE = 2  # detail: errno
    HANDSHAKE_FAILED = 3  # detail: handshake.Failure; peer: the reason a REJECT gave
    IO_FAILED = 4  # detail: errno
    TIMED_OUT = 5
    ABANDONED = 6  # streams-run was stopping


@dataclass(frozen=True, slots=True)
class Done:
    """One connect the native path carried out."""

    tid: int
    fd: int
    result: int  # what the program's connect returned: 0 or -errno
    target: int  # index into the targets given at setup
    outcome: Outcome
    detail: int
    peer: int
    elapsed: float  # seconds
    answered: bool  # False: the thread was gone (killed) before the answer


class Unavailable(Exception):
    """The native path cannot run here; the message says why."""


def choice() -> str:
    value = os.environ.get(CONNECTS_ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise Unavailable(f"${CONNECTS_ENV} is {value!r}; use one of {', '.join(CHOICES)}")
    return value


def check_choice() -> None:
    """Before the program starts: $STREAMS_TRACE_CONNECTS is valid, and where it says
    ``native``, the library loads. Raises Unavailable."""
    if choice() == "native":
        try:
            _load()
        except Unavailable as exc:
            raise Unavailable(f"no native connect path, which ${CONNECTS_ENV} asks for: "
                              f"{exc}") from None


def problem() -> str | None:
    """Why the native connect path cannot run here, or None (for doctor)."""
    try:
        _load()
    except Unavailable as exc:
        return str(exc)
    return None


def _load() -> ctypes.CDLL:
    if not LIBRARY_PATH.exists():
        raise Unavailable(f"{LIBRARY_PATH.name} was not built at install time")
    try:
        library = ctypes.CDLL(str(LIBRARY_PATH))
    except OSError as exc:
        raise Unavailable(f"cannot load {LIBRARY_PATH.name}: {exc}") from None
    library.fastconnect_wire_version.restype = ctypes.c_uint
    library.fastconnect_setup_size.restype = ctypes.c_size_t
    library.fastconnect_start.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_size_t]
    library.fastconnect_start.restype = ctypes.c_int
    library.fastconnect_stop.restype = None
    version, size = library.fastconnect_wire_version(), library.fastconnect_setup_size()
    if (version, size) != (WIRE_VERSION, SETUP.size + MAX_TARGETS * TARGET.size):
        raise Unavailable(f"{LIBRARY_PATH.name} is from another version of streams-trace; "
                          "reinstall it")
    return library


def pack_setup(timeout: float, tunnel_id: bytes, secret: bytes | None,
               access_point: Contact | None, targets: Iterable[tuple[str, int]]) -> bytes:
    """The setup the C side reads. Raises Unavailable where it cannot hold it all.
    Without an access point there are no targets: the thread only lets other
    connects run and passes the rest on."""
    secret = secret or b""
    if len(secret) > MAX_SECRET:
        raise Unavailable(f"a LAN secret over {MAX_SECRET} bytes")
    targets = list(targets)
    if len(targets) > MAX_TARGETS:
        raise Unavailable(f"more than {MAX_TARGETS} tunnel addresses")
    dest4 = dest6 = b""
    if access_point is not None:
        # An IPv4 socket cannot reach an IPv6 access point; an IPv6 one reaches either.
        if ":" not in access_point.host:
            dest4 = sa_codec.encode(SockAddr(socket.AF_INET, access_point.host,
                                             access_point.port))
        dest6 = sa_codec.encode(SockAddr(socket.AF_INET6, access_point.host,
                                         access_point.port))
    packed = [SETUP.pack(SETUP_VERSION, max(1, round(timeout * 1000)), tunnel_id, len(secret),
                         secret, dest4, dest6, len(targets))]
    for host, port in targets:
        address = ipaddress.ip_address(host)
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        packed.append(TARGET.pack(family, port, 0, address.packed))
    packed.append(bytes(TARGET.size * (MAX_TARGETS - len(targets))))
    return b"".join(packed)


class FastConnect:
    """The running native path; ``close`` stops it (before the listener is closed)."""

    def __init__(self, listener: int, setup: bytes) -> None:
        library = _load()
        self._library = library
        self.control, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control.setblocking(False)
        self.ended = False  # the thread has finished (and said so with end of file)
        error = library.fastconnect_start(listener, self._theirs.fileno(), setup, len(setup))
        if error:
            self.control.close()
            self._theirs.close()
            raise Unavailable(f"cannot start its thread: {os.strerror(error)}")

    def fileno(self) -> int:
        return self.control.fileno()

    def read(self) -> Iterator[usernotify.Notification | Done]:
        """What the thread has sent since the last read, one message at a time:
        notifications for Python to answer, and records of connects it did. After
        the last, ``ended`` tells whether the thread has finished."""
        while True:
            try:
                data = self.control.recv(MESSAGE_ROOM)
            except (BlockingIOError, TimeoutError):
                return
            if not data:
                self.ended = True
                return
            (op,) = OP.unpack_from(data)
            if op == OP_FORWARD:
                yield usernotify.decode(data[OP.size:])
            elif op == OP_DONE:
                (_, tid, fd, result, target, outcome, detail, peer, elapsed_ns,
                 answered) = DONE.unpack(data)
                yield Done(tid, fd, result, target, Outcome(outcome), detail, peer,
                           elapsed_ns / 1e9, bool(answered))

    def close(self) -> list[usernotify.Notification | Done]:
        """Stop the thread (it answers what it still holds, ECONNREFUSED, and ends) and
        return what it sent that was not read yet, such as the records of the last
        connects. Reading on until its end of file also frees a send of its that waits
        for room, so it can end."""
        self.control.shutdown(socket.SHUT_WR)  # its end reads end of file
        self.control.settimeout(STOP_TIMEOUT)
        left = list(self.read())  # until its end of file, or STOP_TIMEOUT of silence
        self.control.close()
        if self.ended:  # else its thread may still use its end: left to the process's exit
            self._library.fastconnect_stop()
            self._theirs.close()
        return left
