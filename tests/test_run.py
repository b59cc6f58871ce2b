"""streams-run against the real local gateway, with real programs on both sides.

Every test runs twice, in the direct data path (the supervisor connects the program's
own socket) and in the relay data path (loopback hops and a pump).

Static programs (busybox from Debian's busybox-static, a musl-static C client, Go built
with CGO_ENABLED=0) and dynamic ones (Python, a glibc C client, curl) resolve
globus.<TUNNEL_ID> and connect through the tunnel; listening programs only ever see
authenticated connections. The supervisor needs ptrace: the tests skip, saying so,
where it is not permitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams_trace import conf as confmod
from streams_trace.contact import parse_contact
from streams_trace.handshake import Connector
from streams_trace.lan import HandshakeError, handshake_blocking
from streams_trace.supervisor import dns, fastconnect
from streams_trace.supervisor.redirect import FAKE_NETWORK

from .conftest import (
    NATIVE_CONNECTS_MISSING,
    EchoListener,
    Gateway,
    free_port,
    ptrace_problem,
    streams_trace_command,
)

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = REPO / "tests" / "programs"
STREAMS_RUN = [sys.executable, "-c", "from streams_trace.cli.run import main; main()"]


def build_c(output: Path, *, static_musl: bool, source: str = "client.c") -> Path:
    compiler = "musl-gcc" if static_musl else "gcc"
    if shutil.which(compiler) is None:
        package = "musl-tools" if static_musl else "gcc"
        pytest.skip(f"{compiler} is not installed (Debian: {package})")
    flags = ["-static"] if static_musl else ["-pthread"]
    subprocess.run([compiler, *flags, "-O2", "-o", str(output), str(PROGRAMS / source)],
                   check=True, capture_output=True)
    return output


def build_zig_musl(output: Path, cache: Path) -> Path:
    """client.c, static against the musl that Zig carries (1.2.5, whose resolver reads
    answers with recvmsg), as Alpine 3.18 and later build programs. ``cache``: Zig's,
    where its musl is built once."""
    try:
        import ziglang  # noqa: F401  (only to know it is there: Zig runs as a program)
    except ImportError:
        pytest.skip("ziglang is not installed (PyPI: ziglang)")
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(cache), "ZIG_LOCAL_CACHE_DIR": str(cache)}
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target",
                    f"{platform.machine()}-linux-musl", "-static", "-O2", "-o", str(output),
                    str(PROGRAMS / "client.c")],
                   check=True, capture_output=True, env=env, timeout=900)
    return output


def build_go(source: str, output: Path) -> Path:
    if shutil.which("go") is None:
        pytest.skip("go is not installed (Debian: golang-go)")
    workdir = output.parent / (output.name + ".src")
    workdir.mkdir(exist_ok=True)
    shutil.copy(PROGRAMS / source, workdir / "main.go")
    env = {**os.environ, "CGO_ENABLED": "0", "GO111MODULE": "off",
           "GOCACHE": str(output.parent / "gocache"), "HOME": str(output.parent)}
    subprocess.run(["go", "build", "-o", str(output), "main.go"], cwd=workdir, env=env,
                   check=True, capture_output=True, timeout=600)
    return output


def build_java(output: Path) -> Path:
    """The Java test programs, compiled into ``output`` (a class path)."""
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("javac or java is not installed (Debian: default-jdk-headless)")
    output.mkdir(exist_ok=True)
    sources = [str(PROGRAMS / name) for name in ("EchoServer.java", "EchoClient.java",
                                                 "HttpFetch.java")]
    subprocess.run(["javac", "-d", str(output), *sources], check=True, capture_output=True,
                   timeout=300)
    return output


def streams_run(config_dir: Path, tunnel_id: str, *command: str, options: tuple[str, ...] = (),
                env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*STREAMS_RUN, "--config-dir", str(config_dir), *options, tunnel_id, *command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, **popen,  # type: ignore[arg-type]
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"timed out; stdout={out!r} stderr={err!r}") from None
    return process.returncode, out, err


def conf_with(source_dir: Path, tunnel_id: str, target: Path, **changes: object) -> Path:
    """A copy of a tunnel conf with some fields changed (contacts given as text)."""
    tunnel = confmod.load(tunnel_id, source_dir)
    for key in ("connector_contact_string", "listener_contact_string"):
        if isinstance(changes.get(key), str):
            changes[key] = parse_contact(str(changes[key]))
    confmod.save(dataclasses.replace(tunnel, **changes), target)  # type: ignore[arg-type]
    return target


_PTRACE_PROBLEM = ptrace_problem()
pytestmark = pytest.mark.skipif(_PTRACE_PROBLEM is not None, reason=_PTRACE_PROBLEM or "")


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(autouse=True, params=["direct", "direct-python", "direct-ptrace", "relay"])
def data_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs in both data paths (streams-run reads $STREAMS_TRACE_DATA_PATH), the
    direct one three times: connects held by seccomp user notification and redirected by
    the native connect path (the default; required wherever it was built), the same
    redirected in Python (STREAMS_TRACE_CONNECTS=python, what an install without a
    compiler gets), and connects stopped under ptrace (STREAMS_TRACE_SECCOMP=trace, what
    older kernels get)."""
    path, _, how = str(request.param).partition("-")
    monkeypatch.setenv("STREAMS_TRACE_DATA_PATH", path)
    if how == "ptrace":
        monkeypatch.setenv("STREAMS_TRACE_SECCOMP", "trace")
    elif how == "python":
        if not fastconnect.LIBRARY_PATH.exists():
            pytest.skip(NATIVE_CONNECTS_MISSING)
        monkeypatch.setenv(fastconnect.CONNECTS_ENV, "python")
    elif path == "direct" and fastconnect.LIBRARY_PATH.exists():
        monkeypatch.setenv(fastconnect.CONNECTS_ENV, "native")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("programs")


@pytest.fixture(scope="module")
def c_client(built: Path) -> Path:
    return build_c(built / "client-dynamic", static_musl=False)


@pytest.fixture(scope="module")
def musl_client(built: Path) -> Path:
    return build_c(built / "client-musl", static_musl=True)


@pytest.fixture(scope="module")
def new_musl_client(built: Path, pytestconfig: pytest.Config) -> Path:
    # Zig builds its musl in a minute or more: kept in pytest's cache between runs (none
    # with -p no:cacheprovider).
    store = getattr(pytestconfig, "cache", None)
    cache = store.mkdir("zig") if store is not None else built / "zig-cache"
    return build_zig_musl(built / "client-musl-1.2.5", cache)


@pytest.fixture(scope="module")
def sendto_client(built: Path) -> Path:
    return build_c(built / "dns-sendto-client", static_musl=False, source="dns_sendto_client.c")


@pytest.fixture(scope="module")
def go_client(built: Path) -> Path:
    return build_go("client.go", built / "client-go")


@pytest.fixture(scope="module")
def go_server(built: Path) -> Path:
    return build_go("server.go", built / "server-go")


@pytest.fixture(scope="module")
def java_classes(built: Path) -> Path:
    return build_java(built / "java")


def fake_contact(tunnel: Gateway) -> tuple[str, str]:
    initiator = confmod.load(tunnel.tunnel_id, tunnel.initiator_dir)
    return f"globus.{tunnel.tunnel_id}", str(initiator.fake_port)


def busybox() -> str:
    path = "/bin/busybox"
    if not os.path.exists(path):
        pytest.skip("static busybox is not installed (Debian: busybox-static)")
    # A dynamic ELF names its interpreter (PT_INTERP) near the start of the file.
    with open(path, "rb") as binary:
        head = binary.read(4096)
    if b"/ld-linux" in head or b"ld-musl" in head:
        pytest.skip("/bin/busybox is not static (Debian: busybox-static)")
    return path


def initiator_run(tunnel: Gateway, *command: str, **kwargs: object) -> tuple[int, str, str]:
    timeout = float(kwargs.pop("timeout", 60))  # type: ignore[arg-type]
    return finish(streams_run(tunnel.initiator_dir, tunnel.tunnel_id, *command,
                              **kwargs), timeout)  # type: ignore[arg-type]


def listener_program(tunnel: Gateway, *command: str, ready: str = "listening",
                     **kwargs: object) -> subprocess.Popen[str]:
    """Start a listening program under streams-run and wait until it says ``ready``."""
    process = streams_run(tunnel.listener_dir, tunnel.tunnel_id, *command, **kwargs)  # type: ignore[arg-type]
    assert process.stdout is not None
    line = process.stdout.readline()
    if ready not in line:
        process.kill()
        raise AssertionError(f"listener did not start: {line!r} {process.communicate()}")
    return process


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}")


# -- initiator side: each kind of program --------------------------------------------------


def test_dynamic_python_client(tunnel: Gateway, echo: EchoListener) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, sys.executable, str(PROGRAMS / "echo_client.py"),
                                   name, port, options=("-d",))
    assert (code, out) == (0, "echo:hello python\n"), err
    assert "authenticated" in err and "-> initiator access point" in err
    assert confmod.load(tunnel.tunnel_id, tunnel.initiator_dir).lankey not in err


def test_busybox_nc_static(tunnel: Gateway, echo: EchoListener) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = _run_with_input(tunnel, "hello busybox\n", busybox(), "nc", name, port)
    assert (code, out) == (0, "echo:hello busybox\n"), err


def _run_with_input(tunnel: Gateway, data: str, *command: str) -> tuple[int, str, str]:
    process = subprocess.Popen(
        [*STREAMS_RUN, "--config-dir", str(tunnel.initiator_dir), tunnel.tunnel_id, *command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(data, timeout=60)
    return process.returncode, out, err


@pytest.mark.parametrize("flags", [(), ("-n",), ("-6",), ("-n", "-6")],
                         ids=["blocking", "nonblocking", "ipv6-socket", "nonblocking-ipv6"])
def test_musl_static_client(tunnel: Gateway, echo: EchoListener, musl_client: Path,
                            flags: tuple[str, ...]) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(musl_client), *flags, name, port)
    assert (code, out) == (0, "echo:hello 0\nok 1\n"), err


@pytest.mark.parametrize("flags", [(), ("-6",)], ids=["plain", "ipv6-socket"])
def test_newer_musl_static_client(tunnel: Gateway, echo: EchoListener, new_musl_client: Path,
                                  flags: tuple[str, ...]) -> None:
    """musl 1.2.4 and later read DNS answers with recvmsg and check where they came from:
    the tunnel's name resolves all the same (no read of the program's is stopped)."""
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(new_musl_client), *flags, name, port)
    assert (code, out) == (0, "echo:hello 0\nok 1\n"), err


# How a resolver that sends with sendto (no connect) keeps the nameserver's address and
# reads the answer: (buffer, read). "kept": it sends to the buffer it checks the answer's
# source against (musl's ns[]); "copy": it sends from a copy and checks against its own
# (dnspython); "readonly": the buffer is on a read-only page (a const sockaddr).
# "recvmsg": musl 1.2.4 and later; "recvfrom": older musl, dnspython.
SENDTO_RESOLVERS = [("kept", "recvmsg"), ("kept", "recvfrom"), ("copy", "recvfrom"),
                    ("readonly", "recvmsg"), ("readonly", "recvfrom")]
