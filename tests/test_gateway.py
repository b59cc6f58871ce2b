"""The local gateway, as a real process, with real programs using the client API."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from streams_trace import conf
from streams_trace.gateway.tunnel import read_state
from streams_trace.handshake import Connector
from streams_trace.lan import HandshakeError, handshake_blocking
from streams_trace.relay.native import helper_path

from .conftest import (
    NATIVE_MISSING,
    REPO,
    Gateway,
    free_port,
    start_gateway,
    streams_trace_command,
)
from .netns import one_host

PEERS = str(Path(__file__).with_name("peers.py"))
_spawned: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_peer_outlives_its_test() -> Iterator[None]:
    yield
    while _spawned:
        process = _spawned.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def peer(role: str, tunnel_id: str, config_dir: Path, **options: int) -> subprocess.Popen[str]:
    args = [sys.executable, PEERS, role, tunnel_id, str(config_dir)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
    _spawned.append(process)
    return process


def start_server(gateway: Gateway, config_dir: Path | None = None,
                 **options: int) -> subprocess.Popen[str]:
    server = peer("server", gateway.tunnel_id, config_dir or gateway.listener_dir, **options)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "READY", server.stderr.read()  # type: ignore
    return server


def results(process: subprocess.Popen[str],
            timeout: float = 300) -> tuple[int, list[dict], str]:
    """Wait for a peer; return its exit code, its JSON lines and its stderr."""
    out, err = process.communicate(timeout=timeout)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return process.returncode, rows, err


def wait_for_line(stream: IO[str], text: str, timeout: float) -> str:
    """The first line of ``stream`` that contains ``text``, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} within {timeout} s")


def copy_conf_with_secret(source_dir: Path, tunnel_id: str, target: Path, secret: str) -> Path:
    tunnel = conf.load(tunnel_id, source_dir)
    tunnel.lankey = secret
    conf.save(tunnel, target)
    return target


def test_confs_and_state_describe_the_tunnel(gateway: Gateway) -> None:
    initiator = conf.load(gateway.tunnel_id, gateway.initiator_dir)
    listener = conf.load(gateway.tunnel_id, gateway.listener_dir)
    assert initiator.lankey and listener.lankey and initiator.lankey != listener.lankey
    assert initiator.connector_contact_string is not None
    assert initiator.fake_port is not None
    assert not initiator.contact_is_stale()  # a local tunnel is never looked up in Globus
    assert listener.listener_contact_string == conf.parse_contact(
        f"127.0.0.1:{gateway.listener_port}")
    state = read_state(gateway.initiator_dir / f"gateway-{gateway.tunnel_id}.toml")
    assert state["initiator_contact_string"] == str(initiator.connector_contact_string)
    assert state["contact_string"] == f"globus.{gateway.tunnel_id}:{initiator.fake_port}"
    for path in (initiator.path, listener.path):
        assert path is not None and (path.stat().st_mode & 0o777) == 0o600


def test_200_megabytes_each_way_with_matching_checksums(gateway: Gateway) -> None:
    size = 200 * 1024 * 1024
    server = start_server(gateway, connections=1, reply_bytes=size)
    client = peer("client", gateway.tunnel_id, gateway.initiator_dir, connections=1,
                  send_bytes=size)
    code, client_rows, err = results(client)
    assert code == 0, err
    _, server_rows, _ = results(server)
    assert client_rows[0]["ok"]  # the server read exactly what the client sent
    assert server_rows[0]["received"] == size
    assert client_rows[0]["received"] == size
    assert client_rows[0]["received_sha"] == server_rows[0]["sent_sha"]


def test_200_connections_at_once(gateway: Gateway) -> None:
    server = start_server(gateway, connections=200, reply_bytes=100_000)
    client = peer("client", gateway.tunnel_id, gateway.initiator_dir, connections=200,
                  send_bytes=50_000)
    code, client_rows, err = results(client)
    assert code == 0, err
    _, server_rows, _ = results(server)
    assert len(client_rows) == len(server_rows) == 200
    assert all(row["ok"] and row["received"] == 100_000 for row in client_rows)
    assert sorted(r["received_sha"] for r in client_rows) == sorted(
        r["sent_sha"] for r in server_rows)


