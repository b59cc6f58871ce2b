"""Three network namespaces that model the situation streams_trace exists for.

    compute  10.X.1.1 --veth-- 10.X.1.2  dtn  10.X.2.1 --veth-- 10.X.2.2  facility

``compute`` (where the client runs) reaches only the data transfer node ``dtn``,
where both access points of the local gateway run; ``dtn`` does not forward, so
``facility`` (where the server runs) is reachable only from the listener access
point. Everything is torn down afterwards, also when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def netns_unavailable() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs the ip command (Debian package iproute2)"
    probe = f"st-probe-{secrets.token_hex(3)}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if created.returncode != 0:
        return f"network namespaces are unavailable here: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Network:
    compute: str
    dtn: str
    facility: str
    compute_ip: str
    dtn_compute_ip: str  # the dtn's address on the compute side
    dtn_facility_ip: str  # the dtn's address on the facility side
    facility_ip: str

    def command(self, namespace: str, args: Sequence[str]) -> list[str]:
        """``args`` run inside ``namespace``."""
        return ["ip", "netns", "exec", namespace, *args]

    def popen(self, namespace: str, args: Sequence[str], **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(self.command(namespace, args), **kwargs)  # type: ignore

    def run(self, namespace: str, args: Sequence[str], **kwargs: object
            ) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(namespace, args), **kwargs)  # type: ignore


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def three_hosts() -> Iterator[Network]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    subnet = 100 + secrets.randbelow(150)  # 10.<subnet>.{1,2}.0/24, unlikely to clash
    names = [f"st-{role}-{tag}" for role in ("compute", "dtn", "facility")]
    net = Network(*names, f"10.{subnet}.1.1", f"10.{subnet}.1.2", f"10.{subnet}.2.1",
                  f"10.{subnet}.2.2")
    try:
        for name in names:
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        links = [(net.compute, net.compute_ip, net.dtn, net.dtn_compute_ip),
                 (net.dtn, net.dtn_facility_ip, net.facility, net.facility_ip)]
        for number, (left, left_ip, right, right_ip) in enumerate(links):
            a, b = f"st{tag}{number}a", f"st{tag}{number}b"
            _ip("link", "add", a, "netns", left, "type", "veth", "peer", "name", b,
                "netns", right)
            _ip("-n", left, "addr", "add", f"{left_ip}/24", "dev", a)
            _ip("-n", right, "addr", "add", f"{right_ip}/24", "dev", b)
            _ip("-n", left, "link", "set", a, "up")
            _ip("-n", right, "link", "set", b, "up")
        # The dtn must not route between its two sides: only the access points bridge them.
        net.run(net.dtn, ["sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
        yield net
    finally:
        _delete(names)


@contextmanager
def one_host() -> Iterator[str]:
    """A namespace of its own with only loopback up, for sysctls no other test should see."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"st-host-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _delete([name])


def _delete(names: Sequence[str]) -> None:
    """Kill what still runs in the namespaces, then remove them."""
    for name in names:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