# (nameserver, AF_INET6 socket): no nameserver answers there; the stand-in does.
SENDTO_NAMESERVERS = [("127.83.0.53", False), ("127.83.0.53", True), ("::1", True)]


def _can_bind(family: int, host: str, port: int) -> socket.socket | None:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


@pytest.mark.parametrize(("buffer", "read"), SENDTO_RESOLVERS,
                         ids=[f"{buffer}-{read}" for buffer, read in SENDTO_RESOLVERS])
@pytest.mark.parametrize(("nameserver", "ipv6_socket"), SENDTO_NAMESERVERS,
                         ids=["ipv4", "v4-mapped", "ipv6"])
def test_sendto_resolvers_get_the_tunnels_name_from_the_nameserver(
        tunnel: Gateway, sendto_client: Path, buffer: str, read: str, nameserver: str,
        ipv6_socket: bool) -> None:
    """Each way a static resolver keeps the nameserver's address and checks its answer's
    source gets the tunnel's address from the nameserver's stand-in, and the query never
    reaches the nameserver (watched where port 53 can be bound)."""
    name, _ = fake_contact(tunnel)
    family = socket.AF_INET6 if ":" in nameserver else socket.AF_INET
    leak_watch = _can_bind(family, nameserver, 53)
    try:
        code, out, err = initiator_run(
            tunnel, str(sendto_client), *(("-6",) if ipv6_socket else ()), "-b", buffer,
            "-r", read, nameserver, name, options=("-d",))
        if leak_watch is not None:
            leak_watch.setblocking(False)
            with pytest.raises(BlockingIOError):
                leak_watch.recvfrom(512)
    finally:
        if leak_watch is not None:
            leak_watch.close()
    assert (code, out) == (0, f"{FAKE_NETWORK[1]}\n"), err
    assert "sent to the tunnel's responder" in err
    # recvfrom stops in this process only from its query on (the program starts without).
    assert err.count("its recvfrom calls that ask for the source stop from now on") == 1, err


def test_a_query_past_the_last_stand_in_fails_and_never_leaves(
        tunnel: Gateway, sendto_client: Path) -> None:
    """Each nameserver a program sends the tunnel's names to gets a stand-in, up to
    MAX_STAND_INS: past that, the query fails (ENOBUFS) instead of going out as it is."""
    name, _ = fake_contact(tunnel)
    count = dns.MAX_STAND_INS + 1
    script = (f'for i in $(seq 1 {count}); do "$0" 127.83.1.$i "$1" || echo "failed $i"; '
              "done")
    code, out, err = initiator_run(tunnel, "sh", "-c", script, str(sendto_client), name)
    assert code == 0, err
    assert out == f"{FAKE_NETWORK[1]}\n" * dns.MAX_STAND_INS + f"failed {count}\n", err
    assert "sendto: No buffer space available" in err


# What the programs below that resolve with dnspython share.
DNSPYTHON = """
import os, sys, threading
import dns.resolver

def filters():
    # The seccomp filter counts of this process's threads ("3", or "3,4" where they differ).
    counts = set()
    for thread in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{thread}/status") as status:
            counts.update(line.split()[1] for line in status
                          if line.startswith("Seccomp_filters:"))
    return ",".join(sorted(counts)) or "unknown"

def lookup(name, nameserver):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [nameserver]
    resolver.lifetime = 5
    return resolver.resolve(name, "A")[0].address
"""

# Prints the seccomp filters on each of its two threads before and after one lookup with
# dnspython of the name in argv[1] (from nameserver argv[2]).
FILTERS_AROUND_A_LOOKUP = DNSPYTHON + """
done = threading.Event()
waiting = threading.Thread(target=done.wait)
waiting.start()
print(filters())
if sys.argv[1] != "-":
    print(lookup(sys.argv[1], sys.argv[2]))
print(filters())
done.set()
"""


@pytest.mark.parametrize("lookup", [True, False], ids=["tunnel-name", "no-lookup"])
def test_recvfrom_stops_only_in_a_process_that_sent_to_a_stand_in(
        tunnel: Gateway, lookup: bool) -> None:
    """The program starts with no filter on recvfrom (UDP programs read at full speed):
    its first query for the tunnel's names adds one, on all its threads."""
    pytest.importorskip("dns.resolver", reason="dnspython is not installed (PyPI: dnspython)")
    name, _ = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, sys.executable, "-c", FILTERS_AROUND_A_LOOKUP,
                                   name if lookup else "-", "127.83.0.53")
    assert code == 0, err
    before, *rest = out.split()
    if before == "unknown":
        pytest.skip("this kernel does not say how many seccomp filters a thread has (5.9+)")
    if lookup:
        assert rest == [str(FAKE_NETWORK[1]), str(int(before) + 1)], out
    else:
        assert rest == [before], out


LOOKUPS_IN_A_CHILD_AND_A_NEW_IMAGE = DNSPYTHON + """
print(lookup(*sys.argv[1:3]), filters(), flush=True)
if len(sys.argv) == 3:
    child = os.fork()
    if child == 0:
        print(lookup(*sys.argv[1:3]), filters(), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:], "again"])
"""


def test_a_child_and_a_new_image_keep_the_recvfrom_filter(tunnel: Gateway,
                                                           tmp_path: Path) -> None:
    """A forked child and a new program image keep the process's recvfrom filter: their
    own queries for the tunnel's names resolve without a second copy of it."""
    pytest.importorskip("dns.resolver", reason="dnspython is not installed (PyPI: dnspython)")
    name, _ = fake_contact(tunnel)
    program = tmp_path / "lookups.py"
    program.write_text(LOOKUPS_IN_A_CHILD_AND_A_NEW_IMAGE)
    code, out, err = initiator_run(tunnel, sys.executable, str(program), name, "127.83.0.53")
    assert code == 0, err
    lines = out.splitlines()
    if lines and lines[0].endswith("unknown"):
        pytest.skip("this kernel does not say how many seccomp filters a thread has (5.9+)")
    assert len(lines) == 3 and len(set(lines)) == 1, out  # parent, child, new image
    assert lines[0].split()[0] == str(FAKE_NETWORK[1]), out


THREAD_WITH_A_FILTER_OF_ITS_OWN_EXECS = DNSPYTHON + """
from streams_trace.trace import seccomp

if sys.argv[3:] == ["again"]:
    print("new image", lookup(*sys.argv[1:3]), flush=True)
    sys.exit(0)
ready, go = threading.Event(), threading.Event()

def other():
    seccomp.install([(seccomp.BPF_RET | seccomp.BPF_K, 0, 0, seccomp.SECCOMP_RET_ALLOW)])
    ready.set()
    go.wait()
    os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:3], "again"])

threading.Thread(target=other).start()
ready.wait()
print("main thread", lookup(*sys.argv[1:3]), flush=True)
go.set()
threading.Event().wait()  # until the exec ends this image
"""


def test_a_thread_with_a_filter_of_its_own(tunnel: Gateway, tmp_path: Path) -> None:
    """One thread has a seccomp filter of its own, so the recvfrom filter cannot go on
    all threads at once: the thread that resolves takes it alone, and a new image that
    another thread execs (without it) adds its own; both resolve the tunnel's name."""
    pytest.importorskip("dns.resolver", reason="dnspython is not installed (PyPI: dnspython)")
    name, _ = fake_contact(tunnel)
    program = tmp_path / "lookups.py"
    program.write_text(THREAD_WITH_A_FILTER_OF_ITS_OWN_EXECS)
    code, out, err = initiator_run(tunnel, sys.executable, str(program), name, "127.83.0.53")
    address = FAKE_NETWORK[1]
    assert (code, out) == (0, f"main thread {address}\nnew image {address}\n"), err


def test_dnspython_resolves_the_tunnels_name(tunnel: Gateway, echo: EchoListener) -> None:
    """dnspython asks the nameserver itself and takes answers only from the address it
    keeps (no resolv.conf read, no getaddrinfo): the tunnel's name resolves and connects."""
    pytest.importorskip("dns.resolver", reason="dnspython is not installed (PyPI: dnspython)")
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, sys.executable, str(PROGRAMS / "dnspython_client.py"),
                                   "127.83.0.53", name, port)
    assert (code, out) == (0, "echo:hello dnspython\n"), err


@pytest.mark.parametrize("flags", [(), ("-n",), ("-6",)],
                         ids=["blocking", "nonblocking", "ipv6-socket"])
def test_glibc_dynamic_client(tunnel: Gateway, echo: EchoListener, c_client: Path,
                              flags: tuple[str, ...]) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(c_client), *flags, name, port)
    assert (code, out) == (0, "echo:hello 0\nok 1\n"), err


def test_go_static_client(tunnel: Gateway, echo: EchoListener, go_client: Path) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(go_client), name, port)
    assert (code, out) == (0, "echo:hello go\n"), err


def test_ipv6_socket_to_an_ipv6_contact(tunnel: Gateway, echo: EchoListener) -> None:
    """A --globus-contact [::1]:PORT: an AF_INET6 socket, an IPv6 destination."""
    port = free_port()
    code, out, err = initiator_run(
        tunnel, sys.executable, str(PROGRAMS / "echo_client.py"), "::1", str(port),
        options=("--globus-contact", f"[::1]:{port}"))
    assert (code, out) == (0, "echo:hello python\n"), err


def test_an_ipv6_only_socket_to_an_ipv6_contact(tunnel: Gateway, echo: EchoListener) -> None:
    """Go's Dial("tcp6") sets IPV6_V6ONLY: the access point, IPv4 here, is reached all
    the same."""
    port = free_port()
    program = ("import socket, sys\n"
               "s = socket.socket(socket.AF_INET6)\n"
               "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
               "s.settimeout(20)\n"
               "s.connect(('::1', int(sys.argv[1])))\n"
               "s.sendall(b'v6 only\\n')\n"
               "print(s.recv(100).decode(), end='')\n")
    code, out, err = initiator_run(tunnel, sys.executable, "-c", program, str(port),
                                   options=("--globus-contact", f"[::1]:{port}"))
    assert (code, out) == (0, "echo:v6 only\n"), err


def test_an_access_point_given_by_name(tunnel: Gateway, echo: EchoListener,
                                       tmp_path: Path) -> None:
    """A hand-written conf names the access point (localhost:PORT): it is looked up once,
    and IPv4 and IPv6 sockets alike reach it (an IPv6 one was refused: the supervisor
    gave the kernel "::ffff:localhost")."""
    access_point = confmod.load(tunnel.tunnel_id, tunnel.initiator_dir).connector_contact_string
    assert access_point is not None
    named = conf_with(tunnel.initiator_dir, tunnel.tunnel_id, tmp_path / "named",
                      connector_contact_string=f"localhost:{access_point.port}")
    _, port = fake_contact(tunnel)
    program = ("import socket, sys\n"
               "for family, host in ((socket.AF_INET, '127.240.83.1'),\n"
               "                     (socket.AF_INET6, '::ffff:127.240.83.1')):\n"
               "    with socket.socket(family) as s:\n"
               "        s.settimeout(20)\n"
               "        s.connect((host, int(sys.argv[1])))\n"
               "        s.sendall(b'by name\\n')\n"
               "        print(s.recv(100).decode(), end='')\n")
    code, out, err = finish(streams_run(named, tunnel.tunnel_id, sys.executable, "-c",
                                        program, port))
    assert (code, out) == (0, "echo:by name\n" * 2), err