def test_half_close_passes_through_both_ways(gateway: Gateway) -> None:
    import streams_trace

    with streams_trace.listen(gateway.tunnel_id, config_dir=gateway.listener_dir) as listener:
        client = streams_trace.connect(gateway.tunnel_id, config_dir=gateway.initiator_dir)
        server, _ = listener.accept()
        with client, server:
            # The client stops sending; the server sees EOF yet can still send, for long.
            client.sendall(b"question")
            client.shutdown(socket.SHUT_WR)
            assert server.recv(100) == b"question"
            assert server.recv(100) == b""
            for _ in range(3):
                server.sendall(b"answer ")
                time.sleep(0.05)
            # Then the server stops sending in turn, and the client sees it after the data.
            server.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := client.recv(100):
                received += chunk
            assert received == b"answer answer answer "


def test_reset_on_one_side_reaches_the_other(gateway: Gateway) -> None:
    import struct

    import streams_trace

    with streams_trace.listen(gateway.tunnel_id, config_dir=gateway.listener_dir) as listener:
        client = streams_trace.connect(gateway.tunnel_id, config_dir=gateway.initiator_dir)
        server, _ = listener.accept()
        client.sendall(b"x")
        assert server.recv(1) == b"x"
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # sends a reset
        client.settimeout(10)
        with pytest.raises(ConnectionResetError):
            while client.recv(100):
                pass
        client.close()


def _tcp_timers(pids: list[int]) -> dict[int, tuple[int, float]]:
    """Inode -> the kernel's timer (/proc/net/tcp "tr:when": its kind, 2 for keep-alive,
    and seconds until it fires) of every established TCP socket the processes ``pids``
    hold."""
    inodes: set[int] = set()
    for pid in pids:
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(entry)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    timers: dict[int, tuple[int, float]] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[9]) in inodes:  # 01: ESTABLISHED
                    kind, when = fields[5].split(":")
                    timers[int(fields[9])] = (int(kind, 16), int(when, 16) / ticks)
    return timers


def test_every_socket_of_a_stream_has_keep_alive(gateway: Gateway) -> None:
    """A peer or link that vanishes without a reset (a rebooted node, a cut cable) is found
    out within minutes, and its stream ends, rather than holding the other side forever."""
    import streams_trace

    with streams_trace.listen(gateway.tunnel_id, config_dir=gateway.listener_dir) as listener:
        client = streams_trace.connect(gateway.tunnel_id, config_dir=gateway.initiator_dir)
        server, _ = listener.accept()
        with client, server:
            client.sendall(b"x")
            assert server.recv(1) == b"x"
            time.sleep(0.3)  # acknowledged: only the keep-alive timer can be armed now
            holders = [gateway.process.pid, *(
                int(pid) for pid in Path(f"/proc/{gateway.process.pid}/task/"
                                         f"{gateway.process.pid}/children").read_text().split())]
            timers = _tcp_timers(holders)
    # Both LAN legs, and the link from either end; probes after a minute (the default
    # would be two hours).
    assert len(timers) == 4, timers
    assert all(kind == 2 and 50 < when <= 60 for kind, when in timers.values()), timers


def test_wrong_secret_on_the_initiator_leg_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    server = start_server(gateway, connections=1)
    bad_dir = copy_conf_with_secret(gateway.initiator_dir, gateway.tunnel_id, tmp_path / "bad",
                                    "not the secret")
    client = peer("client", gateway.tunnel_id, bad_dir, connections=1, send_bytes=10)
    code, rows, err = results(client, timeout=60)
    assert code == 3 and rows == []
    assert "peer's proof does not match the LAN secret" in err
    # The listening program saw nothing; the gateway logged the refusal.
    server.send_signal(signal.SIGTERM)
    out, _ = server.communicate(timeout=10)
    assert out == ""
    assert "initiator AP: refused connection" in gateway.stop()


def test_wrong_secret_on_the_listener_leg_never_reaches_the_program(gateway: Gateway,
                                                                   tmp_path: Path) -> None:
    bad_dir = copy_conf_with_secret(gateway.listener_dir, gateway.tunnel_id, tmp_path / "bad",
                                    "not the secret")
    server = start_server(gateway, config_dir=bad_dir, connections=1)
    import streams_trace

    # The initiator leg is fine, but the listener AP cannot authenticate to the program,
    # so the connection ends before any answer.
    sock = streams_trace.connect(gateway.tunnel_id, config_dir=gateway.initiator_dir)
    sock.settimeout(15)
    sock.sendall(b"hello")
    sock.shutdown(socket.SHUT_WR)
    try:
        answer = sock.recv(100)
    except ConnectionResetError:  # the gateway dropped it with our bytes unread
        answer = b""
    assert answer == b""
    sock.close()
    # The client may see the end before the program has logged its refusal: wait for it.
    assert server.stderr is not None
    refusal = wait_for_line(server.stderr, "refused a connection", timeout=20)
    server.send_signal(signal.SIGTERM)
    out, _ = server.communicate(timeout=10)
    assert out == ""  # the program's accept never returned
    assert "peer refused the handshake" in refusal
    assert "listener AP: connection from" in gateway.stop()


