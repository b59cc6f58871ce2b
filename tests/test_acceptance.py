"""Acceptance: programs reach a server through the tunnel between network namespaces.

compute can reach only the initiator access point in dtn; facility is reachable
only from the listener access point. See tests/netns.py for the topology.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO, streams_trace_command
from .netns import Network, three_hosts

PEERS = str(Path(__file__).with_name("peers.py"))
FACILITY_PORT = 8443


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
        gateway.terminate()
        gateway.communicate(timeout=20)


def python_in(net: Network, namespace: str, code: str, timeout: float = 60
              ) -> subprocess.CompletedProcess[str]:
    return net.run(namespace, [sys.executable, "-c", code], capture_output=True, text=True,
                   timeout=timeout, cwd=REPO)


def test_compute_cannot_reach_the_facility_directly(network: Network) -> None:
    server = network.popen(network.facility, [sys.executable, "-c", (
        "import socket,sys; s=socket.create_server(('0.0.0.0', 8443)); print('up', flush=True);"
        " s.accept()")], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        probe = python_in(network, network.compute, (
            "import socket\n"
            f"try: socket.create_connection(('{network.facility_ip}', 8443), timeout=3)\n"
            "except OSError as e: print(type(e).__name__, e.errno)\n"
            "else: print('connected')"))
        assert "connected" not in probe.stdout
        assert probe.stdout.split()[0] in ("OSError", "TimeoutError"), probe.stdout
        # From the dtn it is reachable: the path exists, only compute is cut off.
        dtn_probe = python_in(network, network.dtn, (
            f"import socket; socket.create_connection(('{network.facility_ip}', 8443), 3);"
            " print('connected')"))
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


def test_unauthenticated_connection_from_the_dtn_never_reaches_the_server(
        tunnel: Tunnel) -> None:
    net = tunnel.net
    server = net.popen(net.facility, [sys.executable, PEERS, "server", tunnel.tunnel_id,
                                      str(tunnel.listener_dir), "--connections", "1"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        probe = python_in(net, net.dtn, (
            "import socket\n"
            f"s = socket.create_connection(('{net.facility_ip}', {FACILITY_PORT}), timeout=5)\n"
            "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
            "print(s.recv(100)[:6].hex())"))
        assert probe.stdout.strip() == b"GSLH\x01\x05".hex()  # a REJECT, then closed
    finally:
        server.terminate()
        out, err = server.communicate(timeout=20)
    assert out == ""  # the program's accept never returned
    assert "refused a connection" in err