def test_a_contact_on_port_53_goes_to_the_tunnel(tunnel: Gateway, echo: EchoListener) -> None:
    """A --globus-contact HOST:53 (a DNS-over-TCP service at the facility, say): its
    connects are the tunnel's, not a nameserver's to leave alone."""
    code, out, err = initiator_run(
        tunnel, sys.executable, str(PROGRAMS / "echo_client.py"), "127.0.0.9", "53",
        options=("--globus-contact", "127.0.0.9:53"))
    assert (code, out) == (0, "echo:hello python\n"), err


def test_globus_contact_name_resolves_only_inside_the_program(tunnel: Gateway,
                                                              echo: EchoListener) -> None:
    """A real-looking name that neither DNS nor /etc/hosts knows: it resolves under
    streams-run (so TLS could keep the name) and goes to the tunnel."""
    name = "data.streams-trace-test.invalid"
    with pytest.raises(OSError):
        socket.getaddrinfo(name, 443)
    code, out, err = initiator_run(
        tunnel, sys.executable, str(PROGRAMS / "echo_client.py"), name, "443",
        options=("--globus-contact", f"{name}:443", "-d"))
    assert (code, out) == (0, "echo:hello python\n"), err
    assert f"to {name}:443" in err


def test_a_globus_contact_name_in_the_hosts_file_still_goes_to_the_tunnel(
        tunnel: Gateway, echo: EchoListener, tmp_path: Path) -> None:
    """glibc reads /etc/hosts before asking DNS, so a cluster-internal name listed there
    never reaches the responder: its listed address is a tunnel destination too."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private /etc/hosts")
    name, port = "data.streams-trace.test", free_port()
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.9 other.test {name}  # listed\n")
    script = (f"mount --bind {hosts} /etc/hosts && {' '.join(STREAMS_RUN[:2])} "
              f"'{STREAMS_RUN[2]}' --config-dir {tunnel.initiator_dir} --globus-contact "
              f"{name}:{port} {tunnel.tunnel_id} {sys.executable} "
              f"{PROGRAMS / 'echo_client.py'} {name} {port}")
    process = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                             text=True, timeout=60)
    assert (process.returncode, process.stdout) == (0, "echo:hello python\n"), process.stderr


def test_curl_against_a_python_http_server_under_streams_run(tunnel: Gateway,
                                                            tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (Debian: curl)")
    (tmp_path / "hello.txt").write_text("hello over the tunnel\n")
    server = streams_run(tunnel.listener_dir, tunnel.tunnel_id, sys.executable, "-m",
                         "http.server", "--bind", "127.0.0.1", str(tunnel.listener_port),
                         cwd=tmp_path)
    try:
        wait_for_port(tunnel.listener_port)
        name, port = fake_contact(tunnel)
        code, out, err = initiator_run(tunnel, "curl", "-sS", "--max-time", "20",
                                       f"http://{name}:{port}/hello.txt")
        assert (code, out) == (0, "hello over the tunnel\n"), err
    finally:
        server.terminate()
        finish(server)


def test_busybox_wget_and_httpd_both_static_both_sides(tunnel: Gateway, tmp_path: Path) -> None:
    box = busybox()
    (tmp_path / "index.html").write_text("static on both sides\n")
    server = streams_run(tunnel.listener_dir, tunnel.tunnel_id, box, "httpd", "-f", "-p",
                         f"127.0.0.1:{tunnel.listener_port}", "-h", str(tmp_path))
    try:
        wait_for_port(tunnel.listener_port)
        name, port = fake_contact(tunnel)
        code, out, err = initiator_run(tunnel, box, "wget", "-q", "-O", "-",
                                       f"http://{name}:{port}/index.html")
        assert (code, out) == (0, "static on both sides\n"), err
    finally:
        server.terminate()
        finish(server)


# -- both sides, listener side ---------------------------------------------------------------


def test_go_server_and_go_client_both_under_streams_run(tunnel: Gateway, go_server: Path,
                                                       go_client: Path) -> None:
    server = listener_program(tunnel, str(go_server), str(tunnel.listener_port), "2")
    name, port = fake_contact(tunnel)
    for _ in range(2):
        code, out, err = initiator_run(tunnel, str(go_client), name, port)
        assert (code, out) == (0, "echo:hello go\n"), err
    code, out, err = finish(server)
    assert (code, out) == (0, "served 2\n"), err


def test_java_server_and_java_client_both_under_streams_run(tunnel: Gateway,
                                                           java_classes: Path) -> None:
    """The JVM: dual-stack IPv6 sockets (v4-mapped addresses), names through glibc, a
    connect with a timeout on the client, a Selector's non-blocking accept on the server."""
    server = listener_program(tunnel, "java", "-cp", str(java_classes), "EchoServer",
                              str(tunnel.listener_port), "2")
    name, port = fake_contact(tunnel)
    for _ in range(2):
        code, out, err = initiator_run(tunnel, "java", "-cp", str(java_classes), "EchoClient",
                                       name, port)
        assert (code, out) == (0, "echo:hello java\n"), err
    code, out, err = finish(server)
    assert (code, out) == (0, "served 2\n"), err


def test_java_http_client_on_many_threads_through_a_globus_contact_name(
        tunnel: Gateway, java_classes: Path, tmp_path: Path) -> None:
    """java.net.http.HttpClient (non-blocking connects from its selector thread) fetching
    a file 200 times on 16 threads from a Python HTTP server, both under streams-run: every
    body arrives whole. The name is a --globus-contact one: java.net.URI refuses a host
    whose last label starts with a digit, as globus.<TUNNEL_ID> often does (man page)."""
    body = os.urandom(200_000)
    (tmp_path / "data.bin").write_bytes(body)
    server = streams_run(tunnel.listener_dir, tunnel.tunnel_id, sys.executable, "-m",
                         "http.server", "--bind", "127.0.0.1", str(tunnel.listener_port),
                         cwd=tmp_path)
    try:
        wait_for_port(tunnel.listener_port)
        name = "data.streams-trace-test.invalid"
        code, out, err = initiator_run(
            tunnel, "java", "-cp", str(java_classes), "HttpFetch",
            f"http://{name}:8443/data.bin", "16", "200",
            options=("--globus-contact", f"{name}:8443"), timeout=120)
        assert (code, out) == (0, f"{hashlib.sha256(body).hexdigest()} 200\n"), err
    finally:
        server.terminate()
        finish(server)


def test_python_server_and_musl_client_both_under_streams_run(tunnel: Gateway,
                                                              musl_client: Path) -> None:
    server = listener_program(tunnel, sys.executable, str(PROGRAMS / "echo_server.py"),
                              str(tunnel.listener_port), "1", options=("-d",))
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(musl_client), name, port)
    assert (code, out) == (0, "echo:hello 0\nok 1\n"), err
    code, out, err = finish(server)
    assert (code, out) == (0, "served 1\n"), err
    assert "accept fd" in err and "authenticated" in err


def _connect_with_secret(port: int, tunnel: Gateway, secret: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    handshake_blocking(sock, Connector(secret, tunnel.tunnel_id, timeout=5))
    return sock


def _listener_secret(tunnel: Gateway) -> bytes:
    secret = confmod.load(tunnel.tunnel_id, tunnel.listener_dir).secret
    assert secret is not None
    return secret


@pytest.mark.parametrize("server_kind", ["python-blocking-accept", "go-nonblocking-accept",
                                         "java-selector-accept"])
def test_wrong_secret_connection_never_reaches_the_program(
        tunnel: Gateway, server_kind: str, request: pytest.FixtureRequest) -> None:
    if server_kind.startswith("go"):
        go_server = request.getfixturevalue("go_server")
        command = [str(go_server), str(tunnel.listener_port), "1"]
    elif server_kind.startswith("java"):
        java_classes = request.getfixturevalue("java_classes")
        command = ["java", "-cp", str(java_classes), "EchoServer", str(tunnel.listener_port),
                   "1"]
    else:
        command = [sys.executable, str(PROGRAMS / "echo_server.py"),
                   str(tunnel.listener_port), "1"]
    server = listener_program(tunnel, *command, options=("-d",))
    # Wrong secret, then a connection that says nothing at all: both refused unseen.
    with pytest.raises(HandshakeError):
        _connect_with_secret(tunnel.listener_port, tunnel, b"not the secret")
    with socket.create_connection(("127.0.0.1", tunnel.listener_port)) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        raw.settimeout(15)
        answer = b""
        while chunk := raw.recv(100):
            answer += chunk
        # The supervisor's REJECT, then end of file: the program never echoed it.
        assert answer.startswith(b"GSLH") and b"echo:" not in answer
    # The program's one accept still waits, and gets the good connection.
    with _connect_with_secret(tunnel.listener_port, tunnel, _listener_secret(tunnel)) as good:
        good.sendall(b"hello good\n")
        good.shutdown(socket.SHUT_WR)
        good.settimeout(15)
        assert good.recv(100) == b"echo:hello good\n"
    code, out, err = finish(server)
    assert (code, out) == (0, "served 1\n"), err
    assert err.count("the program never sees it") == 2, err
    assert _listener_secret(tunnel).decode() not in err


def test_refused_connections_under_a_storm_of_signals(tunnel: Gateway) -> None:
    """A listening program takes SIGALRM every ms while connections fail the handshake: the
    supervisor closes each inside the program and runs its accept again, and the signals
    must not land in the middle (its accept returns the good connection, nothing leaks)."""
    server = listener_program(
        tunnel, sys.executable, "-c",
        "import os, signal, socket, sys\n"
        "signal.signal(signal.SIGALRM, lambda *_: None)\n"
        "server = socket.socket()\n"
        "server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"server.bind(('127.0.0.1', {tunnel.listener_port}))\n"
        "server.listen(16)\n"
        "before = len(os.listdir('/proc/self/fd'))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n"
        "print('listening', flush=True)\n"
        "conn, _ = server.accept()\n"
        "data = b''\n"
        "while not data.endswith(b'\\n'):\n"
        "    data += conn.recv(100)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "print('got', data.decode().strip(), 'new descriptors', "
        "len(os.listdir('/proc/self/fd')) - before, flush=True)\n")
    for _ in range(20):  # not the protocol: refused, the program never sees them
        with socket.create_connection(tunnel.listener_address, timeout=10) as bad:
            bad.sendall(b"GET / HTTP/1.0\r\n\r\n")
            bad.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while bad.recv(100):
                    pass
    with _connect_with_secret(tunnel.listener_port, tunnel, _listener_secret(tunnel)) as good:
        good.sendall(b"good\n")
        code, out, err = finish(server)
    assert (code, out) == (0, "got good new descriptors 1\n"), err


def test_a_listening_socket_handed_to_a_child_keeps_the_tunnel_port(tunnel: Gateway,
                                                                     tmp_path: Path) -> None:
    """The process that bound the tunnel port forks and leaves; its child accepts."""
    done = tmp_path / "done"
    server = listener_program(
        tunnel, "sh", "-c",
        f"{sys.executable} {PROGRAMS / 'odd_server.py'} hand-over {tunnel.listener_port} "
        f"{done}; "
        f"while [ ! -e {done} ]; do sleep 0.05; done")
    time.sleep(0.5)  # the binding process has left by now
    with _connect_with_secret(tunnel.listener_port, tunnel, _listener_secret(tunnel)) as good:
        good.sendall(b"handed\n")
        good.settimeout(15)
        assert good.recv(100) == b"echo:handed\n"
    code, _, err = finish(server)
    assert code == 0, err


@pytest.mark.parametrize("how", ["-p", "env"])
def test_extra_listener_ports(tunnel: Gateway, how: str) -> None:
    port = free_port()
    options: tuple[str, ...] = ("-p", str(port)) if how == "-p" else ()
    env = {f"GLOBUS_STREAMS_INTERCEPT_PORT_{port}": tunnel.tunnel_id} if how == "env" else {}
    server = listener_program(tunnel, sys.executable, str(PROGRAMS / "echo_server.py"),
                              str(port), "1", options=options, env=env)
    with pytest.raises(HandshakeError):
        _connect_with_secret(port, tunnel, b"wrong")
    with _connect_with_secret(port, tunnel, _listener_secret(tunnel)) as good:
        good.sendall(b"x\n")
        good.settimeout(15)
        assert good.recv(100) == b"echo:x\n"
    assert finish(server)[:2] == (0, "served 1\n")


# -- many connections, threads and processes -----------------------------------------------


def test_64_threads_times_20_connections(tunnel: Gateway, echo: EchoListener,
                                         c_client: Path) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(c_client), "-t", "64", "-c", "20", name, port,
                                   timeout=300)
    assert code == 0 and out.endswith("ok 1280\n"), (out[-200:], err[-2000:])


def test_a_storm_of_signals_does_not_cut_a_connect_short(tunnel: Gateway,
                                                         echo: EchoListener) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, sys.executable,
                                   str(PROGRAMS / "signal_storm_client.py"), name, port, "100")
    assert (code, out) == (0, "ok 100 signals yes\n"), err


