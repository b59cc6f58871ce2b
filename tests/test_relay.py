"""Both data pumps through the same tests: the native helper and the Python splice pump.

Every test joins real loopback TCP connections through a real pump: for the
native pump that is the built ``streams-splice`` process, for the Python pump
the background thread of :class:`SplicePump`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streams_trace.relay import Pump, best_pump
from streams_trace.relay.native import NativePump, helper_path
from streams_trace.relay.pump import SplicePump

from .conftest import NATIVE_MISSING


def open_fds(pid: int | str = "self") -> set[str]:
    """What each descriptor of a process points at (socket:[ino], pipe:[ino], paths)."""
    base = Path(f"/proc/{pid}/fd")
    targets = set()
    for entry in base.iterdir():
        try:
            targets.add(f"{entry.name}->{os.readlink(entry)}")
        except FileNotFoundError:
            pass  # closed while listing (the listing's own descriptor)
    return targets


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


@pytest.fixture(params=["native", "python"])
def pump(request: pytest.FixtureRequest) -> Iterator[Pump]:
    if request.param == "native":
        if helper_path() is None:
            pytest.skip(NATIVE_MISSING)
        made: Pump = NativePump()
    else:
        made = SplicePump()
    try:
        yield made
    finally:
        made.close()


@dataclass
class Finished:
    """Collects on_done reports (called on the pump's thread)."""

    reports: list[tuple[int, int, bool]] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def __call__(self, forward: int, backward: int, reset: bool) -> None:
        self.reports.append((forward, backward, reset))
        self.event.set()

    def wait(self, timeout: float = 10.0) -> tuple[int, int, bool]:
        assert self.event.wait(timeout), "the pump never reported the pair as finished"
        return self.reports[0]


class Sockets:
    """Makes connected TCP socket pairs on loopback."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=4096)

    def pair(self) -> tuple[socket.socket, socket.socket]:
        client = socket.create_connection(self.server.getsockname())
        accepted, _ = self.server.accept()
        return client, accepted

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    made = Sockets()
    try:
        yield made
    finally:
        made.close()


def relayed(pump: Pump, sockets: Sockets, on_done: Finished | None = None
            ) -> tuple[socket.socket, socket.socket]:
    """A client and a server socket joined through the pump."""
    client, relay_a = sockets.pair()
    relay_b, server = sockets.pair()
    pump.add(relay_a, relay_b, on_done)
    return client, server


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_best_pump_prefers_the_native_helper_when_built() -> None:
    chosen = best_pump()
    try:
        expected = "native-splice" if helper_path() is not None else "python-splice"
        assert chosen.name == expected
    finally:
        chosen.close()
    forced = best_pump("python")
    try:
        assert forced.name == "python-splice"
    finally:
        forced.close()


def test_bulk_both_ways_at_once_arrives_intact(pump: Pump, sockets: Sockets) -> None:
    done = Finished()
    client, server = relayed(pump, sockets, done)
    up, down = os.urandom(24 << 20), os.urandom(16 << 20)

    def send(sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    senders = [threading.Thread(target=send, args=(client, up)),
               threading.Thread(target=send, args=(server, down))]
    for thread in senders:
        thread.start()
    received: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: received.update(up=read_to_end(server)))
    reader.start()
    received["down"] = read_to_end(client)
    reader.join(30)
    for thread in senders:
        thread.join(30)
    assert hashlib.sha256(received["up"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received["down"]).digest() == hashlib.sha256(down).digest()
    assert done.wait() == (len(up), len(down), False)
    client.close()
    server.close()


def test_half_close_passes_through_both_ways(pump: Pump, sockets: Sockets) -> None:
    done = Finished()
    client, server = relayed(pump, sockets, done)
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    server.settimeout(10)
    assert read_to_end(server) == b"request"  # the end of file arrived
    # The other direction still works after the half close.
    server.sendall(b"answer after the client's end of file")
    time.sleep(0.05)
    assert not done.event.is_set()
    server.shutdown(socket.SHUT_WR)
    client.settimeout(10)
    assert read_to_end(client) == b"answer after the client's end of file"
    assert done.wait() == (7, 37, False)
    client.close()
    server.close()


def test_urgent_data_stays_in_its_place_in_the_stream(pump: Pump, sockets: Sockets) -> None:
    """telnet, rlogin and FTP's ABOR send urgent (MSG_OOB) bytes; splice stops at the
    urgent mark as if at the end of the stream, which cut the rest off silently."""
    done = Finished()
    client, server = relayed(pump, sockets, done)
    client.sendall(b"A" * 10)
    client.send(b"!", socket.MSG_OOB)
    client.sendall(b"B" * 10)
    client.shutdown(socket.SHUT_WR)
    server.settimeout(10)
    assert read_to_end(server) == b"A" * 10 + b"!" + b"B" * 10
    server.close()
    assert done.wait() == (21, 0, False)
    client.close()


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("who", ["client", "server"])
def test_a_reset_on_one_side_resets_the_other(pump: Pump, sockets: Sockets, who: str) -> None:
    done = Finished()
    client, server = relayed(pump, sockets, done)
    client.sendall(b"ping")
    server.settimeout(10)
    assert server.recv(4) == b"ping"
    victim, survivor = (client, server) if who == "client" else (server, client)
    reset(victim)
    survivor.settimeout(10)
    with pytest.raises(ConnectionResetError):
        survivor.recv(10)
    assert done.wait()[2] is True
    survivor.close()


def test_closing_the_pump_resets_what_it_still_carries(pump: Pump, sockets: Sockets) -> None:
    """A stream cut short must not look complete: the ends get a reset, not an end of file,
    though the sender's bytes are still in flight (the receiver does not read)."""
    done = Finished()
    client, server = relayed(pump, sockets, done)
    client.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:  # until every buffer on the way is full
            client.send(b"x" * 65536)
    pump.close()
    assert done.wait()[2] is True
    server.settimeout(10)
    with pytest.raises(ConnectionResetError):
        read_to_end(server)
    client.close()
    server.close()


def test_closing_the_pump_delivers_a_direction_that_had_finished(pump: Pump,
                                                                 sockets: Sockets) -> None:
    """The client sent everything and its end of file; the server reads slowly. The pump
    stops with those bytes still queued toward the server: they arrive, with the end of
    file, while the client (whose answer never came) gets a reset."""
    done = Finished()
    client, server = relayed(pump, sockets, done)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the rest waits queued
    payload = os.urandom(128 * 1024)
    client.sendall(payload)
    client.shutdown(socket.SHUT_WR)
    time.sleep(0.5)  # for the pump to move it all toward the server, and the end of file
    pump.close()
    assert done.wait()[2] is True
    server.settimeout(10)
    assert read_to_end(server) == payload
    client.settimeout(10)
    with pytest.raises(ConnectionResetError):
        read_to_end(client)
    client.close()
    server.close()


def test_a_reset_after_a_half_close_reaches_an_idle_peer(pump: Pump, sockets: Sockets) -> None:
    """The client ends its side, then resets: its direction is over, so no read sees it."""
    done = Finished()
    client, server = relayed(pump, sockets, done)
    client.sendall(b"last words")
    client.shutdown(socket.SHUT_WR)
    server.settimeout(10)
    assert read_to_end(server) == b"last words"
    reset(client)
    # The server stays idle: the reset must come to it, not wait for its next write.
    assert done.wait()[2] is True
    # A reset after the peer's FIN shows as a pending EPIPE, not ECONNRESET (tcp_reset()).
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (errno.ECONNRESET,
                                                                     errno.EPIPE)
    server.close()


def cpu_seconds(pump: Pump) -> float:
    """CPU time used so far by whatever runs the pump."""
    if isinstance(pump, NativePump):
        fields = Path(f"/proc/{pump.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# 200 KiB: the pump has read the client's end of file and holds bytes in its pipe.
# 500 KiB: the pipe is full and the FIN waits behind unread bytes in the socket.
@pytest.mark.parametrize("payload_kib", [200, 500])
def test_a_slow_reader_after_both_ends_closed_costs_no_cpu(pump: Pump, sockets: Sockets,
                                                           payload_kib: int) -> None:
    """Bytes wait for a reader that does not read, after both sides sent FIN.

    The client's socket in the relay is then shut down both ways and reports EPOLLHUP on
    every wait; a level-triggered loop that keeps it registered spins at full speed.
    """
    done = Finished()
    client, relay_a = sockets.pair()
    relay_b, server = sockets.pair()
    # A small buffer past the pump, so the bytes wait in the pump's pipe.
    relay_b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    relay_b_copy = relay_b.dup()  # to widen it again once measured
    pump.add(relay_a, relay_b, done)
    server.shutdown(socket.SHUT_WR)
    client.settimeout(10)
    assert client.recv(1) == b""  # the server's end of file went through
    payload = os.urandom(payload_kib * 1024)
    client.sendall(payload)
    client.shutdown(socket.SHUT_WR)
    time.sleep(0.3)  # let the pump read what it can
    assert not done.event.is_set()  # bytes still wait for the server
    before = cpu_seconds(pump)
    time.sleep(1.0)
    spent = cpu_seconds(pump) - before
    # Now read at full speed.
    relay_b_copy.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    assert read_to_end(server) == payload
    relay_b_copy.close()
    assert done.wait() == (len(payload), 0, False)
    assert spent < 0.3, f"the pump used {spent:.2f} s of CPU in 1 s while waiting"
    client.close()
    server.close()


async def _exchange(client: socket.socket, server: socket.socket, size: int,
                    reply: bytes) -> tuple[bytes, bytes]:
    """Client sends ``size`` random bytes and ends; server answers sha256 + ``reply``."""
    loop = asyncio.get_running_loop()
    payload = os.urandom(size)

    async def read_all(sock: socket.socket) -> bytes:
        chunks = []
        while data := await loop.sock_recv(sock, 1 << 16):
            chunks.append(data)
        return b"".join(chunks)

    async def client_side() -> bytes:
        await loop.sock_sendall(client, payload)
        client.shutdown(socket.SHUT_WR)
        return await read_all(client)

    async def server_side() -> bytes:
        got = await read_all(server)
        await loop.sock_sendall(server, hashlib.sha256(got).digest() + reply)
        server.shutdown(socket.SHUT_WR)
        return got

    answer, got = await asyncio.gather(client_side(), server_side())
    assert got == payload
    return answer, hashlib.sha256(payload).digest() + reply


def test_a_thousand_concurrent_pairs_complete_and_leave_no_descriptor(
    pump: Pump, sockets: Sockets
) -> None:
    count = 1000
    before_test = open_fds()
    helper_before: set[str] = set()
    if isinstance(pump, NativePump):
        # Its baseline once it runs its event loop: control socket, epoll, stdio.
        wait_until(lambda: any("eventpoll" in fd for fd in open_fds(pump.pid)))
        helper_before = open_fds(pump.pid)
    rng = random.Random(5)
    sizes = [rng.randrange(1, 64 * 1024) for _ in range(count)]
    replies = [os.urandom(rng.randrange(0, 32 * 1024)) for _ in range(count)]
    finished = [Finished() for _ in range(count)]
    ends = [relayed(pump, sockets, finished[i]) for i in range(count)]
    for client, server in ends:
        client.setblocking(False)
        server.setblocking(False)
    # Every pair is in the pump at the same time before any byte moves.
    assert pump.active == count
    if isinstance(pump, NativePump):
        # Two sockets and two pipes (four descriptors) per pair live in the helper.
        assert len(open_fds(pump.pid)) >= len(helper_before) + 6 * count

    async def run_all() -> list[tuple[bytes, bytes]]:
        return await asyncio.gather(*(
            _exchange(client, server, sizes[i], replies[i])
            for i, (client, server) in enumerate(ends)))

    answers = asyncio.run(run_all())
    assert all(got == expected for got, expected in answers)
    for client, server in ends:
        client.close()
        server.close()
    wait_until(lambda: pump.active == 0, what="every pair to finish")
    for i, done in enumerate(finished):
        assert done.wait() == (sizes[i], 32 + len(replies[i]), False)
    if isinstance(pump, NativePump):
        try:
            wait_until(lambda: open_fds(pump.pid) == helper_before,
                       what="the helper to close every descriptor of the pairs")
        except AssertionError:
            left = open_fds(pump.pid) - helper_before
            raise AssertionError(f"{len(left)} left in the helper: {sorted(left)[:10]}") from None
    assert open_fds() - before_test == set()  # nothing of this test left open


def test_end_when_sent_closes_a_pair_once_side_a_has_finished(pump: Pump,
                                                               sockets: Sockets) -> None:
    """After end_when_sent a pair whose a side has sent everything and its end of file
    ends at once, though b keeps its side open: b has every byte and the end of file,
    a gets a reset. A pair whose a side is still open is left alone."""
    done, still = Finished(), Finished()
    program, peer = relayed(pump, sockets, done)
    other_program, other_peer = relayed(pump, sockets, still)
    payload = os.urandom(2_000_000)
    program.sendall(payload)
    program.shutdown(socket.SHUT_WR)
    peer.settimeout(10)
    assert read_to_end(peer) == payload  # the end of file passed before end_when_sent
    assert not done.event.wait(0.2)  # the idle peer keeps it open until then
    pump.end_when_sent()
    assert done.wait() == (len(payload), 0, True)
    program.settimeout(10)
    with pytest.raises(ConnectionResetError):
        program.recv(10)
    # The other pair's a side had not finished: it still carries bytes both ways.
    other_program.sendall(b"ping")
    other_peer.settimeout(10)
    assert other_peer.recv(10) == b"ping"
    other_peer.sendall(b"pong")
    other_program.settimeout(10)
    assert other_program.recv(10) == b"pong"
    # Its a side finishes now: it ends by the same rule, after its last bytes arrive.
    other_program.sendall(b"last")
    other_program.shutdown(socket.SHUT_WR)
    assert read_to_end(other_peer) == b"last"
    assert still.wait() == (8, 4, True)
    wait_until(lambda: pump.active == 0, what="every pair to end")
    for sock in (program, peer, other_program, other_peer):
        sock.close()
