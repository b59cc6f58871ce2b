"""streams-run against its baselines, each measured in the same run.

    python benchmarks/bench_run.py [--megabytes 500] [--connections 100] [--runs 3]
                                   [--latency-only]

Tunnel figures run one Python worker program through a real local gateway twice:
under streams-run, connecting by name to globus.<TUNNEL_ID> (the supervisor resolves,
redirects and authenticates), and untraced, opening connections with the in-process
client API (``streams_trace.client``). Everything on the listener side is the client
API. The added latency is the time until connect returns an authenticated connection
(client API: its connect and handshake), both back to back and with a pause after
each connection; after that the program's socket is the tunnel connection and its
bytes cost nothing more. Program figures run a small C program natively and under
streams-run; it times its own loop, so start-up is not counted there (it is the "true"
figure, which runs a copy of the package with its bytecode compiled, as pip installs
it, and the same copy without bytecode). The table shows medians and the ratio (or
difference) against the baseline with its target; a ratio of alternating pairs of runs
comes with the quartiles of the pairs' ratios in parentheses, the spread this machine
gives.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams_trace import conf  # noqa: E402
from streams_trace.client import Listener  # noqa: E402
from streams_trace.contact import free_port  # noqa: E402

STREAMS_RUN = [sys.executable, "-c", "from streams_trace.cli.run import main; main()"]
# Runs a program under a seccomp filter that allows every syscall: the kernel's cost of
# having a filter at all, which no filter can go below.
ALLOW_ALL = [sys.executable, "-c", """
import os, sys
from streams_trace.trace import seccomp
seccomp.install([(seccomp.BPF_RET | seccomp.BPF_K, 0, 0, seccomp.SECCOMP_RET_ALLOW)])
os.execv(sys.argv[1], sys.argv[1:])
"""]
BLOCK = 1 << 20
PAUSE = 0.002  # s between connections in the spaced rounds

# The worker runs as its own program: "by-name" under streams-run, "api" untraced.
WORKER = r'''
import os, socket, statistics, sys, time
mode, tunnel, config_dir, host, port, what, amount, pause = sys.argv[1:9]
amount, pause = int(amount), float(pause)
if mode == "api":
    sys.path.insert(0, os.environ["STREAMS_TRACE_REPO"])
    from streams_trace import conf
    from streams_trace.client import connect_with_conf
    tunnel_conf = conf.load(tunnel, config_dir)
    def open_connection():
        return connect_with_conf(tunnel_conf)
else:
    address = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4]
    def open_connection():
        sock = socket.socket()
        sock.connect(address)
        # The socket options the client API gives its sockets, so both carry bytes alike.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
if what == "bulk":
    payload = memoryview(os.urandom(1 << 20))
    started = time.perf_counter()
    with open_connection() as sock:
        for _ in range(amount):
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    print(amount / (time.perf_counter() - started))
else:
    # Per connection: the time until it is open and authenticated (connect returned),
    # and until the first byte came back through the tunnel.
    opened, echoed = [], []
    started = time.perf_counter()
    for _ in range(amount):
        t0 = time.perf_counter()
        with open_connection() as sock:
            opened.append(time.perf_counter() - t0)
            sock.sendall(b"x")
            sock.recv(1)
        echoed.append(time.perf_counter() - t0)
        if pause:
            time.sleep(pause)
    print(amount / (time.perf_counter() - started))
    print(" ".join(f"{value:.6f}" for value in opened))
    print(" ".join(f"{value:.6f}" for value in echoed))
'''


def serve(listener: Listener) -> None:
    """Answer every connection: a sink that acks with one byte at EOF, or a 1-byte echo."""

    def one(conn: socket.socket) -> None:
        buffer = bytearray(BLOCK)
        with conn:
            got = conn.recv_into(buffer)
            if got == 1:  # connections/s probe
                conn.sendall(b"k")
                return
            while conn.recv_into(buffer):
                pass
            conn.sendall(b"k")

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[str], str, Path, Path, int]:
    port = free_port()
    initiator, listener = workdir / "initiator", workdir / "listener"
    process = subprocess.Popen(
        [sys.executable, "-m", "streams_trace", "gateway", "--listener-contact-string",
         f"127.0.0.1:{port}", "--initiator-config-dir", str(initiator),
         "--listener-config-dir", str(listener)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    assert process.stdout is not None
    tunnel_id = process.stdout.readline().strip()
    if not tunnel_id:
        raise SystemExit("the gateway did not start")
    return process, tunnel_id, initiator, listener, port


def run_worker(traced: bool, tunnel_id: str, initiator: Path, what: str, amount: int,
               script: Path, settings: dict[str, str] | None = None,
               pause: float = 0.0) -> list[list[float]]:
    tunnel = conf.load(tunnel_id, initiator)
    host, port = f"globus.{tunnel_id}", str(tunnel.fake_port)
    mode = "by-name" if traced else "api"
    command = [sys.executable, str(script), mode, tunnel_id, str(initiator), host, port, what,
               str(amount), str(pause)]
    if traced:
        command = [*STREAMS_RUN, "--config-dir", str(initiator), tunnel_id, *command]
    env = {**os.environ, "STREAMS_TRACE_REPO": str(REPO), **(settings or {})}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    return [[float(value) for value in line.split()] for line in out.splitlines()]


def time_program(command: list[str], traced: bool, tunnel_id: str, initiator: Path,
                 seccomp_mode: str = "on") -> float:
    if traced:
        command = [*STREAMS_RUN, "--config-dir", str(initiator), tunnel_id, *command]
    env = {**os.environ, "STREAMS_TRACE_SECCOMP": seccomp_mode}
    return float(subprocess.run(command, capture_output=True, text=True, check=True,
                                env=env).stdout)


def alternating(count: int, baseline: Callable[[], float],
                traced: Callable[[], float]) -> tuple[float, float, str]:
    """Run the two measures in turns, ``count`` pairs, so load that comes and goes falls on
    both alike: the medians of each, and the median of the pairs' ratios with their
    quartiles (how far apart runs of the same code fall on this machine)."""
    pairs = [(baseline(), traced()) for _ in range(count)]
    ratios = [pair[1] / pair[0] for pair in pairs]
    low, _, high = statistics.quantiles(ratios, n=4) if count > 1 else ratios * 3
    return (statistics.median(pair[0] for pair in pairs),
            statistics.median(pair[1] for pair in pairs),
            f"{statistics.median(ratios):.2f} ({low:.2f}-{high:.2f})")


def wall(command: list[str], env: dict[str, str] | None = None,
         cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=cwd)
    return time.perf_counter() - started


def package_copy(workdir: Path, name: str, compiled: bool) -> tuple[dict[str, str], Path]:
    """An environment, and a folder to run in, where streams_trace is a copy of this
    checkout's, with its bytecode compiled as pip compiles it at install time, or with
    none and none written: how streams-run starts for a user, and from an editable
    checkout under PYTHONDONTWRITEBYTECODE=1 (its modules compiled at every start)."""
    target = workdir / name
    shutil.copytree(REPO / "streams_trace", target / "streams_trace",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # Ahead of an editable install's finder; run in the copy's folder, as "python -c"
    # puts the working directory (a checkout, say) first of all.
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(target),
                                                       os.environ.get("PYTHONPATH")]))}
    if compiled:
        compileall.compile_dir(target, quiet=1)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    found = subprocess.run(
        [sys.executable, "-c", "import streams_trace; print(streams_trace.__file__)"],
        env=env, cwd=target, capture_output=True, text=True, check=True).stdout.strip()
    if not found.startswith(str(target)):
        raise SystemExit(f"the package copy is not the one imported ({found})")
    return env, target


def supervisor_rss_mb(tunnel_id: str, initiator: Path, client: Path | None) -> float:
    """Peak RSS of the streams-run process while a 16-thread client runs under it."""
    tunnel = conf.load(tunnel_id, initiator)
    program = ([str(client), "-t", "16", "-c", "20", f"globus.{tunnel_id}",
                str(tunnel.fake_port)] if client else ["sleep", "1"])
    process = subprocess.Popen([*STREAMS_RUN, "--config-dir", str(initiator), tunnel_id,
                                "sh", "-c", " ".join(program) + "; sleep 0.3"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            break
        time.sleep(0.05)
    return peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=500, help="per bulk run")
    parser.add_argument("--connections", type=int, default=100,
                        help="connections per round; there are 4 rounds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-only", action="store_true",
                        help="only the connections/s and time-per-connection figures")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    script = workdir / "worker.py"
    script.write_text(WORKER)
    programs = REPO / "tests" / "programs"
    syscalls = workdir / "syscalls"
    subprocess.run(["gcc", "-O2", "-o", str(syscalls), str(programs / "syscalls.c")], check=True)
    client: Path | None = workdir / "client"
    try:
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(client), str(programs / "client.c")],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        client = None
    gateway, tunnel_id, initiator, listener_dir, _ = start_gateway(workdir)
    listener = Listener(conf.load(tunnel_id, listener_dir))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        if not options.latency_only:
            def bulk(traced: bool) -> Callable[[], float]:  # one run of the bulk worker
                return lambda: run_worker(traced, tunnel_id, initiator, "bulk",
                                          options.megabytes, script)[0][0]

            # Runs of the same code spread by +-10% here (CPU placement on two cores):
            # many shorter pairs give the ratio's median a narrower spread than few long ones.
            api_bulk, run_bulk, bulk_ratio = alternating(options.runs * 4, bulk(False),
                                                         bulk(True))
            rows.append(("bulk throughput through the tunnel (MB/s)", f"{api_bulk:.0f}",
                         f"{run_bulk:.0f}", bulk_ratio, ">= 0.97"))

        # Short rounds alternate baseline and streams-run, so load that comes and goes on
        # a shared machine falls on all alike; medians are over every connection of every
        # round. For comparison, "python" is streams-run redirecting connects in Python
        # (an install without the native connect path), and "trace" is streams-run with its
        # connects stopped under ptrace rather than held by seccomp user notification.
        modes: dict[str, tuple[bool, dict[str, str]]] = {
            "api": (False, {}), "run": (True, {}),
            "python": (True, {"STREAMS_TRACE_CONNECTS": "python"}),
            "trace": (True, {"STREAMS_TRACE_SECCOMP": "trace"}),
        }
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        opened: dict[str, list[float]] = {mode: [] for mode in modes}
        echoed: dict[str, list[float]] = {mode: [] for mode in modes}
        # Most programs connect now and then, not in a loop: the same rounds again with
        # a pause after each connection, so every connect meets a quiet machine.
        spaced: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(options.runs * 4):
            for mode, (traced, settings) in modes.items():
                rate, opens, echoes = run_worker(traced, tunnel_id, initiator, "conns",
                                                 options.connections, script, settings)
                rates[mode].append(rate[0])
                opened[mode] += opens
                echoed[mode] += echoes
                spaced[mode] += run_worker(traced, tunnel_id, initiator, "conns",
                                           options.connections, script, settings,
                                           pause=PAUSE)[1]
        api_rate, run_rate = statistics.median(rates["api"]), statistics.median(rates["run"])
        rows.append(("connections per second through the tunnel", f"{api_rate:.0f}",
                     f"{run_rate:.0f}", f"{run_rate / api_rate:.2f}", ">= 0.5"))
        for times, mode, label, target in (
            (opened, "run", "median time to an authenticated connection (us)", "<= +50 us"),
            (opened, "python", "  the same, connects redirected in Python", "-"),
            (opened, "trace", "  the same, connects stopped under ptrace", "-"),
            (spaced, "run", f"the same, one connection every {PAUSE * 1000:.0f} ms (us)",
             "<= +50 us"),
            (spaced, "python", "  the same, connects redirected in Python", "-"),
            (spaced, "trace", "  the same, connects stopped under ptrace", "-"),
            (echoed, "run", "median time to the first byte echoed back (us)", "-"),
        ):
            base = statistics.median(times["api"]) * 1e6
            latency = statistics.median(times[mode]) * 1e6
            rows.append((label, f"{base:.0f}", f"{latency:.0f}", f"{latency - base:+.0f} us",
                         target))

        def program(command: list[str], traced: bool,
                    seccomp_mode: str = "on") -> Callable[[], float]:  # one timed program run
            return lambda: time_program(command, traced, tunnel_id, initiator, seccomp_mode)

        if not options.latency_only:
            for label, command, target in (
                ("syscall-heavy loop, 5M getppid (s)", [str(syscalls), "getppid", "5000000"],
                 "<= 1.15"),
                ("open-heavy loop, 200k open/read/close (s)",
                 [str(syscalls), "open", "200000", "/etc/hostname"], "<= 1.03"),
            ):
                native, traced, ratio = alternating(options.runs * 2, program(command, False),
                                                    program(command, True))
                rows.append((label, f"{native:.3f}", f"{traced:.3f}", ratio, target))
                # The floor for any seccomp-based tool: the program under a filter of one
                # instruction that allows everything, no supervisor at all.
                native, floor, ratio = alternating(
                    options.runs * 2, program(command, False),
                    lambda command=command: time_program([*ALLOW_ALL, *command], False, "", REPO))
                rows.append(("  floor: the same under a one-instruction allow-all filter",
                             f"{native:.3f}", f"{floor:.3f}", ratio, "-"))

            # A connect the supervisor looks at and lets run: the cost of the hand-over
            # itself, held by user notification and, for comparison, stopped under ptrace.
            connects = 20000
            command = [str(syscalls), "connect", str(connects)]
            for seccomp_mode, label in (
                ("on", "a connect elsewhere, per call (us)"),
                ("trace", "  the same, connects stopped under ptrace"),
            ):
                native, traced, _ = alternating(options.runs, program(command, False),
                                                program(command, True, seccomp_mode))
                native, traced = native / connects * 1e6, traced / connects * 1e6
                rows.append((label, f"{native:.1f}", f"{traced:.1f}",
                             f"{traced - native:+.1f} us", "-"))

            # A datagram sent with sendto and read with recvfrom, both with an address (as
            # resolvers that do not connect do): the sendto stops (it might carry a query
            # for the tunnel's names), the recvfrom not (this process sent none).
            datagrams = 20000
            command = [str(syscalls), "udp", str(datagrams)]
            native, traced, _ = alternating(options.runs, program(command, False),
                                            program(command, True))
            native, traced = native / datagrams * 1e6, traced / datagrams * 1e6
            rows.append(("a UDP datagram by sendto+recvfrom, each (us)", f"{native:.1f}",
                         f"{traced:.1f}", f"{traced - native:+.1f} us", "-"))

            # Each new process costs stops of its own (its fork, its first stop, its exec)
            # and its exit reaches the parent only through the supervisor: what a shell
            # script that runs many short commands pays.
            true = shutil.which("true") or "/bin/true"
            spawns = 1000
            command = [str(syscalls), "spawn", str(spawns), true]
            native, traced, ratio = alternating(options.runs * 2, program(command, False),
                                                program(command, True))
            rows.append((f"process spawn loop, {spawns} fork+exec+wait (s)", f"{native:.3f}",
                         f"{traced:.3f}", f"{ratio}, {(traced - native) / spawns * 1e6:+.0f} "
                         "us each", "-"))

            runs = max(options.runs * 3, 9)
            native_true = statistics.median(wall([true]) for _ in range(runs))
            for label, compiled, target in (
                (f"streams-run TUNNEL true vs true, median of {runs} (s)", True, "<= +0.2 s"),
                ("  the same, streams_trace's modules compiled at start", False, "-"),
            ):
                env, folder = package_copy(workdir, f"package-{compiled}", compiled)
                traced_true = statistics.median(
                    wall([*STREAMS_RUN, "--config-dir", str(initiator), tunnel_id, true], env,
                         folder)
                    for _ in range(runs))
                rows.append((label, f"{native_true:.3f}", f"{traced_true:.3f}",
                             f"{traced_true - native_true:+.3f} s", target))
            rss = supervisor_rss_mb(tunnel_id, initiator, client)
            rows.append(("supervisor peak RSS, 16-thread client (MB)", "-", f"{rss:.1f}", "-",
                         "<= 60 MB"))
    finally:
        listener.close()
        gateway.terminate()
        gateway.wait(timeout=20)
        shutil.rmtree(workdir, ignore_errors=True)

    header = ("figure", "baseline", "streams-run", "ratio", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    print(f"streams-run benchmark, medians of {options.runs} runs "
          f"(baseline: client API for tunnel figures, native for programs)")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