def test_debug_says_how_connects_are_held(tunnel: Gateway, echo: EchoListener,
                                          data_path: str) -> None:
    name, port = fake_contact(tunnel)
    code, _, err = initiator_run(tunnel, sys.executable, str(PROGRAMS / "echo_client.py"),
                                   name, port, options=("-d",))
    assert code == 0, err
    release = re.match(r"(\d+)\.(\d+)", platform.release())
    killable_waits = release is not None and (int(release[1]), int(release[2])) >= (5, 19)
    if (data_path == "direct" and os.environ.get("STREAMS_TRACE_SECCOMP") != "trace"
            and killable_waits):
        if os.environ.get(fastconnect.CONNECTS_ENV) == "native":
            assert "(seccomp filter, connects by user notification, redirected in native " \
                   "code)" in err
            assert ": authenticated in " in err and "(native connect path)" in err, err
        else:
            assert "(seccomp filter, connects by user notification)" in err
    else:
        assert "(seccomp filter, connects stop under ptrace" in err


def test_forking_client(tunnel: Gateway, echo: EchoListener, musl_client: Path) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(musl_client), "-f", "8", "-c", "5", name, port)
    assert (code, out) == (0, "forks ok 8\n"), err


def test_a_program_whose_main_thread_has_exited_still_connects(
        tunnel: Gateway, echo: EchoListener, c_client: Path, data_path: str) -> None:
    """The main thread leaves with pthread_exit and the others connect: the process id's
    /proc entry and pidfd no longer reach the program's memory and descriptors."""
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(c_client), "-x", "-t", "4", "-c", "5", name,
                                   port)
    release = re.match(r"(\d+)\.(\d+)", platform.release())
    thread_pidfds = release is not None and (int(release[1]), int(release[2])) >= (6, 9)
    if data_path == "direct" and not thread_pidfds:
        # Nothing reaches the sockets then: each connect fails, none hangs.
        assert code == 1 and "connect: Connection refused" in out, (out, err)
        assert "try --data-path relay" in err
    else:
        assert (code, out.splitlines()[-1]) == (0, "ok 20"), (out, err)


def test_a_refused_connection_leaves_the_accepts_address_buffer_alone(
        tunnel: Gateway, built: Path) -> None:
    """The accept's address buffer is smaller than an IPv6 peer's address: after a
    connection that fails the handshake, the accept that runs again must be given the
    room the program gave, not the refused peer's length (it wrote 12 bytes past it)."""
    from streams_trace.client import connect_with_conf

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    program = built / "small_accept"
    if not program.exists():
        subprocess.run(["gcc", "-O2", "-o", str(program), str(PROGRAMS / "small_accept.c")],
                       check=True)
    server = listener_program(tunnel, str(program), str(tunnel.listener_port))
    try:
        with socket.create_connection(tunnel.listener_address, timeout=20) as stranger:
            stranger.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                while stranger.recv(100):
                    pass
        with connect_with_conf(confmod.load(tunnel.tunnel_id, tunnel.initiator_dir)) as client:
            client.settimeout(20)
            client.sendall(b"hi\n")
            assert client.recv(100) == b"echo:hi\n"
        code, out, err = finish(server)
        assert (code, out) == (0, "canary intact\n"), err
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_misused_sockets_get_the_kernels_errors(tunnel: Gateway, echo: EchoListener) -> None:
    """A connect on a connected socket or a closed descriptor, an accept on a closed one:
    the kernel's answers, no handshake into a live stream, no connection for nothing."""
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, sys.executable,
                                   str(PROGRAMS / "descriptor_errors.py"), "client", name, port)
    # Connecting a connected socket again: EISCONN, or 0 where the socket's own
    # non-blocking connect had finished (relay mode, where the program made it).
    again, *rest = out.splitlines()
    assert code == 0 and again in ("connect again: EISCONN", "connect again: 0"), (out, err)
    assert rest == ["echo ok", "connect closed fd: EBADF", "connect a file to port 53: ENOTSOCK",
                    "connect bad address: EFAULT"], (out, err)
    assert "could not check it" not in err
    time.sleep(0.5)  # a connection for nothing would have reached the listener by now
    assert echo.served == 1
    listen_port = free_port()
    code, out, err = finish(streams_run(
        tunnel.listener_dir, tunnel.tunnel_id, sys.executable,
        str(PROGRAMS / "descriptor_errors.py"), "listener", str(listen_port),
        options=("-p", str(listen_port))))
    assert (code, out) == (0, "accept closed fd: EBADF\nbind bad address: EFAULT\n"), err
    assert "could not check it" not in err


# -- faults --------------------------------------------------------------------------------


def test_access_point_down_gives_econnrefused_fast(tunnel: Gateway, tmp_path: Path,
                                                   c_client: Path) -> None:
    down = conf_with(tunnel.initiator_dir, tunnel.tunnel_id, tmp_path / "down",
                     connector_contact_string=f"127.0.0.1:{free_port()}")
    name, port = fake_contact(tunnel)
    started = time.monotonic()
    code, out, err = finish(streams_run(down, tunnel.tunnel_id, str(c_client), name, port,
                                        options=("-d",)), 30)
    assert time.monotonic() - started < 10
    assert code == 1 and out == "connect: Connection refused\nok 0\n", err
    assert "access point unreachable" in err and "ECONNREFUSED" in err


def test_wrong_initiator_secret_gives_econnrefused(tunnel: Gateway, tmp_path: Path,
                                                   c_client: Path) -> None:
    wrong = conf_with(tunnel.initiator_dir, tunnel.tunnel_id, tmp_path / "wrong",
                      lankey="definitely-not-the-secret")
    name, port = fake_contact(tunnel)
    code, out, err = finish(streams_run(wrong, tunnel.tunnel_id, str(c_client), name, port,
                                        options=("-d",)), 30)
    assert code == 1 and out == "connect: Connection refused\nok 0\n", err
    assert "handshake failed" in err and "definitely-not-the-secret" not in err
    # A refused connect leaves the socket unconnected: trying again on it is a new connect.
    code, out, err = finish(streams_run(wrong, tunnel.tunnel_id, sys.executable,
                                        str(PROGRAMS / "descriptor_errors.py"), "retry", name,
                                        port), 30)
    assert (code, out) == (0, "connect, again: ECONNREFUSED ECONNREFUSED\n"), err


# What a misbehaving access point sends after HELLO, the -d line's reason, and what the
# program's side must send back before closing (b"": nothing).
HANDSHAKE_FAULTS = {
    "reject": (bytes.fromhex("47534c480105000107"),
               "peer refused the handshake (its reason: bad_proof)", b""),
    "bad magic": (b"HTTP/1.1 400 Bad Request\r\n", "peer does not speak the LAN handshake",
                  bytes.fromhex("47534c480105000101")),
    "oversized": (bytes.fromhex("47534c4801020041"), "peer sent an oversized message",
                  bytes.fromhex("47534c480105000105")),
    "out of order": (bytes.fromhex("47534c4801040000"), "peer sent a message out of order",
                     bytes.fromhex("47534c480105000103")),
    "wrong proof": (bytes.fromhex("47534c4801020040") + bytes(64),
                    "peer's proof does not match the LAN secret",
                    bytes.fromhex("47534c480105000107")),
    "other version": (bytes.fromhex("47534c4802020040"),
                      "peer speaks another version of the LAN handshake",
                      bytes.fromhex("47534c480105000102")),
    "wrong length": (bytes.fromhex("47534c4801020020"), "peer sent a message of the wrong length",
                     bytes.fromhex("47534c480105000104")),
    "unknown reason": (bytes.fromhex("47534c4801050001ee"), "peer refused the handshake", b""),
    "closed": (b"", "peer closed the connection during the handshake", b""),
}


@pytest.mark.parametrize("fault", HANDSHAKE_FAULTS)
def test_a_misbehaving_access_point_gives_econnrefused(tunnel: Gateway, tmp_path: Path,
                                                       c_client: Path, fault: str) -> None:
    """Each way a handshake can go wrong ends in ECONNREFUSED with its reason, after the
    REJECT the protocol asks for; whichever code path ran the handshake."""
    reply, reason, reject = HANDSHAKE_FAULTS[fault]
    seen: dict[str, bytes] = {}
    with socket.socket() as access_point:
        access_point.bind(("127.0.0.1", 0))
        access_point.listen()
        access_point.settimeout(30)

        def serve() -> None:
            conn, _ = access_point.accept()
            with conn:
                conn.settimeout(30)
                hello = b""
                while len(hello) < 56:
                    hello += conn.recv(56 - len(hello)) or b"!" * 56
                seen["hello"] = hello
                if reply:
                    conn.sendall(reply)
                else:
                    conn.shutdown(socket.SHUT_WR)
                answer = b""
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(64):
                        answer += chunk
                seen["answer"] = answer

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        odd = conf_with(tunnel.initiator_dir, tunnel.tunnel_id, tmp_path / "odd",
                        connector_contact_string=f"127.0.0.1:{access_point.getsockname()[1]}")
        name, port = fake_contact(tunnel)
        code, out, err = finish(streams_run(odd, tunnel.tunnel_id, str(c_client), name, port,
                                            options=("-d",)), 30)
        server.join(30)
    assert code == 1 and out == "connect: Connection refused\nok 0\n", err
    assert f"handshake failed: {reason}" in err, err
    if os.environ.get(fastconnect.CONNECTS_ENV) == "native":
        assert "(native connect path)" in err, err
    tunnel_id = uuid.UUID(tunnel.tunnel_id).bytes
    assert seen["hello"][:8] == bytes.fromhex("47534c4801010030") and \
        seen["hello"][8:24] == tunnel_id
    assert seen["answer"] == reject


