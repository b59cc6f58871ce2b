"""What only the relay data path of streams-run does, against the real local gateway.

The whole streams-run suite (test_run.py) already runs in both data paths; these
tests cover the relay's own parts: the program's sockaddr buffer is left alone
(it is read-only here), an intruder on the private port never reaches a
listening program, killing the supervisor ends the pump helper, and the
supervisor keeps no file descriptor after many relayed connections, 1000
connections open at once all arrive intact, streams-run ends with its program
though a peer keeps a connection open, and a dual-stack server works where IPv6
is disabled.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import streams_trace
from streams_trace import conf as confmod
from streams_trace.client import connect_with_conf
from streams_trace.handshake import Connector
from streams_trace.lan import handshake_blocking
from streams_trace.relay.native import helper_path
from streams_trace.supervisor.relay_mode import DRAIN_TIMEOUT

from .conftest import NATIVE_MISSING, EchoListener, Gateway
from .test_run import (
    _PTRACE_PROBLEM,
    PROGRAMS,
    STREAMS_RUN,
    build_c,
    fake_contact,
    finish,
    listener_program,
    streams_run,
)

pytestmark = pytest.mark.skipif(_PTRACE_PROBLEM is not None, reason=_PTRACE_PROBLEM or "")
RELAY = ("--data-path", "relay")

# Connects with its sockaddr in a read-only page, and checks the buffer afterwards.
READONLY_CLIENT = r"""
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct addrinfo hints = {0}, *result;
    hints.ai_family = AF_INET; hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(argv[1], argv[2], &hints, &result)) { puts("resolve failed"); return 2; }
    unsigned char *page = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(page, result->ai_addr, result->ai_addrlen);
    unsigned char before[128];
    memcpy(before, page, result->ai_addrlen);
    mprotect(page, 4096, PROT_READ);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)page, result->ai_addrlen) != 0) {
        perror("connect");
        return 1;
    }
    printf("buffer %s\n", memcmp(before, page, result->ai_addrlen) ? "CHANGED" : "untouched");
    write(fd, "hello ro\n", 9);
    char reply[64] = {0};
    read(fd, reply, sizeof reply - 1);
    printf("%s", reply);
    return 0;
}
"""


def skip_without(pump: str) -> None:
    if pump == "native" and helper_path() is None:
        pytest.skip(NATIVE_MISSING)


def ends_with_its_program(process: subprocess.Popen[str], peer: socket.socket,
                          size: int) -> None:
    """``peer`` reads ``size`` bytes and the end of file, its own side still open; then
    streams-run ends at once (exit 0), not after waiting out its drain for ``peer``."""
    peer.settimeout(20)
    received = 0
    while chunk := peer.recv(1 << 16):
        received += len(chunk)
    assert received == size
    started = time.monotonic()
    code, _, err = finish(process)
    waited = time.monotonic() - started
    assert code == 0, err
    assert waited < DRAIN_TIMEOUT / 2, f"streams-run ended {waited:.1f} s after its program"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_the_programs_read_only_sockaddr_is_left_alone(tunnel: Gateway, echo: EchoListener,
                                                       tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "ro.c"
    source.write_text(READONLY_CLIENT)
    program = tmp_path / "ro"
    subprocess.run(["gcc", "-O2", "-o", str(program), str(source)], check=True)
    name, port = fake_contact(tunnel)
    code, out, err = finish(streams_run(tunnel.initiator_dir, tunnel.tunnel_id, str(program),
                                        name, port, options=(*RELAY, "-d")))
    assert (code, out) == (0, "buffer untouched\necho:hello ro\n"), err
    assert "relayed through 127.0.0.1:" in err


@pytest.mark.parametrize("pump", ["native", "python"])
def test_both_pumps_carry_relayed_connections(tunnel: Gateway, echo: EchoListener,
                                              tmp_path: Path, pump: str) -> None:

    skip_without(pump)
    client = build_c(tmp_path / "client", static_musl=False)
    name, port = fake_contact(tunnel)
    code, out, err = finish(streams_run(
        tunnel.initiator_dir, tunnel.tunnel_id, str(client), "-t", "4", "-c", "10", name, port,
        options=(*RELAY, "-d"), env={"STREAMS_TRACE_PUMP": pump}))
    assert code == 0 and out.endswith("ok 40\n"), err[-2000:]
    assert f"data pump: {pump}-splice" in err


def test_an_intruder_on_the_private_port_never_reaches_the_program(tunnel: Gateway) -> None:
    server = listener_program(tunnel, sys.executable, str(PROGRAMS / "echo_server.py"),
                              str(tunnel.listener_port), "1", options=(*RELAY, "-d"))
    # The supervisor says where it moved the bind; -d goes to stderr, read it as it comes.
    assert server.stderr is not None
    private = None
    deadline = time.monotonic() + 15
    while private is None and time.monotonic() < deadline:
        line = server.stderr.readline()
        match = re.search(r"moved to the private port 127\.0\.0\.1:(\d+)", line)
        if match:
            private = int(match.group(1))
    assert private is not None
    # Straight to the private port, past the supervisor: the program must not serve it.
    with socket.create_connection(("127.0.0.1", private), timeout=10) as intruder:
        intruder.sendall(b"intruder\n")
        intruder.settimeout(10)
        try:  # closed inside the program, unanswered (a reset: its line was never read)
            assert intruder.recv(100) == b""
        except ConnectionResetError:
            pass
    secret = confmod.load(tunnel.tunnel_id, tunnel.listener_dir).secret
    assert secret is not None
    with socket.create_connection(tunnel.listener_address, timeout=10) as good:
        handshake_blocking(good, Connector(secret, tunnel.tunnel_id, timeout=5))
        good.sendall(b"good\n")
        good.shutdown(socket.SHUT_WR)
        good.settimeout(10)
        assert good.recv(100) == b"echo:good\n"
    code, out, err = finish(server)
    assert (code, out) == (0, "served 1\n"), err
    assert "did not come through the supervisor" in err


def test_a_udp_socket_on_the_tunnel_port_leaves_the_tcp_listener_alone(tunnel: Gateway) -> None:
    """A server on one port for TCP and UDP (a DNS server, iperf3): the UDP bind is the
    program's own, and the tunnel's connections still reach the TCP listener."""

    server_code = (
        "import socket, sys\n"
        "port = int(sys.argv[1])\n"
        "tcp = socket.create_server(('127.0.0.1', port))\n"
        "udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "udp.bind(('127.0.0.1', port))\n"
        "print('listening', udp.getsockname()[1] == port, flush=True)\n"
        "conn, _ = tcp.accept()\n"
        "conn.sendall(b'echo:' + conn.makefile('rb').readline())\n")
    server = listener_program(tunnel, sys.executable, "-c", server_code,
                              str(tunnel.listener_port), ready="listening True",
                              options=RELAY)
    with connect_with_conf(confmod.load(tunnel.tunnel_id, tunnel.initiator_dir)) as client:
        client.settimeout(20)
        client.sendall(b"over tcp\n")
        assert client.recv(100) == b"echo:over tcp\n"
    code, _, err = finish(server)
    assert code == 0, err


def test_a_source_port_the_supervisor_gave_up_does_not_let_a_stranger_in(
        tunnel: Gateway) -> None:
    """The program closes its listening socket before accepting a relayed connection, then
    listens again: a local process that binds the source port the supervisor used for it
    must not pass for the supervisor."""
    server = streams_run(tunnel.listener_dir, tunnel.tunnel_id, sys.executable,
                         str(PROGRAMS / "odd_server.py"), "relisten", str(tunnel.listener_port),
                         options=(*RELAY, "-d"), stdin=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None and server.stderr is not None
    try:
        assert server.stdout.readline() == "listening\n"
        secret = confmod.load(tunnel.tunnel_id, tunnel.listener_dir).secret
        assert secret is not None
        first = socket.create_connection(tunnel.listener_address, timeout=10)
        handshake_blocking(first, Connector(secret, tunnel.tunnel_id, timeout=5))
        source = None
        deadline = time.monotonic() + 15
        while source is None and time.monotonic() < deadline:
            match = re.search(r"relayed to the program at \S+ from 127\.0\.0\.1:(\d+)",
                              server.stderr.readline())
            source = int(match.group(1)) if match else None
        assert source is not None
        server.stdin.write("close\n")
        server.stdin.flush()
        assert server.stdout.readline() == "again\n"
        private = None
        while private is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            match = re.search(r"moved to the private port 127\.0\.0\.1:(\d+)", line)
            private = int(match.group(1)) if match else None
        assert private is not None
        first.close()
        # The stranger, once the supervisor's socket has let go of the port.
        stranger = socket.socket()
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        while True:
            try:
                stranger.bind(("127.0.0.1", source))
                break
            except OSError:
                assert time.monotonic() < deadline, "the source port stayed taken"
                time.sleep(0.05)
        stranger.settimeout(10)
        stranger.connect(("127.0.0.1", private))
        stranger.sendall(b"stranger\n")
        with socket.create_connection(tunnel.listener_address, timeout=10) as good:
            handshake_blocking(good, Connector(secret, tunnel.tunnel_id, timeout=5))
            good.sendall(b"good\n")
            code, out, err = finish(server)
        stranger.close()
        assert (code, out.splitlines()[-1]) == (0, "got good"), err
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_killing_the_supervisor_ends_the_helper_and_the_program(tunnel: Gateway,
                                                                echo: EchoListener) -> None:

    skip_without("native")
    name, port = fake_contact(tunnel)
    program = ("import socket, sys, time\n"
               f"s = socket.create_connection(({name!r}, {port}))\n"
               "print('connected', flush=True)\n"
               "time.sleep(60)\n")
    supervisor = streams_run(tunnel.initiator_dir, tunnel.tunnel_id, sys.executable, "-c",
                             program, options=RELAY)
    assert supervisor.stdout is not None
    assert supervisor.stdout.readline() == "connected\n"
    deadline = time.monotonic() + 10
    helpers: list[int] = []
    while not helpers and time.monotonic() < deadline:  # the pump starts with its first pair
        children = _children(supervisor.pid)
        helpers = [pid for pid in children
                   if Path(f"/proc/{pid}/comm").read_text().strip() == "streams-splice"]
        time.sleep(0.02)
    programs = [pid for pid in children if pid not in helpers]
    assert len(helpers) == 1 and programs, children
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            Path(f"/proc/{pid}").exists() for pid in helpers + programs):
        time.sleep(0.05)
    # Orphans are reaped by init (or a subreaper); a zombie counts as ended.
    for pid in helpers + programs:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(")")[1].split()[0] == "Z", pid


def test_no_descriptor_left_after_many_relayed_connections(tunnel: Gateway, echo: EchoListener,
                                                           tmp_path: Path) -> None:
    client = build_c(tmp_path / "client", static_musl=False)
    name, port = fake_contact(tunnel)
    script = (f"{client} {name} {port} && echo first && read x && "
              f"{client} -t 16 -c 40 {name} {port} && echo second && read y")
    supervisor = subprocess.Popen(
        [*STREAMS_RUN, "--config-dir",
         str(tunnel.initiator_dir), *RELAY, tunnel.tunnel_id, "sh", "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert supervisor.stdout is not None and supervisor.stdin is not None
    try:
        assert supervisor.stdout.readline() == "echo:hello 0\n"
        assert supervisor.stdout.readline() == "ok 1\n"
        assert supervisor.stdout.readline() == "first\n"

        def settled() -> tuple[int, dict[int, int]]:
            """Descriptor counts of the supervisor and its helper once pairs have ended."""
            time.sleep(0.3)
            helpers = [pid for pid in _children(supervisor.pid)
                       if Path(f"/proc/{pid}/comm").read_text().strip() == "streams-splice"]
            return _fd_count(supervisor.pid), {pid: _fd_count(pid) for pid in helpers}

        baseline = settled()
        supervisor.stdin.write("go\n")
        supervisor.stdin.flush()
        assert supervisor.stdout.readline().startswith("echo:hello")
        assert supervisor.stdout.readline() == "ok 640\n"
        assert supervisor.stdout.readline() == "second\n"
        deadline = time.monotonic() + 10
        after = settled()
        while after != baseline and time.monotonic() < deadline:
            after = settled()
        assert after == baseline
        supervisor.stdin.write("done\n")
        supervisor.stdin.flush()
        code, _, err = finish(supervisor)  # type: ignore[arg-type]
        assert code == 0, err[-2000:]
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()


@pytest.mark.parametrize("pump", ["native", "python"])
def test_1000_concurrent_relayed_connections_with_checksums_leave_no_descriptor(
        tunnel: Gateway, pump: str) -> None:
    """1000 connections open at once through relay mode, each checked by its SHA-256;
    afterwards neither the supervisor nor the pump helper holds a descriptor more."""

    skip_without(pump)
    count = 1000
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("peers.py")), "server", tunnel.tunnel_id,
         str(tunnel.listener_dir), "--connections", str(count + 1)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    supervisor = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        name, port = fake_contact(tunnel)
        supervisor = subprocess.Popen(
            [*STREAMS_RUN, "--config-dir", str(tunnel.initiator_dir), *RELAY, tunnel.tunnel_id,
             sys.executable, str(PROGRAMS / "many_client.py"), name, port, str(count), "3000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "STREAMS_TRACE_PUMP": pump})
        assert supervisor.stdout is not None and supervisor.stdin is not None
        assert supervisor.stdout.readline() == "ready\n"

        def counts() -> tuple[int, dict[int, int]]:
            helpers = [pid for pid in _children(supervisor.pid)  # type: ignore[union-attr]
                       if Path(f"/proc/{pid}/comm").read_text().strip() == "streams-splice"]
            return _fd_count(supervisor.pid), {pid: _fd_count(pid)  # type: ignore[union-attr]
                                               for pid in helpers}

        # The warm-up pair may still be closing in the helper: wait for quiet counts.
        baseline, previous = counts(), None
        for _ in range(40):
            if baseline == previous:
                break
            time.sleep(0.5)
            previous, baseline = baseline, counts()
        supervisor.stdin.write("go\n")
        supervisor.stdin.flush()
        assert supervisor.stdout.readline() == f"ok {count}\n"
        deadline = time.monotonic() + 20
        after = counts()
        while after != baseline and time.monotonic() < deadline:
            time.sleep(0.2)
            after = counts()
        assert after == baseline
        supervisor.stdin.write("done\n")
        supervisor.stdin.flush()
        code, _, err = finish(supervisor, timeout=120)  # type: ignore[arg-type]
        assert code == 0, err[-2000:]
        out, err = server.communicate(timeout=60)
        assert server.returncode == 0, err[-2000:]
        assert len(out.splitlines()) == count + 1  # one line per connection served
    finally:
        for process in (supervisor, server):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.parametrize("pump", ["native", "python"])
def test_a_server_that_exits_does_not_wait_for_its_idle_client(tunnel: Gateway,
                                                                pump: str) -> None:
    """A server answers and exits while its client keeps the connection open (an HTTP
    keep-alive): the client gets every byte and an end of file, and streams-run ends
    with the server, not after waiting out its drain for the idle client."""

    skip_without(pump)
    size = 3_000_000
    server_code = (
        "import socket, sys\n"
        "listener = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
        "print('listening', flush=True)\n"
        "conn, _ = listener.accept()\n"
        "conn.makefile('rb').readline()\n"
        f"conn.sendall(b'x' * {size})\n")
    server = listener_program(tunnel, sys.executable, "-c", server_code,
                              str(tunnel.listener_port), options=RELAY,
                              env={"STREAMS_TRACE_PUMP": pump})
    try:
        with connect_with_conf(confmod.load(tunnel.tunnel_id, tunnel.initiator_dir)) as client:
            client.sendall(b"request\n")
            ends_with_its_program(server, client, size)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


@pytest.mark.parametrize("pump", ["native", "python"])
def test_a_client_that_exits_does_not_wait_for_a_server_that_keeps_the_connection(
        tunnel: Gateway, pump: str) -> None:
    """The program sends its last bytes and exits; the server reads them all but never
    closes its side: every byte arrives, and streams-run ends with the program."""

    skip_without(pump)
    size = 3_000_000

    with streams_trace.listen(tunnel.tunnel_id, config_dir=tunnel.listener_dir) as target:
        name, port = fake_contact(tunnel)
        program = ("import socket\n"
                   f"s = socket.create_connection(({name!r}, {port}))\n"
                   f"s.sendall(b'y' * {size})\n")
        client = streams_run(tunnel.initiator_dir, tunnel.tunnel_id, sys.executable, "-c",
                             program, options=RELAY, env={"STREAMS_TRACE_PUMP": pump})
        try:
            conn, _ = target.accept()
            with conn:
                ends_with_its_program(client, conn, size)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()


DUAL_STACK_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
conn, _ = s.accept()
conn.sendall(b"echo:" + conn.makefile("rb").readline())
"""