def test_a_raw_unauthenticated_connection_is_refused(gateway: Gateway) -> None:
    initiator = conf.load(gateway.tunnel_id, gateway.initiator_dir)
    assert initiator.connector_contact_string is not None
    with socket.create_connection(initiator.connector_contact_string.address, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = s.recv(100)
    assert reply.startswith(b"GSLH\x01\x05")  # a REJECT, and then the connection closes
    # A connector with the right secret but another tunnel ID is refused too.
    other = "11111111-2222-4333-8444-555555555555"
    with socket.create_connection(initiator.connector_contact_string.address, timeout=10) as s, \
            pytest.raises(HandshakeError, match="wrong_tunnel"):
        handshake_blocking(s, Connector(initiator.lankey.encode(), other))  # type: ignore


def test_stops_cleanly_on_sigint_and_sigterm(tmp_path: Path) -> None:
    for number, signum in enumerate((signal.SIGINT, signal.SIGTERM)):
        running = start_gateway(tmp_path / str(number))
        running.process.send_signal(signum)
        assert running.process.wait(timeout=20) == 0
        assert "Traceback" not in running.stop()


def test_restart_keeps_the_tunnel_its_secrets_and_ports(tmp_path: Path) -> None:
    first = start_gateway(tmp_path)
    before = conf.load(first.tunnel_id, first.initiator_dir)
    first.stop()
    second = start_gateway(tmp_path, "--tunnel-id", first.tunnel_id,
                           listener_port=first.listener_port)
    try:
        after = conf.load(second.tunnel_id, second.initiator_dir)
        assert second.tunnel_id == first.tunnel_id
        assert after.lankey == before.lankey
        assert after.fake_port == before.fake_port
        assert after.connector_contact_string == before.connector_contact_string
    finally:
        second.stop()


def test_no_lan_secret_mode_needs_no_handshake(tmp_path: Path) -> None:
    running = start_gateway(tmp_path, "--no-lan-secret")
    try:
        initiator = conf.load(running.tunnel_id, running.initiator_dir)
        assert initiator.lankey is None
        with socket.socket() as program:
            program.bind(running.listener_address)
            program.listen(1)
            assert initiator.connector_contact_string is not None
            with socket.create_connection(initiator.connector_contact_string.address) as client:
                conn, _ = program.accept()
                client.sendall(b"plain")
                assert conn.recv(10) == b"plain"
                conn.close()
    finally:
        running.stop()


def test_two_processes_one_per_access_point(tmp_path: Path) -> None:
    """--role listener and --role initiator, joined by a link address and a secret file."""
    listener_port, link_port = free_port(), free_port()
    secret_file = tmp_path / "link.secret"
    listener_ap = subprocess.Popen(
        streams_trace_command("gateway", "--role", "listener", "--listener-contact-string",
                              f"127.0.0.1:{listener_port}", "--listener-config-dir",
                              str(tmp_path / "listener"), "--link", f"127.0.0.1:{link_port}",
                              "--link-secret-file", str(secret_file)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert listener_ap.stdout is not None
    tunnel_id = listener_ap.stdout.readline().strip()
    assert (secret_file.stat().st_mode & 0o777) == 0o600
    initiator_ap = subprocess.Popen(
        streams_trace_command("gateway", "--role", "initiator", "--tunnel-id", tunnel_id,
                              "--initiator-config-dir", str(tmp_path / "initiator"),
                              "--link", f"127.0.0.1:{link_port}",
                              "--link-secret-file", str(secret_file)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert initiator_ap.stdout is not None
    try:
        assert initiator_ap.stdout.readline().strip() == tunnel_id
        running = Gateway(listener_ap, tunnel_id, tmp_path / "initiator",
                          tmp_path / "listener", listener_port)
        server = start_server(running, connections=3, reply_bytes=1000)
        client = peer("client", tunnel_id, tmp_path / "initiator", connections=3,
                      send_bytes=1000)
        code, rows, err = results(client, timeout=60)
        assert code == 0 and len(rows) == 3, err
        results(server)
    finally:
        for process in (initiator_ap, listener_ap):
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0


def test_an_initiator_without_the_link_secret_file_fails_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        streams_trace_command("gateway", "--role", "initiator", "--tunnel-id",
                              "0e8a675b-6b84-4220-89e4-a6a7a0d823fb", "--initiator-config-dir",
                              str(tmp_path), "--link", "127.0.0.1:9",
                              "--link-secret-file", str(tmp_path / "missing")),
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert "no link secret; copy the file" in result.stderr


def test_a_state_folder_it_cannot_write_fails_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        streams_trace_command("gateway", "--listener-contact-string",
                              f"127.0.0.1:{free_port()}",
                              "--initiator-config-dir", str(tmp_path / "initiator"),
                              "--listener-config-dir", str(tmp_path / "listener"),
                              "--state-dir", "/proc/no-such-folder"),
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1
    assert "cannot write the gateway state" in result.stderr
    # Found before anything else: no conf for a tunnel that never ran.
    assert not list(tmp_path.rglob("*.conf"))


@pytest.mark.parametrize("pump", ["native", "python"])
def test_a_stream_whose_far_side_is_down_fails_visibly(tmp_path: Path, pump: str) -> None:
    """The program got its ACCEPT, then the listener side could not reach the listening
    program: the stream must end in a reset, not as an empty but complete reply."""
    from streams_trace.client import connect_with_conf

    if pump == "native" and helper_path() is None:
        pytest.skip(NATIVE_MISSING)
    gateway = start_gateway(tmp_path, env={"STREAMS_TRACE_PUMP": pump})  # nobody listens
    try:
        with connect_with_conf(conf.load(gateway.tunnel_id, gateway.initiator_dir)) as sock:
            sock.settimeout(30)  # a program that waits for the server to speak first
            with pytest.raises(ConnectionResetError):
                sock.recv(100)
    finally:
        gateway.stop()


@pytest.mark.parametrize(("how", "pump"), [("group-sigterm", "native"), ("sigkill", "native"),
                                         ("helper-sigkill", "native"), ("sigkill", "python")])
def test_a_gateway_stopped_midstream_resets_its_streams(tmp_path: Path, how: str,
                                                       pump: str) -> None:
    """Ctrl-C on the terminal or systemd's stop reaches the whole process group; SIGKILL
    or the OOM killer can take the gateway or its helper: however the carrying process
    ends, a stream cut short must end in a reset, never a clean end of file."""
    from streams_trace.client import Listener, connect_with_conf

    if pump == "native" and helper_path() is None:
        pytest.skip(NATIVE_MISSING)
    port = free_port()
    initiator_dir, listener_dir = tmp_path / "initiator", tmp_path / "listener"
    process = subprocess.Popen(
        streams_trace_command("gateway", "--listener-contact-string", f"127.0.0.1:{port}",
                              "--initiator-config-dir", str(initiator_dir),
                              "--listener-config-dir", str(listener_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "STREAMS_TRACE_PUMP": pump}, start_new_session=True)
    try:
        assert process.stdout is not None
        tunnel_id = process.stdout.readline().strip()
        listener = Listener(conf.load(tunnel_id, listener_dir))

        def send_a_lot() -> None:
            try:
                conn, _ = listener.accept()
                with conn:
                    for _ in range(1000):
                        conn.sendall(b"x" * (1 << 20))
            except OSError:
                pass

        threading.Thread(target=send_a_lot, daemon=True).start()
        with connect_with_conf(conf.load(tunnel_id, initiator_dir)) as sock:
            sock.settimeout(30)
            received = 0
            while received < 4 << 20:
                received += len(sock.recv(1 << 16))
            if how == "group-sigterm":
                os.killpg(process.pid, signal.SIGTERM)
            elif how == "sigkill":
                process.kill()
            else:
                children = {int(pid) for task in Path(f"/proc/{process.pid}/task").iterdir()
                            for pid in (task / "children").read_text().split()}
                helpers = [pid for pid in children
                           if Path(f"/proc/{pid}/comm").read_text().strip() == "streams-splice"]
                assert helpers, children
                os.kill(helpers[0], signal.SIGKILL)
            with pytest.raises(ConnectionResetError):
                while sock.recv(1 << 16):
                    pass
        listener.close()
    finally:
        process.kill()
        process.communicate(timeout=20)


def test_the_gateway_takes_the_descriptors_its_hard_limit_allows(tmp_path: Path) -> None:
    """Four descriptors a stream: the common soft limit of 1024 would be a few hundred."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard descriptor limit is {hard} here: nothing to raise")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    process = subprocess.Popen(
        streams_trace_command("gateway", "--listener-contact-string", f"127.0.0.1:{free_port()}",
                              "--initiator-config-dir", str(tmp_path / "initiator"),
                              "--listener-config-dir", str(tmp_path / "listener")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=low_soft_limit)
    try:
        assert process.stdout is not None and process.stdout.readline().strip()
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        assert int(line.split()[3]) > 256, line
    finally:
        process.terminate()
        process.communicate(timeout=20)


def test_a_port_it_cannot_take_leaves_no_conf_behind(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        result = subprocess.run(
            streams_trace_command("gateway", "--listener-contact-string",
                                  f"127.0.0.1:{free_port()}",
                                  "--initiator-config-dir", str(tmp_path / "initiator"),
                                  "--listener-config-dir", str(tmp_path / "listener"),
                                  "--port", str(taken.getsockname()[1])),
            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 6, result.stderr
    assert result.stderr.count("\n") == 1 and "already in use" in result.stderr
    assert not list(tmp_path.rglob("*.conf"))  # no LAN secret for a tunnel that never ran


@pytest.mark.parametrize("listener_port", [40000, 40001])
def test_its_own_ports_are_never_the_listener_contacts(tmp_path: Path,
                                                        listener_port: int) -> None:
    """Until its program starts, the listener contact's port is free, and the kernel could
    give it to one of the gateway's own access points, which would then deliver every
    connection to itself (seen in CI). Here the kernel has two ports to hand out, the
    listener contact is on one of them (each in turn: the kernel tries one parity first)
    and the link, whose port the gateway picks, must get the other."""
    with one_host() as host:
        subprocess.run(["ip", "netns", "exec", host, "sysctl", "-qw",
                        "net.ipv4.ip_local_port_range=40000 40001"], check=True)
        running = start_gateway(tmp_path, "--port", "45000", listener_port=listener_port,
                                wrapper=["ip", "netns", "exec", host])
        try:
            state = read_state(running.initiator_dir / f"gateway-{running.tunnel_id}.toml")
            assert state["link"] == f"127.0.0.1:{80001 - listener_port}", state
        finally:
            running.stop()


def test_says_so_when_the_only_free_port_is_the_listener_contacts(tmp_path: Path) -> None:
    with one_host() as host:
        subprocess.run(["ip", "netns", "exec", host, "sysctl", "-qw",
                        "net.ipv4.ip_local_port_range=40000 40001"], check=True)
        result = subprocess.run(
            ["ip", "netns", "exec", host, *streams_trace_command(
                "gateway", "--listener-contact-string", "127.0.0.1:40001",
                "--initiator-config-dir", str(tmp_path / "initiator"),
                "--listener-config-dir", str(tmp_path / "listener"))],
            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 6, result.stderr
    assert result.stderr == ("streams-trace: error: cannot listen on 127.0.0.1: the only free "
                             "port is the listener contact string's, 40001\n")
    assert not list(tmp_path.rglob("*.conf"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listener-contact-string", "nonsense"], "is not HOST:PORT"),
        (["--listener-contact-string", "127.0.0.1:9", "--port", "9"],
         "--port 127.0.0.1:9 takes the listener contact string 127.0.0.1:9"),
        (["--listener-contact-string", "127.0.0.1:9", "--host", "0.0.0.0", "--port", "9"],
         "--port 0.0.0.0:9 takes the listener contact string"),
        (["--listener-contact-string", "localhost:9", "--role", "listener", "--link",
          "[::1]:9", "--link-secret-file", "/tmp/x"], "--link [::1]:9 takes the listener"),
        (["--initiator-config-dir", "/tmp/x"], "--listener-contact-string HOST:PORT is required"),
        (["--listener-contact-string", "127.0.0.1:9", "--tunnel-id", "x"], "is not a tunnel ID"),
        (["--listener-contact-string", "127.0.0.1:9", "--lifetime", "999999999999"],
         "is not in the range"),
        (["--listener-contact-string", "127.0.0.1:9", "--initiator-config-dir",
          "/nonexistent/streams-trace-\udcff"], "is not UTF-8"),
    ],
)
def test_bad_options_end_in_one_line_and_code_2(tmp_path: Path, args: list[str],
                                                message: str) -> None:
    env = {**os.environ, "STREAMS_TRACE_CONFIG_DIR": str(tmp_path)}
    result = subprocess.run(streams_trace_command("gateway", *args), capture_output=True,
                            text=True, timeout=60, cwd=REPO, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