def test_other_destinations_are_left_alone(tunnel: Gateway, c_client: Path) -> None:
    """A connect to an address that is not the tunnel's goes where the program said."""
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = plain.getsockname()[1]

        def answer() -> None:
            conn, _ = plain.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"echo:hello 0\n")

        thread = threading.Thread(target=answer)
        thread.start()
        code, out, err = initiator_run(tunnel, str(c_client), "127.0.0.1", str(port))
        thread.join()
    assert (code, out) == (0, "echo:hello 0\nok 1\n"), err


# -- launcher: exit statuses, signals, stdout, fallback ----------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["sh", "-c", "exit 7"], 7),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        (["/nonexistent/program"], 127),
        (["/dev/null"], 126),  # not executable
    ],
    ids=["own-status", "killed-by-signal", "not-found", "not-executable"],
)
def test_exit_statuses(tunnel: Gateway, command: list[str], expected: int) -> None:
    code, out, err = initiator_run(tunnel, *command)
    assert code == expected, err
    assert out == ""
    if expected in (126, 127):
        assert err.count("\n") == 1 and err.startswith("streams-run: ")


def test_commands_that_cannot_be_found_are_127_in_one_line(tunnel: Gateway,
                                                            tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    for command, says in ((b"", b": command not found"),
                          (b"nosuch\xff", b"nosuch\xff: command not found"),
                          (bytes(script), b"bad interpreter")):
        process = subprocess.run(
            [*STREAMS_RUN, "--config-dir", str(tunnel.initiator_dir), tunnel.tunnel_id, command],
            capture_output=True, timeout=60)
        assert process.returncode == 127, process.stderr
        assert process.stderr.count(b"\n") == 1 and says in process.stderr, process.stderr
        assert process.stderr.startswith(b"streams-run: ") and process.stdout == b""


def test_supervisor_failures_are_one_line_and_125(tunnel: Gateway, tmp_path: Path) -> None:
    unknown = "0b8f3c1e-0000-4000-8000-000000000000"
    for args in ([unknown, "true"], ["not-a-tunnel", "true"]):
        process = subprocess.run(
            [*STREAMS_RUN, "--config-dir", str(tmp_path), *args], capture_output=True, text=True)
        assert process.returncode == 125, process.stderr
        assert process.stderr.count("\n") == 1 and "Traceback" not in process.stderr
        assert process.stdout == ""


@pytest.mark.parametrize("args", [["-p", "0"], ["--timeout", "nan"], ["--timeout", "inf"],
                                  ["--bogus"], ["--globus-contact", "x"]])
@pytest.mark.parametrize("via", ["streams-run", "streams-trace run"])
def test_bad_options_are_one_line_and_125(tunnel: Gateway, args: list[str], via: str) -> None:
    launcher = STREAMS_RUN if via == "streams-run" else streams_trace_command("run")
    process = subprocess.run(
        [*launcher, "--config-dir", str(tunnel.initiator_dir), *args, tunnel.tunnel_id, "true"],
        capture_output=True, text=True, timeout=60)
    assert process.returncode == 125, process.stderr
    assert process.stderr.count("\n") == 1 and "error: " in process.stderr, process.stderr
    assert process.stdout == ""


@pytest.mark.parametrize(("setting", "diagnostics"),
                         [("1", True), ("yes", True), ("2", True), ("0", False), ("off", False)])
def test_the_debug_variable_is_read_leniently(tunnel: Gateway, setting: str,
                                              diagnostics: bool) -> None:
    code, _, err = initiator_run(tunnel, "true", env={"STREAMS_TRACE_DEBUG": setting})
    assert code == 0, err
    assert ("started true" in err) is diagnostics


def test_the_group_debug_flag_reaches_run(tunnel: Gateway) -> None:
    process = subprocess.run(
        [*streams_trace_command("-d", "run"), "--config-dir", str(tunnel.initiator_dir),
         tunnel.tunnel_id, "true"], capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    assert "started true" in process.stderr


def test_stdout_belongs_to_the_program(tunnel: Gateway) -> None:
    code, out, err = initiator_run(tunnel, "echo", "-d", "--", "x", options=("-d",))
    assert (code, out) == (0, "-d -- x\n")
    assert "started echo" in err


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_reach_the_program(tunnel: Gateway, signal_number: int) -> None:
    process = streams_run(
        tunnel.initiator_dir, tunnel.tunnel_id, "sh", "-c",
        f"trap 'echo got; exit 42' {signal.Signals(signal_number).name[3:]}; "
        "echo ready; while :; do sleep 0.1; done")
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal_number)
    code, out, err = finish(process, 20)
    assert (code, out) == (42, "got\n"), err


def test_a_signal_to_the_whole_process_group_arrives_once(tunnel: Gateway, built: Path) -> None:
    """kill %1, timeout(1), systemd: one kill() reaches streams-run and the program alike."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    counter = built / "count_signals"
    subprocess.run(["gcc", "-O2", "-o", str(counter), str(PROGRAMS / "count_signals.c")],
                   check=True)
    process = streams_run(tunnel.initiator_dir, tunnel.tunnel_id, str(counter),
                          start_new_session=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    os.killpg(process.pid, signal.SIGTERM)
    code, out, err = finish(process, 20)
    assert (code, out) == (0, "1\n"), err


def test_signals_that_come_as_the_program_exits_leave_its_status(tunnel: Gateway) -> None:
    """SIGUSR1 sent to streams-run again and again while the program, which ignores it,
    exits 0: those that come as streams-run ends are for a program that has gone, not a
    reason for streams-run to die of them (it used to exit by SIGUSR1)."""
    for _ in range(3):
        process = streams_run(tunnel.initiator_dir, tunnel.tunnel_id, "sh", "-c",
                              "trap '' USR1; echo ready; sleep 0.3")
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGUSR1)
            time.sleep(0.0005)
        code, _, err = finish(process, 5)
        assert code == 0, err


def test_an_executable_script_without_a_shebang_runs_with_sh(tunnel: Gateway,
                                                             tmp_path: Path) -> None:
    """As execvp(3), env(1) and the shells run it (globus-streams-launch.sh runs its
    command with bash's exec)."""
    script = tmp_path / "no-shebang"
    script.write_text('echo "ran with $1"\n')
    script.chmod(0o755)
    code, out, err = initiator_run(tunnel, str(script), "an argument")
    assert (code, out) == (0, "ran with an argument\n"), err


def test_ignored_job_control_signals_stay_ignored(tunnel: Gateway) -> None:
    """A caller that ignores SIGTTOU (and so SIGTSTP, SIGTTIN) passes that on to the
    program, as exec does; streams-run used to reset them to their default. SIGPIPE and
    SIGXFSZ, which the Python in streams-run ignores, are the program's default again
    (a writer to a closed pipe dies of it, as outside streams-run)."""
    process = streams_run(tunnel.initiator_dir, tunnel.tunnel_id, "grep", "SigIgn",
                          "/proc/self/status",
                          preexec_fn=lambda: signal.signal(signal.SIGTTOU, signal.SIG_IGN))
    code, out, err = finish(process)
    assert code == 0, err
    ignored = int(out.split()[1], 16)
    assert ignored & 1 << (signal.SIGTTOU - 1), out
    assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)), out


def test_a_terminal_hang_up_reaches_the_program(tunnel: Gateway) -> None:
    """ssh -t host streams-run ...: the shell exec'd streams-run, which leads the session,
    and a hang-up goes to the session leader alone."""
    master, slave = os.openpty()

    def take_the_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [*STREAMS_RUN, "--config-dir", str(tunnel.initiator_dir), tunnel.tunnel_id, "sh", "-c",
         "echo ready; exec sleep 30"],
        stdin=slave, stdout=slave, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=take_the_terminal)
    os.close(slave)
    try:
        seen = b""
        while b"ready" not in seen:
            seen += os.read(master, 100)
    finally:
        os.close(master)  # the hang-up
    code, _, err = finish(process, 20)
    assert code == 128 + signal.SIGHUP, err


def test_signals_while_it_starts_do_not_hang_it(tunnel: Gateway) -> None:
    """A terminal resized (SIGWINCH to the whole job) over and over while streams-run starts
    the program: every start still runs it to its end."""
    for _ in range(5):
        process = streams_run(tunnel.initiator_dir, tunnel.tunnel_id, "true",
                              start_new_session=True)
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGWINCH)
            time.sleep(0.001)
        code, _, err = finish(process, 5)
        assert code == 0, err


def test_stop_and_continue(tunnel: Gateway) -> None:
    """A program stopped with SIGSTOP stays stopped (group-stop kept) and resumes on SIGCONT."""
    process = streams_run(tunnel.initiator_dir, tunnel.tunnel_id, sys.executable, "-c",
                          "import time\nprint('ready', flush=True)\n"
                          "for i in range(30):\n    time.sleep(0.1)\nprint('done')")
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    program = int(children[0])
    os.kill(program, signal.SIGSTOP)
    time.sleep(0.5)
    state = Path(f"/proc/{program}/stat").read_text().split(")")[1].split()[0]
    assert state in ("T", "t")
    time.sleep(3.5)  # longer than the program's own run
    assert process.poll() is None
    os.kill(program, signal.SIGCONT)
    code, out, err = finish(process, 20)
    assert (code, out) == (0, "done\n"), err


def test_kill_tstp_then_kill_cont_to_streams_run(tunnel: Gateway) -> None:
    """kill -TSTP to streams-run stops the program (and streams-run with it); kill -CONT
    to streams-run resumes both: the program runs to its end."""
    # A process group of its own in the tests' session, as a shell's job: in an orphaned
    # group (the tests started in the background by a script that has ended) the kernel
    # would not stop it.
    process = streams_run(tunnel.initiator_dir, tunnel.tunnel_id, sys.executable, "-c",
                          TICKER, preexec_fn=lambda: os.setpgid(0, 0))
    assert process.stdout is not None
    assert process.stdout.readline() == "tick 0\n"
    program = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])

    def state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    process.send_signal(signal.SIGTSTP)
    deadline = time.monotonic() + 10
    while state(program) not in ("T", "t") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state(program) in ("T", "t")
    time.sleep(0.3)
    process.send_signal(signal.SIGCONT)
    code, out, err = finish(process, 20)
    assert code == 0 and out.endswith("tick 19\n"), err


def test_fallback_without_seccomp_still_redirects(tunnel: Gateway, echo: EchoListener,
                                                  musl_client: Path) -> None:
    name, port = fake_contact(tunnel)
    code, out, err = initiator_run(tunnel, str(musl_client), name, port,
                                   env={"STREAMS_TRACE_SECCOMP": "off"})
    assert (code, out) == (0, "echo:hello 0\nok 1\n"), err
    assert "no seccomp filter (disabled)" in err and "every system call" in err


