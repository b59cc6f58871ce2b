"""The native helper as a process: it never outlives its owner, and it survives bad input."""

from __future__ import annotations

import array
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams_trace.relay.native import ADD_MESSAGE, DONE_MESSAGE, OP_ADD, NativePump, helper_path

from .conftest import NATIVE_MISSING, REPO
from .test_relay import Finished, Sockets, open_fds, relayed, wait_until

pytestmark = pytest.mark.skipif(helper_path() is None, reason=NATIVE_MISSING)

# The owner: starts a NativePump (from a short-lived thread, or from the main thread and
# then forks a child that inherits the control socket), joins two connections to the
# test's listener through it, prints the helper's pid and waits to be killed.
OWNER = textwrap.dedent("""
    import os, socket, sys, threading, time
    from streams_trace.relay.native import NativePump
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "thread":
        made = []
        starter = threading.Thread(target=lambda: made.append(NativePump()))
        starter.start()
        starter.join()  # the thread that started the helper has ended
        pump = made[0]
    else:
        pump = NativePump()
    a = socket.create_connection(("127.0.0.1", port))
    b = socket.create_connection(("127.0.0.1", port))
    pump.add(a, b)
    child = 0
    if mode == "fork":
        child = os.fork()
        if child == 0:  # holds a copy of the control socket, so it never sees EOF
            time.sleep(120)
            os._exit(0)
    print(pump.pid, child, flush=True)
    time.sleep(120)
""")


def ended(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (its parent was killed)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["thread", "fork"],
                         ids=["control-socket-closes", "parent-death-signal"])
def test_killing_the_owner_ends_the_helper(listener: socket.socket, mode: str) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, mode, str(listener.getsockname()[1])],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    child = 0
    try:
        assert owner.stdout is not None
        first, _ = listener.accept()
        second, _ = listener.accept()
        helper, child = (int(word) for word in owner.stdout.readline().split())
        # The pair works, also after the thread that started the helper has ended.
        first.sendall(b"through the helper")
        second.settimeout(10)
        assert second.recv(100) == b"through the helper"
        assert not ended(helper)
        owner.kill()
        owner.wait()
        wait_until(lambda: ended(helper), timeout=10, what="the helper to end with its owner")
        # Its connections ended with it, by a reset: it saw its control socket close, or
        # caught its parent-death signal (a cut stream must not look complete).
        first.settimeout(10)
        for end in (first, second):
            with pytest.raises(ConnectionResetError):
                end.recv(100)
        first.close()
        second.close()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if child:
            os.kill(child, signal.SIGKILL)


def test_close_ends_open_pairs_and_reports_them() -> None:
    pump = NativePump()
    sockets = Sockets()
    try:
        done = [Finished() for _ in range(3)]
        ends = [relayed(pump, sockets, finished) for finished in done]
        ends[0][0].sendall(b"12345")
        ends[0][1].settimeout(10)
        assert ends[0][1].recv(10) == b"12345"
        pump.close()
        assert pump.process.returncode == 0
        # Reset, not ended in order: nobody asked for these connections to end.
        assert [finished.wait() for finished in done] == [(5, 0, True), (0, 0, True),
                                                          (0, 0, True)]
        for client, server in ends:
            client.settimeout(10)
            with pytest.raises(ConnectionResetError):
                client.recv(10)
            client.close()
            server.close()
    finally:
        pump.close()
        sockets.close()


def test_a_bad_control_message_is_refused_and_the_helper_carries_on(
    capfd: pytest.CaptureFixture[str],
) -> None:
    pump = NativePump()
    sockets = Sockets()
    try:
        control = pump._control
        # No descriptors attached: the helper must say so, not crash or hang.
        control.send(ADD_MESSAGE.pack(OP_ADD, 0, 999))
        # One descriptor only: refused, and the descriptor closed with a reset.
        lonely, lonely_peer = sockets.pair()
        control.sendmsg([ADD_MESSAGE.pack(OP_ADD, 0, 998)],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                          array.array("i", [lonely.fileno()]))])
        lonely.close()
        lonely_peer.settimeout(10)
        with pytest.raises(ConnectionResetError):
            lonely_peer.recv(10)
        lonely_peer.close()
        # Still carrying pairs.
        done = Finished()
        client, server = relayed(pump, sockets, done)
        client.sendall(b"still here")
        client.shutdown(socket.SHUT_WR)
        server.settimeout(10)
        assert server.recv(100) == b"still here"
        server.close()
        client.close()
        assert done.wait()[0] == 10
    finally:
        pump.close()
        sockets.close()
    err = capfd.readouterr().err
    assert err.count("streams-splice: bad control message") == 2, err


def test_the_helper_alone_explains_its_usage() -> None:
    helper = str(helper_path())
    result = subprocess.run([helper], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: streams-splice")
    # A descriptor that is not a SOCK_SEQPACKET socket: one line, code 2.
    read_end, write_end = os.pipe()
    try:
        result = subprocess.run([helper, str(read_end)], pass_fds=[read_end],
                                capture_output=True, text=True, timeout=10)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 2
    expected = f"streams-splice: descriptor {read_end} is not a SOCK_SEQPACKET socket\n"
    assert result.stderr == expected


def test_reports_follow_the_wire_format() -> None:
    # The sizes the C structs have on every Linux ABI (no padding by construction).
    assert (ADD_MESSAGE.size, DONE_MESSAGE.size) == (16, 32)


def test_the_helper_holds_few_descriptors_and_little_memory_when_idle() -> None:
    pump = NativePump()
    try:
        wait_until(lambda: any("eventpoll" in fd for fd in open_fds(pump.pid)))
        # stdin, stdout, stderr, the control socket, the epoll set.
        assert len(open_fds(pump.pid)) == 5
        status = Path(f"/proc/{pump.pid}/status").read_text()
        rss_kib = int(next(line.split()[1] for line in status.splitlines()
                           if line.startswith("VmRSS:")))
        assert rss_kib < 8 * 1024
    finally:
        pump.close()


def test_a_helper_that_dies_ends_its_pairs_and_refuses_new_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Listen on the module's own logger: an in-process CLI test may have stopped
    # "streams_trace" records from propagating to the root logger caplog watches.
    native_log = logging.getLogger("streams_trace.relay.native")
    native_log.addHandler(caplog.handler)
    pump = NativePump()
    sockets = Sockets()
    try:
        done = Finished()
        client, server = relayed(pump, sockets, done)
        os.kill(pump.pid, signal.SIGKILL)
        # The lost pair is reported as reset, and its ends see the helper's death as a
        # reset too (the sockets were handed over armed with SO_LINGER 0).
        assert done.wait() == (0, 0, True)
        client.settimeout(10)
        with pytest.raises(ConnectionResetError):
            client.recv(10)
        assert pump.active == 0
        # A pair handed over afterwards is reset at once, not left hanging.
        late = Finished()
        late_client, late_server = relayed(pump, sockets, late)
        assert late.wait() == (0, 0, True)
        late_client.settimeout(10)
        with pytest.raises(ConnectionResetError):
            late_client.recv(10)
        for sock in (client, server, late_client, late_server):
            sock.close()
    finally:
        pump.close()
        sockets.close()
        native_log.removeHandler(caplog.handler)
    messages = [record.getMessage() for record in caplog.records]
    assert "native pump: helper ended with 1 connections open" in messages
    assert any(m.startswith("native pump: cannot hand over a connection") for m in messages)
