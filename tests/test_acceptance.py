"""Acceptance: real programs reach a server through the tunnel between network namespaces.

compute can reach only the initiator access point in dtn; facility is reachable
only from the listener access point (tests/netns.py builds this). Clients run
under streams-run in compute, servers under streams-run (listener side) in
facility, the local gateway in dtn. The programs are nobody's here: Tiled, curl,
busybox, iperf3, and Go and musl-static C programs built in the test.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams_trace import conf

from .conftest import REPO, ptrace_problem, streams_trace_command
from .netns import Network, three_hosts
from .test_run import PROGRAMS, STREAMS_RUN, build_c, build_go, busybox

PEERS = str(Path(__file__).with_name("peers.py"))
ACCEPTANCE = Path(__file__).with_name("acceptance")
FACILITY_PORT = 8443
SERVER_NAME = "tiled.facility.example"  # a real-looking name, known to no resolver here

_PTRACE_PROBLEM = ptrace_problem()


def needs_ptrace() -> None:
    if _PTRACE_PROBLEM:
        pytest.skip(_PTRACE_PROBLEM)


def needs_command(command: str, package: str) -> str:
    path = shutil.which(command)
    if path is None:
        pytest.skip(f"{command} is not installed (Debian: {package})")
    return path


def needs_module(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[{extra}]')")


@pytest.fixture
def network() -> Iterator[Network]:
    with three_hosts() as net:
        yield net


@dataclass
class Tunnel:
    net: Network
    tunnel_id: str
    initiator_dir: Path
    listener_dir: Path
    gateway: subprocess.Popen[str]
    data_path: str = "auto"  # streams-run's --data-path for the programs of a test

    @property
    def contact(self) -> tuple[str, str]:
        """The initiator side's contact string: globus.<TUNNEL_ID> and the fake port."""
        initiator = conf.load(self.tunnel_id, self.initiator_dir)
        return f"globus.{self.tunnel_id}", str(initiator.fake_port)

    def server(self, *command: str, options: Sequence[str] = (), ready: str | None = None,
               cwd: Path | None = None) -> subprocess.Popen[str]:
        """A listening program under streams-run in facility, once it listens."""
        process = self.net.popen(
            self.net.facility,
            [*STREAMS_RUN, "--config-dir", str(self.listener_dir), "--data-path",
             self.data_path, *options, self.tunnel_id, *command],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=cwd or REPO)
        if ready is not None:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert ready in line, (line, process.poll())
        self.wait_until_listening(process)
        return process

    def wait_until_listening(self, process: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listening = self.net.run(self.net.facility,
                                     ["ss", "-Hltn", f"sport = :{FACILITY_PORT}"],
                                     capture_output=True, text=True).stdout
            if listening.strip():
                return
            if process.poll() is not None:
                raise AssertionError(f"server ended: {process.communicate()}")
            time.sleep(0.1)
        raise AssertionError("the server did not start listening")

    def client(self, *command: str, options: Sequence[str] = (), input: str | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A program under streams-run in compute, to its end."""
        return self.net.run(
            self.net.compute,
            [*STREAMS_RUN, "--config-dir", str(self.initiator_dir), "--data-path",
             self.data_path, *options, self.tunnel_id, *command],
            input=input, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.terminate()
    try:
        return process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


@pytest.fixture
def tunnel(network: Network, tmp_path: Path) -> Iterator[Tunnel]:
    """The local gateway in dtn: initiator AP facing compute, listener contact in facility."""
    initiator_dir, listener_dir = tmp_path / "compute-conf", tmp_path / "facility-conf"
    gateway = network.popen(
        network.dtn,
        streams_trace_command("gateway", "--host", network.dtn_compute_ip,
                              "--listener-contact-string",
                              f"{network.facility_ip}:{FACILITY_PORT}",
                              "--initiator-config-dir", str(initiator_dir),
                              "--listener-config-dir", str(listener_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    tunnel_id = gateway.stdout.readline().strip()  # type: ignore[union-attr]
    assert tunnel_id, gateway.communicate(timeout=10)[1]
    try:
        yield Tunnel(network, tunnel_id, initiator_dir, listener_dir, gateway)
    finally:
        stop(gateway)


@pytest.fixture(params=["direct", "relay"])
def traced(request: pytest.FixtureRequest, tunnel: Tunnel) -> Tunnel:
    """The tunnel, with programs under streams-run in one data path (every scenario, both)."""
    needs_ptrace()
    tunnel.data_path = request.param
    return tunnel


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A CA file and a server certificate+key for SERVER_NAME, made by trustme."""
    needs_module("trustme", "acceptance")
    import trustme

    authority = trustme.CA()
    server_pem, ca_pem = tmp_path / "server.pem", tmp_path / "ca.pem"
    authority.issue_cert(SERVER_NAME).private_key_and_cert_chain_pem.write_to_path(
        str(server_pem))
    authority.cert_pem.write_to_path(str(ca_pem))
    return ca_pem, server_pem


def python_in(net: Network, namespace: str, code: str, timeout: float = 60
              ) -> subprocess.CompletedProcess[str]:
    return net.run(namespace, [sys.executable, "-c", code], capture_output=True, text=True,
                   timeout=timeout, cwd=REPO)


# -- the topology -----------------------------------------------------------------------------


def test_compute_cannot_reach_the_facility_directly(network: Network) -> None:
    server = network.popen(network.facility, [sys.executable, "-c", (
        f"import socket; s = socket.create_server(('0.0.0.0', {FACILITY_PORT}));"
        " print('up', flush=True); s.accept()")], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        probe = python_in(network, network.compute, (
            "import socket\n"
            f"try: socket.create_connection(('{network.facility_ip}', {FACILITY_PORT}), 3)\n"
            "except OSError as e: print(type(e).__name__, e.errno)\n"
            "else: print('connected')"))
        assert "connected" not in probe.stdout
        assert probe.stdout.split()[0] in ("OSError", "TimeoutError"), probe.stdout
        # From the dtn it is reachable: the path exists, only compute is cut off.
        dtn_probe = python_in(network, network.dtn, (
            f"import socket; socket.create_connection(('{network.facility_ip}', "
            f"{FACILITY_PORT}), 3); print('connected')"))
        assert dtn_probe.stdout.strip() == "connected"
    finally:
        server.kill()
        server.wait()


def test_client_api_through_the_tunnel(tunnel: Tunnel) -> None:
    net = tunnel.net
    server = net.popen(net.facility, [sys.executable, PEERS, "server", tunnel.tunnel_id,
                                      str(tunnel.listener_dir), "--connections", "4",
                                      "--reply-bytes", "3000000"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert server.stdout is not None and server.stdout.readline().strip() == "READY"
    client = net.run(net.compute, [sys.executable, PEERS, "client", tunnel.tunnel_id,
                                   str(tunnel.initiator_dir), "--connections", "4",
                                   "--send-bytes", "2000000"],
                     capture_output=True, text=True, timeout=120, cwd=REPO)
    assert client.returncode == 0, client.stderr
    server_out, _ = server.communicate(timeout=60)
    sent = sorted(json.loads(line)["sent_sha"] for line in server_out.splitlines())
    received = sorted(json.loads(line)["received_sha"] for line in client.stdout.splitlines())
    assert len(sent) == 4 and sent == received


# -- 1. Tiled, the seed's own example -----------------------------------------------------------


@pytest.fixture
def tiled_data(tmp_path: Path) -> Path:
    needs_module("tiled", "acceptance")
    import numpy

    rng = numpy.random.default_rng(20261122)
    path = tmp_path / "data.npz"
    numpy.savez(path, array=rng.random((16, 9)), x=numpy.arange(40), y=rng.normal(size=40))
    return path


def test_tiled_over_http_through_the_globus_name(traced: Tunnel, tiled_data: Path) -> None:
    server = traced.server(sys.executable, str(ACCEPTANCE / "tiled_server.py"), "0.0.0.0",
                           str(FACILITY_PORT), str(tiled_data))
    try:
        name, port = traced.contact
        result = traced.client(sys.executable, str(ACCEPTANCE / "tiled_client.py"),
                               f"http://{name}:{port}", str(tiled_data))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines() == ["array ok", "table ok"]
    finally:
        stop(server)


def test_tiled_over_https_with_a_globus_contact(traced: Tunnel, tiled_data: Path,
                                                certificate: tuple[Path, Path]) -> None:
    ca_pem, server_pem = certificate
    server = traced.server(sys.executable, str(ACCEPTANCE / "tiled_server.py"), "0.0.0.0",
                           str(FACILITY_PORT), str(tiled_data), str(server_pem),
                           str(server_pem))
    try:
        # The client uses the server's real name, so its certificate checks out.
        result = traced.client(sys.executable, str(ACCEPTANCE / "tiled_client.py"),
                               f"https://{SERVER_NAME}:{FACILITY_PORT}", str(tiled_data),
                               str(ca_pem),
                               options=("--globus-contact", f"{SERVER_NAME}:{FACILITY_PORT}"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines() == ["array ok", "table ok"]
    finally:
        stop(server)


# -- 2. curl ----------------------------------------------------------------------------------


def test_curl_http_and_https(traced: Tunnel, tmp_path: Path,
                             certificate: tuple[Path, Path]) -> None:
    needs_command("curl", "curl")
    ca_pem, server_pem = certificate
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello from the facility\n")
    name, port = traced.contact

    plain = traced.server(sys.executable, "-m", "http.server", "--bind", "0.0.0.0",
                          str(FACILITY_PORT), "--directory", str(tmp_path / "www"))
    try:
        result = traced.client("curl", "-sS", "--max-time", "30",
                               f"http://{name}:{port}/hello.txt")
        assert (result.returncode, result.stdout) == (0, "hello from the facility\n"), \
            result.stderr
    finally:
        stop(plain)

    secure = traced.server(sys.executable, str(ACCEPTANCE / "https_server.py"), "0.0.0.0",
                           str(FACILITY_PORT), str(tmp_path / "www"), str(server_pem),
                           ready="listening")
    try:
        result = traced.client("curl", "-sS", "--max-time", "30", "--cacert", str(ca_pem),
                               f"https://{SERVER_NAME}:{FACILITY_PORT}/hello.txt",
                               options=("--globus-contact", f"{SERVER_NAME}:{FACILITY_PORT}"))
        assert (result.returncode, result.stdout) == (0, "hello from the facility\n"), \
            result.stderr
    finally:
        stop(secure)


# -- 3. busybox, static on both sides -----------------------------------------------------------


def test_busybox_wget_against_busybox_httpd(traced: Tunnel, tmp_path: Path) -> None:
    box = busybox()
    (tmp_path / "index.html").write_text("static on both sides\n")
    server = traced.server(box, "httpd", "-f", "-p", f"0.0.0.0:{FACILITY_PORT}", "-h",
                           str(tmp_path))
    try:
        name, port = traced.contact
        result = traced.client(box, "wget", "-q", "-O", "-", f"http://{name}:{port}/index.html")
        assert (result.returncode, result.stdout) == (0, "static on both sides\n"), \
            result.stderr
    finally:
        stop(server)


def test_busybox_nc_both_ways(traced: Tunnel) -> None:
    box = busybox()
    server = traced.server(box, "nc", "-l", "-p", str(FACILITY_PORT))
    try:
        assert server.stdin is not None
        server.stdin.write("from the facility\n")
        server.stdin.close()  # nc -l sends this, then ends at the client's EOF
        server.stdin = None  # closed by hand: communicate() must not touch it
        name, port = traced.contact
        result = traced.client(box, "nc", "-w", "5", name, port, input="from compute\n")
        out, _ = server.communicate(timeout=30)
        assert out == "from compute\n"
        assert result.stdout == "from the facility\n", result.stderr
    finally:
        stop(server)


# -- 4. Go, 5. musl -----------------------------------------------------------------------------


def test_go_client_and_go_server(traced: Tunnel, tmp_path: Path) -> None:
    server_binary = build_go("server.go", tmp_path / "server-go")
    client_binary = build_go("client.go", tmp_path / "client-go")
    server = traced.server(str(server_binary), str(FACILITY_PORT), "2", "0.0.0.0",
                           ready="listening")
    try:
        name, port = traced.contact
        for _ in range(2):
            result = traced.client(str(client_binary), name, port)
            assert (result.returncode, result.stdout) == (0, "echo:hello go\n"), result.stderr
        out, err = server.communicate(timeout=30)
        assert (server.returncode, out) == (0, "served 2\n"), err
    finally:
        stop(server)


def test_musl_static_c_client(traced: Tunnel, tmp_path: Path) -> None:
    client_binary = build_c(tmp_path / "client-musl", static_musl=True)
    server = traced.server(sys.executable, str(PROGRAMS / "echo_server.py"),
                           str(FACILITY_PORT), "4", "0.0.0.0", ready="listening")
    try:
        name, port = traced.contact
        result = traced.client(str(client_binary), "-t", "2", "-c", "2", name, port)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1] == "ok 4"
    finally:
        stop(server)


# -- 6. iperf3 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_iperf3_both_directions(traced: Tunnel, direction: str,
                                record_property: pytest.RecordProperty) -> None:
    iperf3 = needs_command("iperf3", "iperf3")
    server = traced.server(iperf3, "-s", "-1", "-p", str(FACILITY_PORT))
    try:
        name, port = traced.contact
        reverse = ["-R"] if direction == "download" else []
        result = traced.client(iperf3, "-c", name, "-p", port, "-t", "3", "-J", *reverse)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
        report = json.loads(result.stdout)
        bits = report["end"]["sum_received"]["bits_per_second"]
        assert bits > 0
        record_property(f"iperf3_{direction}_gbit_s", round(bits / 1e9, 3))
        print(f"iperf3 {direction} through the tunnel: {bits / 1e9:.2f} Gbit/s")
    finally:
        stop(server)


# -- 7. what must never reach the server -----------------------------------------------------------


def test_unauthenticated_connection_from_the_dtn_never_reaches_the_server(
        traced: Tunnel) -> None:
    net = traced.net
    server = traced.server(sys.executable, str(PROGRAMS / "echo_server.py"),
                           str(FACILITY_PORT), "1", "0.0.0.0", ready="listening")
    try:
        probe = python_in(net, net.dtn, (
            "import socket\n"
            f"s = socket.create_connection(('{net.facility_ip}', {FACILITY_PORT}), timeout=5)\n"
            "s.sendall(b'intruder\\n')\n"
            "print(s.recv(100)[:6].hex())"))
        assert probe.stdout.strip() == b"GSLH\x01\x05".hex(), probe.stderr  # REJECT, closed
        # The server still waits for its one connection: a genuine one through the traced.
        name, port = traced.contact
        result = traced.client(sys.executable, str(PROGRAMS / "echo_client.py"), name, port)
        assert result.stdout == "echo:hello python\n", result.stderr
        out, err = server.communicate(timeout=30)
        # It served exactly one connection, and that one answered the genuine client.
        assert out.splitlines() == ["served 1"], err
    finally:
        stop(server)