# TCP Fast Open sends: to HOST PORT with sendto or sendmsg, then to a local server.
FAST_OPEN = (
    "import socket, sys\n"
    "host, port, local = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
    "address = socket.getaddrinfo(host, port, socket.AF_INET)[0][4]\n"
    "for how in ('sendto', 'sendmsg'):\n"
    "    with socket.socket() as s:\n"
    "        try:\n"
    "            if how == 'sendto':\n"
    "                s.sendto(b'x', socket.MSG_FASTOPEN, address)\n"
    "            else:\n"
    "                s.sendmsg([b'x'], [], socket.MSG_FASTOPEN, address)\n"
    "            print(how, 'sent')\n"
    "        except OSError as exc:\n"
    "            print(how, exc.strerror)\n"
    "with socket.socket() as s:\n"
    "    s.sendto(b'elsewhere\\n', socket.MSG_FASTOPEN, ('127.0.0.1', local))\n"
    "    print(s.recv(100).decode(), end='')\n")


def test_tcp_fast_open_to_the_tunnel_is_refused(tunnel: Gateway) -> None:
    """sendto or sendmsg with MSG_FASTOPEN connect as they send, past the redirect: to
    the tunnel they fail (EOPNOTSUPP) rather than go elsewhere; other destinations are
    left alone."""
    name, port = fake_contact(tunnel)
    with socket.create_server(("127.0.0.1", 0)) as elsewhere:
        elsewhere.settimeout(30)

        def answer() -> None:
            conn, _ = elsewhere.accept()
            with conn:
                conn.sendall(b"echo:" + conn.recv(100))

        server = threading.Thread(target=answer, daemon=True)
        server.start()
        code, out, err = initiator_run(tunnel, sys.executable, "-c", FAST_OPEN, name, port,
                                       str(elsewhere.getsockname()[1]), options=("-d",))
        server.join(10)
    assert (code, out) == (0, "sendto Operation not supported\n"
                              "sendmsg Operation not supported\necho:elsewhere\n"), err
    assert err.count("MSG_FASTOPEN") == 2


# In a private network with TCP Fast Open on without cookies (so that a connect with
# TCP_FASTOPEN_CONNECT defers its SYN to the first send): a gateway, an echo listener,
# and under streams-run a client that sets that option (as curl --tcp-fastopen does).
FAST_OPEN_CONNECT_DRIVER = """
import socket, subprocess, sys, threading
import streams_trace
from streams_trace import conf
state, port = sys.argv[1], sys.argv[2]
command = [sys.executable, "-m", "streams_trace"]
gateway = subprocess.Popen([*command, "gateway", "--listener-contact-string",
                            f"127.0.0.1:{port}", "--initiator-config-dir", f"{state}/i",
                            "--listener-config-dir", f"{state}/l", "--state-dir",
                            f"{state}/s"], stdout=subprocess.PIPE, text=True)
tunnel = gateway.stdout.readline().strip()
listener = streams_trace.listen(tunnel, config_dir=f"{state}/l")
def serve():
    conn, _ = listener.accept()
    conn.sendall(b"echo:" + conn.recv(100))
threading.Thread(target=serve, daemon=True).start()
client = ("import socket, sys\\n"
          "s = socket.socket()\\n"
          "s.setsockopt(socket.IPPROTO_TCP, 30, 1)\\n"
          "s.settimeout(20)\\n"
          "s.connect((sys.argv[1], int(sys.argv[2])))\\n"
          "s.sendall(b'fast open\\\\n')\\n"
          "print(s.recv(100).decode(), end='')\\n")
fake_port = str(conf.load(tunnel, f"{state}/i").fake_port)
run = subprocess.run([*command, "run", "--config-dir", f"{state}/i", tunnel, sys.executable,
                      "-c", client, f"globus.{tunnel}", fake_port],
                     capture_output=True, text=True, timeout=60)
gateway.terminate()
sys.stdout.write(run.stdout)
sys.stderr.write(run.stderr)
sys.exit(run.returncode)
"""


def test_a_fast_open_connect_is_authenticated(tmp_path: Path) -> None:
    """TCP_FASTOPEN_CONNECT makes the supervisor's connect say 0 at once, the SYN held
    back for the first send: that is a fresh socket (it was taken for one the program
    had connected, and got no handshake), so the connection starts and is authenticated."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare(1) and ip(8) for a private network")
    (tmp_path / "driver.py").write_text(FAST_OPEN_CONNECT_DRIVER)
    script = ("ip link set lo up && sysctl -qw net.ipv4.tcp_fastopen=5 || exit 99; "
              f"exec {sys.executable} {tmp_path}/driver.py {tmp_path} {free_port()}")
    process = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
    assert (process.returncode, process.stdout) == (0, "echo:fast open\n"), process.stderr


# io_uring_setup(8, params): the ring's descriptor, or the errno's name.
IO_URING_SETUP = (
    "import ctypes, errno\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.syscall.restype = ctypes.c_long\n"
    "params = ctypes.create_string_buffer(120)\n"
    "fd = libc.syscall(425, 8, params)\n"
    "print('ring' if fd >= 0 else errno.errorcode[ctypes.get_errno()])\n")


@pytest.mark.parametrize("seccomp_mode", ["on", "off"])
def test_io_uring_is_refused_as_if_the_kernel_had_none(tunnel: Gateway, seccomp_mode: str) -> None:
    """io_uring's connect and accept never pass the filter or the tracer, so they would
    bypass the redirect and the listener's handshake: io_uring_setup says ENOSYS, and
    programs (liburing's users, tokio) fall back to the ordinary calls. Also without a
    filter, where every system call stops."""
    native = subprocess.run([sys.executable, "-c", IO_URING_SETUP], capture_output=True,
                            text=True, timeout=30)
    if native.stdout != "ring\n":
        pytest.skip(f"io_uring is not available here: {native.stdout.strip()}")
    code, out, err = initiator_run(tunnel, sys.executable, "-c", IO_URING_SETUP,
                                   env={"STREAMS_TRACE_SECCOMP": seccomp_mode})
    assert (code, out) == (0, "ENOSYS\n"), err


def test_streams_trace_run_is_the_same_command(tunnel: Gateway) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "streams_trace", "run", "--config-dir", str(tunnel.initiator_dir),
         tunnel.tunnel_id, "sh", "-c", "exit 3"], capture_output=True, text=True, timeout=60)
    assert process.returncode == 3, process.stderr


def test_a_32bit_system_call_is_refused_loudly(tunnel: Gateway, built: Path) -> None:
    """int 0x80 from a 64-bit program would bypass a 64-bit-only filter: it is stopped."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    program = built / "syscalls"
    subprocess.run(["gcc", "-O2", "-o", str(program), str(PROGRAMS / "syscalls.c")], check=True)
    code, out, err = initiator_run(tunnel, str(program), "int80")
    assert code == 125 and out == "", err
    assert "foreign ABI" in err and err.count("\n") == 1
    for seccomp_mode in ("on", "off"):  # also where every system call stops
        code, out, err = initiator_run(tunnel, str(program), "x32",
                                       env={"STREAMS_TRACE_SECCOMP": seccomp_mode})
        assert code == 125 and out == "", err
        assert "through the x32 ABI" in err and err.count("\n") <= 2  # and "no filter"


def test_a_system_call_number_that_is_none_says_enosys(tunnel: Gateway, built: Path) -> None:
    """syscall(-1) is no call at all (some programs probe with it): ENOSYS, as without
    streams-run, not a stop for a "foreign ABI"."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    program = built / "syscalls"
    subprocess.run(["gcc", "-O2", "-o", str(program), str(PROGRAMS / "syscalls.c")], check=True)
    code, out, err = initiator_run(tunnel, str(program), "nosys")
    assert (code, out) == (0, "syscall(-1) returned -1: Function not implemented\n"), err


def test_start_up_does_not_import_globus_sdk(tunnel: Gateway) -> None:
    """The conf is fresh (the gateway's TTL is the tunnel's lifetime): no Globus code loads."""
    process = subprocess.run(
        [sys.executable, "-X", "importtime", *STREAMS_RUN[1:], "--config-dir",
         str(tunnel.initiator_dir), tunnel.tunnel_id, "true"],
        capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "streams_trace.supervisor" in process.stderr
    assert "globus_sdk" not in process.stderr


class TinyNameserver:
    """A nameserver on 127.83.0.53:53 that knows one name, for the forwarding tests: over
    UDP, and over TCP too with ``tcp`` (``asked_over_tcp`` lists those questions)."""

    ADDRESS = ("127.83.0.53", 53)

    def __init__(self, name: str, answer: str, forge_first: bool = False,
                 tcp: bool = False) -> None:
        """``forge_first``: answer each query first with another query id and a wrong
        address, as a spoofer racing the nameserver would."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(self.ADDRESS)
        self.asked: list[str] = []
        self.asked_over_tcp: list[str] = []
        self.stream: socket.socket | None = None
        if tcp:
            try:
                self.stream = socket.create_server(self.ADDRESS)
            except OSError:
                self.sock.close()
                raise
            self.stream.settimeout(0.1)

        def serve_connection(conn: socket.socket) -> None:
            with conn, conn.makefile("rb") as stream:
                conn.settimeout(10)
                try:
                    while header := stream.read(2):
                        query = stream.read(int.from_bytes(header, "big"))
                        question = dns.parse_question(query)
                        if question is None:
                            return
                        self.asked_over_tcp.append(question.name)
                        known = answer if question.name == name else None
                        reply = dns.build_answer(query, question, known)
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    return

        def serve_stream() -> None:
            assert self.stream is not None
            while not self.stopping:
                try:
                    conn, _ = self.stream.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()

        # Woken every 0.1 s to see whether it should stop: close() then waits for it, so
        # port 53 is free for the next test the moment close() returns (a UDP socket
        # cannot be shut down to wake a thread blocked on it).
        self.sock.settimeout(0.1)
        self.stopping = False

        def serve() -> None:
            while not self.stopping:
                try:
                    query, client = self.sock.recvfrom(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                question = dns.parse_question(query)
                if question is None:
                    continue
                self.asked.append(question.name)
                known = answer if question.name == name else None
                if forge_first:
                    forged_id = bytes([query[0] ^ 0xFF, query[1]])
                    self.sock.sendto(dns.build_answer(forged_id + query[2:], question,
                                                      "127.6.6.6"), client)
                self.sock.sendto(dns.build_answer(query, question, known), client)

        self.threads = [threading.Thread(target=serve, daemon=True)]
        if self.stream is not None:
            self.threads.append(threading.Thread(target=serve_stream, daemon=True))
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join(timeout=15)
        self.sock.close()
        if self.stream is not None:
            self.stream.close()


def test_the_tunnel_address_works_without_a_lookup(tunnel: Gateway, echo: EchoListener) -> None:
    """A program given the address the responder gives globus.<TUNNEL_ID> (fixed, as the
    man page says) instead of the name is redirected all the same."""
    _, port = fake_contact(tunnel)
    address = str(next(FAKE_NETWORK.hosts()))
    assert address == "127.240.83.1"  # the man page names it
    code, out, err = initiator_run(tunnel, sys.executable, str(PROGRAMS / "echo_client.py"),
                                   address, port)
    assert (code, out) == (0, "echo:hello python\n"), err


UNDUMPABLE_CLIENT = """
import ctypes, errno, socket, struct, sys
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0, as an execute-only file has it
for _ in range(2):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20).close()
        print("connected")
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, exc))
# A query for the tunnel's name, sent as musl sends it: it cannot be checked, so it fails.
query = struct.pack("!6H", 1, 0x100, 1, 0, 0, 0) + b"".join(
    bytes([len(label)]) + label.encode() for label in sys.argv[3].split(".")) + b"\\0\\0\\1\\0\\1"
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(query, ("127.83.0.53", 53))
    print("sent")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc))
"""


def test_a_process_closed_to_the_supervisor_is_refused_with_its_reason(
        tunnel: Gateway, echo: EchoListener) -> None:
    """A non-dumpable process (prctl, or an executable it may not read) keeps even its
    tracer out of its memory and descriptors unless that has CAP_SYS_PTRACE: its connects
    and DNS queries fail closed, and streams-run says why once, not a line per call."""
    # Root is like any user here once CAP_SYS_PTRACE is gone (as in a default container).
    as_user = {"preexec_fn": _without_cap_sys_ptrace} if os.geteuid() == 0 else {}
    if as_user and _capabilities("CapInh") & 1 << CAP_SYS_PTRACE:
        pytest.skip("CAP_SYS_PTRACE is inheritable here, so it cannot be dropped for a test")
    name, port = fake_contact(tunnel)
    try:
        process = streams_run(
            tunnel.initiator_dir, tunnel.tunnel_id, sys.executable, "-c", UNDUMPABLE_CLIENT,
            str(next(FAKE_NETWORK.hosts())), port, name, **as_user)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"CAP_SYS_PTRACE cannot be dropped here: {exc}")
    code, out, err = finish(process)
    if code == 125 and "ptrace" in err:
        pytest.skip(f"an unprivileged user may not trace here: {err.strip()}")
    assert (code, out) == (0, "ECONNREFUSED\nECONNREFUSED\nEPERM\n"), err
    lines = err.splitlines()
    assert len(lines) == 1 and "not dumpable" in lines[0] and "CAP_SYS_PTRACE" in lines[0], err


CAP_SYS_PTRACE = 19  # <linux/capability.h>


def _capabilities(kind: str) -> int:
    """A capability set of this process (CapInh, CapEff...) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1], 16)
    return 0


def _without_cap_sys_ptrace() -> None:
    """In the child: out of the bounding and ambient sets, so exec does not give it back."""
    import ctypes

    PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4  # <linux/prctl.h>
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    if prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) or prctl(
            PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl")


def private_nameserver(tmp_path: Path, options: str = "",
                       **serving: bool) -> tuple[TinyNameserver, Path]:
    """Our nameserver, and a resolv.conf naming it for ``run_with_resolv``."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private /etc/resolv.conf")
    try:
        nameserver = TinyNameserver("other.streams-trace.test", "127.0.0.1", **serving)
    except OSError as exc:
        pytest.skip(f"cannot bind the test nameserver on 127.83.0.53:53: {exc}")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.83.0.53\n" + options)
    return nameserver, resolv


