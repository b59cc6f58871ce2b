"""iperf3 through the tunnel next to iperf3 without it, between network namespaces (root).

    sudo python benchmarks/bench_iperf3.py [--seconds 5] [--data-path auto]

Builds the acceptance topology (compute, dtn, facility; tests/netns.py), runs the
local gateway in dtn, an iperf3 server under streams-run in facility and an iperf3
client under streams-run in compute, both directions. The baseline is iperf3 without
the tunnel over the same veth path: a client in dtn straight to the server in facility.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams_trace import conf  # noqa: E402
from tests.netns import Network, three_hosts  # noqa: E402

PORT = 5201
STREAMS_RUN = [sys.executable, "-c", "from streams_trace.cli.run import main; main()"]


def gbits(net: Network, namespace: str, client: list[str]) -> float:
    result = net.run(namespace, client, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"iperf3 failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    return float(json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def serve_once(net: Network, server: list[str]) -> subprocess.Popen[str]:
    process = net.popen(net.facility, server, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listening = net.run(net.facility, ["ss", "-Hltn", f"sport = :{PORT}"],
                            capture_output=True, text=True).stdout
        if listening.strip():
            return process
        time.sleep(0.1)
    raise SystemExit("iperf3 server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--data-path", default=None,
                        help="pass --data-path to streams-run (when it has the option)")
    args = parser.parse_args()
    iperf3 = shutil.which("iperf3")
    if iperf3 is None:
        raise SystemExit("iperf3 is not installed (Debian: iperf3)")
    run_options = ["--data-path", args.data_path] if args.data_path else []
    rows = []
    with three_hosts() as net, tempfile.TemporaryDirectory() as folder:
        gateway = net.popen(net.dtn, [
            sys.executable, "-m", "streams_trace", "gateway", "--host", net.dtn_compute_ip,
            "--listener-contact-string", f"{net.facility_ip}:{PORT}",
            "--initiator-config-dir", f"{folder}/i", "--listener-config-dir", f"{folder}/l"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        tunnel_id = gateway.stdout.readline().strip()  # type: ignore[union-attr]
        fake_port = str(conf.load(tunnel_id, f"{folder}/i").fake_port)
        try:
            for direction, reverse in (("compute -> facility", []), ("facility -> compute",
                                                                       ["-R"])):
                timing = ["-t", str(args.seconds), "-J", *reverse]
                plain_server = serve_once(net, [iperf3, "-s", "-1", "-p", str(PORT)])
                without = gbits(net, net.dtn, [iperf3, "-c", net.facility_ip, "-p", str(PORT),
                                               *timing])
                plain_server.wait(timeout=30)
                tunnel_server = serve_once(net, [
                    *STREAMS_RUN, "--config-dir", f"{folder}/l", *run_options, tunnel_id,
                    iperf3, "-s", "-1", "-p", str(PORT)])
                through = gbits(net, net.compute, [
                    *STREAMS_RUN, "--config-dir", f"{folder}/i", *run_options, tunnel_id,
                    iperf3, "-c", f"globus.{tunnel_id}", "-p", fake_port, *timing])
                tunnel_server.wait(timeout=30)
                rows.append((direction, without, through))
        finally:
            gateway.terminate()
            gateway.wait(timeout=20)
    print(f"# iperf3, {args.seconds} s per run, one TCP stream; Gbit/s")
    print(f"{'direction':<22}{'without tunnel':>16}{'through tunnel':>16}{'ratio':>8}")
    for direction, without, through in rows:
        print(f"{direction:<22}{without:>16.2f}{through:>16.2f}{through / without:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