# Runs in the private network: the server under streams-run, then one authenticated
# connection to it over IPv4, as the listener access point makes it.
IPV6_OFF_DRIVER = """
import socket, subprocess, sys
from streams_trace import conf
from streams_trace.handshake import Connector
from streams_trace.lan import handshake_blocking
tunnel_id, config_dir, port, server = sys.argv[1:5]
run = subprocess.Popen([sys.executable, "-c", "from streams_trace.cli.run import main; main()",
                        "--config-dir", config_dir, "--data-path", "relay", tunnel_id,
                        sys.executable, server, port], stdout=subprocess.PIPE, text=True)
assert run.stdout.readline() == "listening\\n"
with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as c:
    handshake_blocking(c, Connector(conf.load(tunnel_id, config_dir).secret, tunnel_id, timeout=5))
    c.sendall(b"over ipv4\\n")
    print(c.recv(100).decode(), end="")
sys.exit(run.wait(timeout=30))
"""


def test_a_dual_stack_server_where_ipv6_is_disabled(tunnel: Gateway, tmp_path: Path) -> None:
    """IPv6 off (sysctl disable_ipv6), a server binds [::] and serves IPv4 on it: the
    private port cannot be ::1 there, and becomes 127.0.0.1 on the program's dual-stack
    socket. In a private network namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare(1) and ip(8) for a private network")
    (tmp_path / "server.py").write_text(DUAL_STACK_SERVER)
    (tmp_path / "driver.py").write_text(IPV6_OFF_DRIVER)
    script = ("ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
              "net.ipv6.conf.lo.disable_ipv6=1 || exit 99; "
              f"exec {sys.executable} {tmp_path}/driver.py {tunnel.tunnel_id} "
              f"{tunnel.listener_dir} {tunnel.listener_port} {tmp_path}/server.py")
    process = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                             text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert (process.returncode, process.stdout) == (0, "echo:over ipv4\n"), process.stderr


def test_a_connection_between_bind_and_listen_waits_for_the_listen(tunnel: Gateway) -> None:
    """The program has bound the tunnel's port but not listened yet: a tunnel connection
    that comes then is taken once it listens, not reset."""

    server = streams_run(tunnel.listener_dir, tunnel.tunnel_id, sys.executable,
                         str(PROGRAMS / "odd_server.py"), "slow-listen",
                         str(tunnel.listener_port), options=RELAY, stdin=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    try:
        assert server.stdout.readline() == "bound\n"
        with connect_with_conf(confmod.load(tunnel.tunnel_id, tunnel.initiator_dir)) as client:
            client.settimeout(20)
            client.sendall(b"early\n")
            time.sleep(0.5)  # it reaches the supervisor, and finds nobody listening yet
            server.stdin.write("listen\n")
            server.stdin.flush()
            assert client.recv(100) == b"echo:early\n"
        code, _, err = finish(server)
        assert code == 0, err
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_a_closed_listening_socket_gives_the_port_back(tunnel: Gateway) -> None:
    """The program closes its listening socket and goes on: a tunnel connection then
    fails visibly (a reset, not an empty reply), and the supervisor lets go of the
    port, as the program did."""

    server = streams_run(tunnel.listener_dir, tunnel.tunnel_id, sys.executable,
                         str(PROGRAMS / "odd_server.py"), "stop", str(tunnel.listener_port),
                         options=(*RELAY, "-d"), stdin=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    try:
        assert server.stdout.readline() == "listening\n"
        server.stdin.write("close\n")
        server.stdin.flush()
        assert server.stdout.readline() == "closed\n"
        with connect_with_conf(confmod.load(tunnel.tunnel_id, tunnel.initiator_dir)) as client:
            client.settimeout(20)
            client.sendall(b"too late\n")
            with pytest.raises(ConnectionResetError):
                client.recv(100)
        with socket.create_server(tunnel.listener_address):
            pass  # free again
        server.stdin.write("exit\n")
        server.stdin.flush()
        code, _, err = finish(server)
        assert code == 0, err
        assert "no longer listens" in err
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