# A shell command: the address glibc finds for the name only our test nameserver knows.
RESOLVE_OTHER = (f"{sys.executable} -c "
                 "\"import socket; print(socket.gethostbyname('other.streams-trace.test'))\"")


def run_with_resolv(resolv: Path, tunnel: Gateway, command: str
                    ) -> subprocess.CompletedProcess[str]:
    """Shell ``command`` under streams-run, in a mount namespace where ``resolv`` is
    /etc/resolv.conf."""
    script = (
        f"mount --bind {resolv} /etc/resolv.conf && "
        f"{' '.join(STREAMS_RUN[:2])} '{STREAMS_RUN[2]}' --config-dir {tunnel.initiator_dir} "
        f"{tunnel.tunnel_id} {command}"
    )
    return subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60)


def test_a_forwarded_query_takes_only_its_own_answer(tunnel: Gateway, tmp_path: Path) -> None:
    """The supervisor forwards other names' queries; a reply with another query id is not
    the answer (the program cannot check it: the reply comes from the supervisor)."""
    nameserver, resolv = private_nameserver(tmp_path, "options timeout:2 attempts:1\n",
                                            forge_first=True)
    try:
        process = run_with_resolv(resolv, tunnel, RESOLVE_OTHER)
    finally:
        nameserver.close()
    assert (process.returncode, process.stdout) == (0, "127.0.0.1\n"), process.stderr


def test_a_nameserver_that_refuses_sends_the_program_to_the_next_at_once(
        tunnel: Gateway, tmp_path: Path) -> None:
    """Nothing listens on the first nameserver: natively the ICMP refusal moves the
    resolver on at once; under streams-run the forwarder's SERVFAIL does the same,
    instead of the resolver waiting out its timeout on the first one."""
    nameserver, _ = private_nameserver(tmp_path)
    resolv = tmp_path / "resolv-dead-first.conf"
    resolv.write_text("nameserver 127.83.0.98\nnameserver 127.83.0.53\n"
                      "options timeout:15 attempts:1\n")
    started = time.monotonic()
    try:
        process = run_with_resolv(resolv, tunnel, RESOLVE_OTHER)
    finally:
        nameserver.close()
    assert (process.returncode, process.stdout) == (0, "127.0.0.1\n"), process.stderr
    assert time.monotonic() - started < 10, "the resolver waited out its 15 s timeout"


def test_queries_to_a_silent_nameserver_cannot_exhaust_the_supervisor(tunnel: Gateway) -> None:
    """Each forwarded query holds a socket until its answer or a timeout: with a silent
    nameserver and a low descriptor limit, the program gets SERVFAIL for what cannot be
    forwarded, and streams-run goes on (it used to fail with EMFILE, killing the program)."""
    if os.geteuid() != 0:
        pytest.skip("binding port 53 needs root")
    try:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.83.0.99", 53))
    except OSError as exc:
        pytest.skip(f"cannot bind 127.83.0.99:53: {exc}")
    flood = (
        "import socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.connect(('127.83.0.99', 53))\n"
        "for i in range(400):\n"
        "    s.send(struct.pack('!6H', i, 0x0100, 1, 0, 0, 0)\n"
        "           + bytes([5]) + b'other' + bytes([4]) + b'test' + bytes([0])\n"
        "           + struct.pack('!HH', 1, 1))\n"
        "s.settimeout(3)\n"
        "failed = 0\n"
        "try:\n"
        "    while True:\n"
        "        failed += s.recv(512)[3] & 0xF == 2\n"
        "except TimeoutError:\n"
        "    pass\n"
        "print(failed)\n")
    script = (f"ulimit -n 100 && {' '.join(STREAMS_RUN[:2])} '{STREAMS_RUN[2]}' --config-dir "
              f"{tunnel.initiator_dir} {tunnel.tunnel_id} {sys.executable} -c \"$FLOOD\"")
    with silent:
        process = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "FLOOD": flood})
    assert process.returncode == 0, process.stderr
    assert int(process.stdout) > 0, process.stdout  # (a burst also overflows socket buffers)


def test_a_link_local_nameserver_is_asked_on_its_interface(tunnel: Gateway,
                                                          tmp_path: Path) -> None:
    """resolv.conf names a router-advertised nameserver, fe80::53%d0: the forwarder asks
    it on that interface (without the scope the connect fails and every other name
    times out). In a private network namespace, on a veth interface."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare(1) and ip(8) for a private network")
    nameserver = (
        "import socket\n"
        "from streams_trace.supervisor import dns\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.bind(('fe80::53', 53, 0, socket.if_nametoindex('d0')))\n"
        "print('up', flush=True)\n"
        "while True:\n"
        "    query, client = s.recvfrom(4096)\n"
        "    question = dns.parse_question(query)\n"
        "    known = '127.0.0.7' if question.name == 'other.streams-trace.test' else None\n"
        "    s.sendto(dns.build_answer(query, question, known), client)\n")
    (tmp_path / "nameserver.py").write_text(nameserver)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver fe80::53%d0\noptions timeout:5 attempts:1\n")
    launcher = f"{' '.join(STREAMS_RUN[:2])} '{STREAMS_RUN[2]}'"
    script = (
        "ip link set lo up && ip link add d0 type veth peer name d1 && ip link set d1 up && "
        "ip link set d0 up && "
        "ip addr add fe80::53/64 dev d0 nodad && "
        f"mount --bind {resolv} /etc/resolv.conf || exit 1; "
        f"{sys.executable} {tmp_path}/nameserver.py > {tmp_path}/up 2>&1 & server=$!; "
        f"while ! grep -q up {tmp_path}/up 2>/dev/null; do sleep 0.05; done; "
        f"{launcher} --config-dir {tunnel.initiator_dir} {tunnel.tunnel_id} {RESOLVE_OTHER}; "
        "status=$?; kill $server; exit $status")
    process = subprocess.run(["unshare", "--net", "--mount", "sh", "-c", script],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (process.returncode, process.stdout) == (0, "127.0.0.7\n"), process.stderr


def test_the_name_service_cache_daemon_is_refused(tunnel: Gateway, tmp_path: Path) -> None:
    """nscd resolves for glibc outside the program, where globus.<TUNNEL_ID> is unknown
    (and would go to the real DNS): its socket is refused, and glibc, finding no nscd,
    resolves in the program, through the tunnel's responder. A stand-in nscd listens in
    a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private /run")
    probe = ("import socket\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "print(s.connect_ex('/var/run/nscd/socket'))\n")
    (tmp_path / "probe.py").write_text(probe)
    stand_in = ("import socket, time\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "s.bind('/run/nscd/socket')\n"
                "s.listen()\n"
                "print('up', flush=True)\n"
                "time.sleep(60)\n")
    (tmp_path / "nscd.py").write_text(stand_in)
    launcher = f"{' '.join(STREAMS_RUN[:2])} '{STREAMS_RUN[2]}'"
    script = (
        "mount -t tmpfs tmpfs /run && mkdir /run/nscd || exit 1; "
        f"{sys.executable} {tmp_path}/nscd.py > {tmp_path}/up 2>&1 & stand_in=$!; "
        f"while ! grep -q up {tmp_path}/up 2>/dev/null; do sleep 0.05; done; "
        f"{sys.executable} {tmp_path}/probe.py; "
        f"{launcher} --config-dir {tunnel.initiator_dir} {tunnel.tunnel_id} "
        f"{sys.executable} {tmp_path}/probe.py; kill $stand_in")
    process = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                             text=True, timeout=60)
    native, traced = process.stdout.split()
    assert (native, traced) == ("0", str(errno.ECONNREFUSED)), process.stderr


