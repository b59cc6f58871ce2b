"""A pure-Python data pump: moves bytes between socket pairs with splice(2).

One thread, one epoll set, any number of pairs. Each direction has its own
pipe: bytes are spliced from the source socket into the pipe and from the pipe
into the destination socket, so they never enter Python. End of file on one
side becomes ``shutdown(SHUT_WR)`` on the other once the pipe is drained (half
close passes through); a reset or write error on either side resets the other.
A pair is closed when both directions have finished.

The native helper (``native/``) does the same job in its own process; this pump
stands in where the helper was not built (``streams_trace.relay.best_pump``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, missing from Python < 3.10's fcntl on some builds
PIPE_SIZE = 256 * 1024
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
SIOCATMARK = 0x8905  # <asm/sockios.h>: whether the next byte is the urgent one
# Bytes one pair may move per wake-up before others get their turn.
FAIR_SHARE = 4 * PIPE_SIZE
_RESET_ERRORS = (
    errno.ECONNRESET,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ECONNABORTED,
)

# Called when a pair finishes: bytes a->b, bytes b->a, and whether it ended in a reset.
DoneCallback = Callable[[int, int, bool], None]


@dataclass
class _Direction:
    source: socket.socket
    sink: socket.socket
    pipe_read: int
    pipe_write: int
    buffered: int = 0
    moved: int = 0
    eof: bool = False
    # The last read found no room or no data while bytes waited in the pipe: a full
    # pipe cannot be told apart from an empty socket, so reading waits for a drain.
    stalled: bool = False
    finished: bool = False  # EOF seen and forwarded as shutdown(SHUT_WR)


class _Pair:
    def __init__(self, a: socket.socket, b: socket.socket, on_done: DoneCallback | None):
        self.a, self.b = a, b
        self.on_done = on_done
        self.forward = _Direction(a, b, *_make_pipe())
        try:
            self.backward = _Direction(b, a, *_make_pipe())
        except OSError:
            os.close(self.forward.pipe_read)
            os.close(self.forward.pipe_write)
            raise
        self.reset = False
        # Sockets that reported EPOLLHUP without an error (shut down both ways), and
        # those in the epoll set now: see _Pair.wanted.
        self.hung_up: set[socket.socket] = set()
        self.registered: set[socket.socket] = set()

    def directions_of(self, sock: socket.socket) -> tuple[_Direction, _Direction]:
        """The direction ``sock`` sends into and the one it receives from."""
        return (self.forward, self.backward) if sock is self.a else (self.backward, self.forward)

    def wanted(self, sock: socket.socket) -> bool:
        """Whether ``sock`` belongs in the epoll set.

        A socket shut down both ways reports EPOLLHUP on every wait whatever the
        interest (level triggered). Once nothing more can happen on it, or while it
        waits for nothing (its bytes wait for the other side's pipe to drain, which
        is signalled on the other socket), it leaves the set, else the loop would
        spin at full speed.
        """
        out, into = self.directions_of(sock)
        if out.eof and into.finished:
            return False
        return not (sock in self.hung_up and self.events_for(sock) == 0)

    @property
    def finished(self) -> bool:
        return self.reset or (self.forward.finished and self.backward.finished)

    def events_for(self, sock: socket.socket) -> int:
        """What to wait for on ``sock``: readable if it may send, writable if bytes wait for it."""
        out, into = self.directions_of(sock)
        events = 0
        if not out.eof and not out.stalled and out.buffered < PIPE_SIZE:
            events |= select.EPOLLIN
        if into.buffered:
            events |= select.EPOLLOUT
        return events

    def close(self, cut: bool = False) -> None:
        """Close both sides; ``cut``: the pump stops with the pair still open, and a side
        that still had bytes or its end of file to come gets a reset (its stream is
        incomplete), while a side whose direction had finished keeps what is queued."""
        for direction in (self.forward, self.backward):
            os.close(direction.pipe_read)
            os.close(direction.pipe_write)
        # SO_LINGER 0 (armed by take_for_pump) makes close() send a reset, so a reset
        # passes through; a side whose stream is complete is disarmed, and keeps what is
        # queued for it.
        for sock, toward in ((self.a, self.backward), (self.b, self.forward)):
            reset = self.reset or (cut and not toward.finished)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", reset, 0))
        self.a.close()
        self.b.close()


def take_for_pump(sock: socket.socket) -> None:
    """Set what a pump needs on a socket it takes (both pumps, before any byte moves).

    SO_LINGER 0, armed: if the process carrying it dies (SIGKILL, the OOM killer, a
    crash), the kernel's close resets the stream rather than ending it as if complete;
    a pair that ends by itself disarms it before closing. SO_OOBINLINE: an urgent byte
    (telnet, FTP's ABOR) stays in the stream, in its place: splice stops at the urgent
    mark as at an end of file, and the pump moves that byte itself (see _urgent_byte).
    """
    for option, value in ((socket.SO_LINGER, struct.pack("ii", 1, 0)),
                          (socket.SO_OOBINLINE, 1)):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, value)


def _urgent_byte(direction: _Direction) -> bool:
    """After splice said 0: move the urgent byte it stopped at into the pipe, and say
    True; False when it is the real end of file."""
    try:
        at_mark = fcntl.ioctl(direction.source.fileno(), SIOCATMARK, b"\0" * 4)
        if not struct.unpack("i", at_mark)[0]:
            return False
        byte = direction.source.recv(1, socket.MSG_DONTWAIT)
    except OSError:
        return False
    if not byte:
        return False
    os.write(direction.pipe_write, byte)  # there is room: the caller checked
    return True


def close_with_reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer sees a reset rather than an orderly end: a
    stream that ends here is incomplete, and must not look finished."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _make_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # keep the default size when the system limit is lower
    return read_end, write_end


def _move(direction: _Direction) -> None:
    """Move what can move now in one direction, without blocking."""
    budget = FAIR_SHARE
    while budget > 0:
        progress = 0
        if not direction.eof and direction.buffered < PIPE_SIZE:
            try:
                count = os.splice(
                    direction.source.fileno(),
                    direction.pipe_write,
                    PIPE_SIZE - direction.buffered,
                    flags=SPLICE_FLAGS,
                )
            except BlockingIOError:
                count = -1
                direction.stalled = direction.buffered > 0
            if count == 0 and _urgent_byte(direction):
                count = 1
            if count == 0:
                direction.eof = True
            elif count > 0:
                direction.buffered += count
                direction.moved += count
                progress += count
        if direction.buffered:
            try:
                count = os.splice(
                    direction.pipe_read,
                    direction.sink.fileno(),
                    direction.buffered,
                    flags=SPLICE_FLAGS,
                )
            except BlockingIOError:
                count = 0
            direction.buffered -= count
            progress += count
            if count:
                direction.stalled = False
        if direction.eof and not direction.buffered and not direction.finished:
            direction.finished = True
            try:
                direction.sink.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    raise
        if not progress:
            return
        budget -= progress


class SplicePump:
    """Carries bytes both ways for many socket pairs on one background thread."""

    name = "python-splice"

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._incoming: queue.SimpleQueue[_Pair] = queue.SimpleQueue()
        self._by_fd: dict[int, tuple[_Pair, socket.socket]] = {}
        self._pairs: set[_Pair] = set()
        self._stopping = False
        self._closed = False
        self._ending = False  # end_when_sent was called
        self._ended_now: set[int] = set()  # descriptors whose pair ended in this epoll batch
        self._thread = threading.Thread(target=self._run, name="splice-pump", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Pairs still carrying data."""
        return len(self._pairs) + self._incoming.qsize()

    def add(self, a: socket.socket, b: socket.socket, on_done: DoneCallback | None = None) -> None:
        """Take ownership of two connected sockets and join them until both ends finish."""
        a.setblocking(False)
        b.setblocking(False)
        take_for_pump(a)
        take_for_pump(b)
        try:
            pair = _Pair(a, b, on_done)
        except OSError as exc:
            # No pipes (out of descriptors): fail this connection visibly, as a reset.
            log.warning("relay error: cannot join a connection pair: %s", exc)
            close_with_reset(a)
            close_with_reset(b)
            _report(on_done, 0, 0, True)
            return
        self._incoming.put(pair)
        self._wake()

    def end_when_sent(self) -> None:
        """From now on, close each pair as soon as its ``a`` side has finished sending.

        For the end of a run, when the process behind every ``a`` has gone: ``b``
        then gets all ``a`` sent and its end of file, and ``a`` a reset, for nothing
        can reach it any more; a peer that keeps its side open but idle (a
        keep-alive) no longer holds the pair. ``active`` says when all have ended.
        """
        self._ending = True
        self._wake()

    def close(self) -> None:
        """Stop the thread and close every pair it still holds, by a reset: bytes still in
        flight are lost, and an end of file would pass the stream off as complete.
        Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wake()
        self._thread.join()
        while not self._incoming.empty():
            pair = self._incoming.get()
            pair.reset = True
            pair.close()
            _report(pair.on_done, 0, 0, True)
        for pair in list(self._pairs):
            self._finish(pair, cut=True)
        self._epoll.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            pass  # already awake

    def _run(self) -> None:
        while not self._stopping:
            self._ended_now.clear()
            for fd, events in self._epoll.poll():
                if fd in self._ended_now:
                    # Its pair ended earlier in this batch, and a pair taken in since
                    # may have the same number: the event is not that pair's.
                    continue
                if fd == self._wake_read:
                    self._drain_wakeups()
                    continue
                entry = self._by_fd.get(fd)
                if entry is not None and entry[0] in self._pairs:
                    self._service(entry[0], entry[1], events)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while not self._incoming.empty():
            pair = self._incoming.get()
            self._pairs.add(pair)
            for sock in (pair.a, pair.b):
                self._by_fd[sock.fileno()] = (pair, sock)
                self._epoll.register(sock.fileno(), 0)
                pair.registered.add(sock)
            self._service(pair)
        if self._ending:  # pairs whose a side finished earlier wait for nothing now
            for pair in [each for each in self._pairs if each.forward.finished]:
                self._finish(pair, cut=True)

    def _service(
        self, pair: _Pair, sock: socket.socket | None = None, events: int = 0
    ) -> None:
        try:
            _move(pair.forward)
            _move(pair.backward)
        except OSError as exc:
            if exc.errno not in _RESET_ERRORS:
                log.warning("relay error: %s", exc)
            pair.reset = True
        if sock is not None and not pair.reset and events & (select.EPOLLERR | select.EPOLLHUP):
            # No read or write surfaced it (this side's directions may be over): an
            # error means the peer reset (ECONNRESET, or EPIPE after its FIN).
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                pair.reset = True
            elif events & select.EPOLLHUP:
                pair.hung_up.add(sock)
        if pair.finished:
            self._finish(pair)
            return
        if self._ending and pair.forward.finished:
            self._finish(pair, cut=True)
            return
        for each in (pair.a, pair.b):
            if not pair.wanted(each):
                if each in pair.registered:
                    self._epoll.unregister(each.fileno())
                    pair.registered.discard(each)
            elif each in pair.registered:
                self._epoll.modify(each.fileno(), pair.events_for(each))
            else:
                self._epoll.register(each.fileno(), pair.events_for(each))
                pair.registered.add(each)

    def _finish(self, pair: _Pair, cut: bool = False) -> None:
        self._pairs.discard(pair)
        for sock in (pair.a, pair.b):
            fd = sock.fileno()
            if fd >= 0:
                self._by_fd.pop(fd, None)
                self._ended_now.add(fd)
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)
        pair.close(cut)
        _report(pair.on_done, pair.forward.moved, pair.backward.moved, pair.reset or cut)


def _report(on_done: DoneCallback | None, forward: int, backward: int, reset: bool) -> None:
    """Tell the owner a pair ended; its callback failing must not stop the pump thread."""
    if on_done is None:
        return
    try:
        on_done(forward, backward, reset)
    except Exception:
        log.exception("relay: a connection's done-callback failed")