def test_names_resolve_over_tcp_with_use_vc(tunnel: Gateway, echo: EchoListener,
                                            c_client: Path, go_client: Path,
                                            tmp_path: Path) -> None:
    """options use-vc: glibc and Go ask over TCP only. The tunnel's name resolves (its
    connection goes to the tunnel), and another name's queries go, over TCP, to the
    nameserver the program asked."""
    nameserver, resolv = private_nameserver(tmp_path, "options use-vc timeout:5\n", tcp=True)
    name, port = fake_contact(tunnel)
    script = tmp_path / "resolve.sh"
    script.write_text(f"set -e\n{RESOLVE_OTHER}\n{c_client} {name} {port}\n"
                      f"{go_client} {name} {port}\n")
    try:
        process = run_with_resolv(resolv, tunnel, f"sh {script}")
    finally:
        nameserver.close()
    assert process.returncode == 0, process.stderr
    assert process.stdout == "127.0.0.1\necho:hello 0\nok 1\necho:hello go\n"
    assert "other.streams-trace.test" in nameserver.asked_over_tcp
    assert "other.streams-trace.test" not in nameserver.asked  # never over UDP
    asked = nameserver.asked + nameserver.asked_over_tcp
    assert not any(each.startswith("globus.") for each in asked), asked


def tcp_nameserver(tcp: bool) -> TinyNameserver:
    """Our nameserver on 127.83.0.53:53, taking TCP connections or not."""
    if os.geteuid() != 0:
        pytest.skip("binding port 53 needs root")
    try:
        return TinyNameserver("other.streams-trace.test", "127.0.0.1", tcp=tcp)
    except OSError as exc:
        pytest.skip(f"cannot bind the test nameserver on 127.83.0.53:53: {exc}")


def test_pipelined_tcp_queries_each_get_their_answer(tunnel: Gateway) -> None:
    """Many queries in one write, then the program's end: the tunnel's names are answered
    by the responder, the others by the nameserver the program asked, each answer whole,
    and the connection ends once every answer is back."""
    nameserver = tcp_nameserver(tcp=True)
    name, _ = fake_contact(tunnel)
    names = [name, "other.streams-trace.test", "unknown.streams-trace.test"] * 40
    try:
        code, out, err = initiator_run(tunnel, sys.executable,
                                       str(PROGRAMS / "dns_tcp_client.py"),
                                       TinyNameserver.ADDRESS[0], *names)
    finally:
        nameserver.close()
    replies = {name: "rcode=0 127.240.83.1", "other.streams-trace.test": "rcode=0 127.0.0.1",
               "unknown.streams-trace.test": "rcode=0 -"}
    assert (code, out) == (0, "".join(f"{each} {replies[each]}\n" for each in names)), err
    assert sorted(nameserver.asked_over_tcp) == sorted(names[1:3] * 40)


def test_a_nameserver_that_refuses_tcp_gets_the_program_servfail(tunnel: Gateway) -> None:
    """The program's TCP connection is to the responder: a query it cannot pass on (the
    nameserver takes no TCP connection) gets SERVFAIL, which sends a resolver on to its
    next nameserver at once, as the refused connection would have; the tunnel's name is
    answered all the same."""
    nameserver = tcp_nameserver(tcp=False)
    name, _ = fake_contact(tunnel)
    started = time.monotonic()
    try:
        code, out, err = initiator_run(tunnel, sys.executable,
                                       str(PROGRAMS / "dns_tcp_client.py"),
                                       TinyNameserver.ADDRESS[0], "other.streams-trace.test",
                                       name)
    finally:
        nameserver.close()
    assert (code, out) == (0, f"other.streams-trace.test rcode=2 -\n{name} rcode=0 "
                              "127.240.83.1\n"), err
    assert time.monotonic() - started < dns.FORWARD_TIMEOUT / 2, "not at once"


def test_other_names_still_resolve_through_the_real_nameserver(
        tunnel: Gateway, echo: EchoListener, musl_client: Path, tmp_path: Path) -> None:
    """Under a resolv.conf naming our own nameserver (a private mount namespace), a name
    only that nameserver knows resolves under streams-run, for glibc and musl, and the
    tunnel's name never reaches it."""
    nameserver, resolv = private_nameserver(tmp_path)
    name, port = fake_contact(tunnel)
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        plain_port = plain.getsockname()[1]

        def answer() -> None:
            conn, _ = plain.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"echo:hello 0\n")

        server = threading.Thread(target=answer)
        server.start()
        try:
            process = run_with_resolv(
                resolv, tunnel,
                f"sh -c '{sys.executable} -c \"import socket; "
                f"print(socket.gethostbyname(\\\"other.streams-trace.test\\\"))\" && "
                f"{musl_client} other.streams-trace.test {plain_port} && "
                f"{musl_client} {name} {port}'")
        finally:
            nameserver.close()
            server.join(timeout=10)
    assert process.returncode == 0, process.stderr
    assert process.stdout == "127.0.0.1\necho:hello 0\nok 1\necho:hello 0\nok 1\n"
    assert "other.streams-trace.test" in nameserver.asked
    assert not any(asked.startswith("globus.") for asked in nameserver.asked)


def test_every_option_is_in_the_man_page_and_help() -> None:
    from streams_trace.cli.run import run

    page = (REPO / "man" / "streams-run.1").read_text().replace("\\-", "-")
    help_text = subprocess.run([*STREAMS_RUN, "--help"], capture_output=True, text=True).stdout
    for param in run.params:
        for option in param.opts:
            if option.startswith("-"):
                assert option in page, f"{option} is not in man/streams-run.1"
                assert option in help_text


TICKER = "import time\nfor i in range(20): print('tick', i, flush=True); time.sleep(0.1)"
# top and other full-screen programs: restore the terminal at Ctrl-Z, then stop with SIGSTOP.
SELF_STOPPING_TICKER = ("import os, signal\n"
                        "def stop(*_): os.kill(os.getpid(), signal.SIGSTOP)\n"
                        "signal.signal(signal.SIGTSTP, stop)\n" + TICKER)
# The main thread calls pthread_exit; another thread goes on.
THREAD_TICKER = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *tick(void *unused) {
    for (int i = 0; i < 20; i++) { printf("tick %d\n", i); fflush(stdout); usleep(100000); }
    _exit(0);
}
int main(void) { pthread_t thread; pthread_create(&thread, 0, tick, 0); pthread_exit(0); }
"""


@pytest.mark.parametrize("program", ["plain", "stops-itself", "main-thread-exited"])
def test_ctrl_z_and_fg_in_an_interactive_shell(tunnel: Gateway, built: Path,
                                               program: str) -> None:
    """In a job-control shell on a terminal: Ctrl-Z stops the job, fg resumes it to the
    end; also for a program that stops itself with SIGSTOP at Ctrl-Z (top), and one whose
    main thread has exited."""
    import pty
    import select
    import shlex

    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    if program == "main-thread-exited":
        if shutil.which("gcc") is None:
            pytest.skip("gcc is not installed")
        source = built / "thread_ticker.c"
        if not source.exists():  # once per module: an earlier run may still be exiting
            source.write_text(THREAD_TICKER)
            subprocess.run(["gcc", "-O2", "-pthread", "-o", str(built / "thread_ticker"),
                            str(source)], check=True)
        command_line = [str(built / "thread_ticker")]
    else:
        command_line = [sys.executable, "-c",
                        TICKER if program == "plain" else SELF_STOPPING_TICKER]
    pid, terminal = pty.fork()
    if pid == 0:
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])

    def read_until(marker: str, timeout: float = 15) -> str:
        seen = ""
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(terminal, 4096).decode(errors="replace")
                except OSError:
                    break
        assert marker in seen, seen[-500:]
        return seen

    try:
        command = shlex.join([*STREAMS_RUN, "--config-dir", str(tunnel.initiator_dir),
                              tunnel.tunnel_id, *command_line])
        os.write(terminal, command.encode() + b"\n")
        read_until("tick 3")
        os.write(terminal, b"\x1a")
        read_until("Stopped")
        time.sleep(0.5)
        os.write(terminal, b"fg\n")
        read_until("tick 19")
        os.write(terminal, b"echo status=$?\n")
        read_until("status=0")
    finally:
        os.write(terminal, b"exit\n")
        time.sleep(0.2)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(terminal)


@contextlib.contextmanager
def silent_access_point(tunnel: Gateway, tmp_path: Path) -> Iterator[Path]:
    """A conf folder whose access point accepts TCP but never answers the handshake."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        yield conf_with(tunnel.initiator_dir, tunnel.tunnel_id, tmp_path / "silent",
                        connector_contact_string=f"127.0.0.1:{silent.getsockname()[1]}")


SEND_TIMEOUT_CLIENT = """
import errno, socket, struct, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", 1, 0))
started = time.monotonic()
try:
    sock.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc), round(time.monotonic() - started))
"""


def test_a_blocking_connect_waits_no_longer_than_its_send_timeout(
        tunnel: Gateway, tmp_path: Path) -> None:
    """C programs bound a blocking connect with SO_SNDTIMEO; a silent access point then
    costs them that, not streams-run's --timeout (the relay data path asks the program's
    socket for it in the program)."""
    with silent_access_point(tunnel, tmp_path) as dead:
        name, port = fake_contact(tunnel)
        code, out, err = finish(streams_run(
            dead, tunnel.tunnel_id, sys.executable, "-c", SEND_TIMEOUT_CLIENT, name, port,
            options=("--timeout", "3")), 40)
    assert (code, out) == (0, "ETIMEDOUT 1\n"), err


def test_an_access_point_that_drops_syns_times_out_without_holding_the_supervisor(
        tunnel: Gateway, tmp_path: Path, c_client: Path) -> None:
    """A full accept queue drops SYNs: blocking connects to it stay in SYN_SENT. Each
    times out after --timeout, all four together: none holds the supervisor up."""
    with contextlib.ExitStack() as stack:
        full = stack.enter_context(socket.socket())
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # a queue of one; never accepted
        for _ in range(2):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        time.sleep(0.2)
        dead = conf_with(tunnel.initiator_dir, tunnel.tunnel_id, tmp_path / "full",
                         connector_contact_string=f"127.0.0.1:{full.getsockname()[1]}")
        name, port = fake_contact(tunnel)
        started = time.monotonic()
        code, out, err = finish(streams_run(
            dead, tunnel.tunnel_id, str(c_client), "-t", "4", name, port,
            options=("-d", "--timeout", "1")), 60)
        elapsed = time.monotonic() - started
    assert code == 1 and out.count("connect: Connection timed out") == 4, (out, err)
    assert elapsed < 8, err  # SYN retries would take 1 s, 3 s, 7 s... each, in turn
    assert err.count("timed out in") == 4, err


def test_a_silent_access_point_times_out_and_delays_only_its_own_connects(
        tunnel: Gateway, echo: EchoListener, tmp_path: Path, c_client: Path) -> None:
    """An access point that accepts TCP but never answers the handshake: the program gets
    ETIMEDOUT after --timeout, and diagnostics go to the -l file, not stderr."""
    with silent_access_point(tunnel, tmp_path) as dead:
        name, port = fake_contact(tunnel)
        log_file = tmp_path / "run.log"
        started = time.monotonic()
        code, out, err = finish(streams_run(
            dead, tunnel.tunnel_id, str(c_client), "-t", "4", name, port,
            options=("-d", "-l", str(log_file), "--timeout", "1")), 30)
        elapsed = time.monotonic() - started
    assert code == 1 and out.count("connect: Connection timed out") == 4, out
    assert elapsed < 8  # four threads timed out together, not one after another
    assert err == ""
    assert log_file.read_text().count("timed out in") == 4
