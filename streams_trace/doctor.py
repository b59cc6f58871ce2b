"""What ``streams-trace doctor`` finds out: kernel features, data path, pump, a tunnel's conf.

Every check is done for real (see :mod:`streams_trace.trace.probes`, which
``streams-run --data-path auto`` uses too). The report is a plain dict, printed
as text or JSON by the CLI. Secrets are masked.
"""

from __future__ import annotations

import platform
import socket
import time
from pathlib import Path
from typing import Any

from .trace import probes


def _probe(result: probes.Probe) -> dict[str, Any]:
    return {"ok": result.ok, "detail": result.detail}


def system_report() -> dict[str, Any]:
    from .errors import UsageError
    from .relay import pump_choice
    from .relay.native import helper_path
    from .supervisor import fastconnect

    pidfd = probes.pidfd_getfd()
    path, why = probes.choose_data_path("auto")
    try:
        pump, pump_why = pump_choice()
    except UsageError as exc:
        pump, pump_why = "none", str(exc)
    helper = helper_path()
    connects_problem = fastconnect.problem()
    return {
        "kernel": {"release": probes.kernel_release(), "machine": platform.machine()},
        "features": {
            "ptrace": _probe(probes.ptrace_permitted()),
            "seccomp_filters": _probe(probes.seccomp_filters()),
            "user_notification": _probe(probes.user_notification()),
            "pidfd_getfd": _probe(pidfd),
            "yama_ptrace_scope": _probe(probes.yama_scope()),
        },
        "data_path": {"auto": path, "why": why},
        "native_helper": {"built": helper is not None, "path": str(helper) if helper else None},
        "pump": {"runs": pump, "why": pump_why},
        "native_connects": {"usable": connects_problem is None,
                            "path": str(fastconnect.LIBRARY_PATH),
                            "problem": connects_problem},
    }


def _masked_conf(conf: Any) -> dict[str, Any]:
    return dict(line.split("=", 1) for line in conf.masked_lines())


def check_access_point(conf: Any, timeout: float = 3.0, handshake: bool = True) -> dict[str, Any]:
    """TCP connect to the conf's initiator access point, then the LAN handshake if asked."""
    from .handshake import Connector
    from .lan import HandshakeError, handshake_blocking

    contact = conf.connector_contact_string
    result: dict[str, Any] = {"contact": str(contact), "tcp": None, "handshake": None}
    started = time.monotonic()
    try:
        sock = socket.create_connection(contact.address, timeout=timeout)
    except OSError as exc:
        result["tcp"] = {"ok": False, "detail": exc.strerror or str(exc)}
        return result
    with sock:
        result["tcp"] = {"ok": True,
                         "detail": f"connected in {(time.monotonic() - started) * 1000:.1f} ms"}
        if not handshake:
            return result
        if conf.secret is None:
            result["handshake"] = {"ok": True, "detail": "no LAN secret in the conf: none needed"}
            return result
        started = time.monotonic()
        try:
            handshake_blocking(sock, Connector(conf.secret, conf.tunnel_id, timeout=timeout))
        except (HandshakeError, OSError) as exc:
            result["handshake"] = {"ok": False, "detail": str(exc)}
            return result
        result["handshake"] = {
            "ok": True,
            "detail": f"authenticated in {(time.monotonic() - started) * 1000:.1f} ms"}
    return result


def tunnel_report(tunnel_id: str, config_dir: str | Path | None, handshake: bool = True,
                  timeout: float = 3.0) -> dict[str, Any]:
    from . import conf as confmod

    conf = confmod.load(tunnel_id, config_dir)  # ConfError: one line, exit 3
    report: dict[str, Any] = {
        "id": tunnel_id,
        "conf": str(conf.path),
        "fields": _masked_conf(conf),
        "expired": conf.is_expired(),
        "contact_stale": conf.contact_is_stale(),
        "access_point": None,
    }
    if conf.connector_contact_string is not None:
        report["access_point"] = check_access_point(conf, timeout, handshake)
    return report


def verdict(report: dict[str, Any]) -> int:
    """0 fine; 7 streams-run cannot trace here; 3 the tunnel has expired (streams-run
    refuses its conf); 6 the access point did not answer."""
    from .errors import ExitCode

    if not report["features"]["ptrace"]["ok"]:
        return int(ExitCode.UNSUPPORTED)
    if (report.get("tunnel") or {}).get("expired"):
        return int(ExitCode.CONFIG)
    access = (report.get("tunnel") or {}).get("access_point")
    if access is not None:
        checks = [access["tcp"], access["handshake"]]
        if any(check is not None and not check["ok"] for check in checks):
            return int(ExitCode.NETWORK)
    return int(ExitCode.OK)


def _mark(check: dict[str, Any] | None) -> str:
    if check is None:
        return "-"
    return "ok" if check["ok"] else "NO"


def format_text(report: dict[str, Any]) -> str:
    lines = [f"{'kernel':<18}{report['kernel']['release']} ({report['kernel']['machine']})"]
    names = {"ptrace": "ptrace", "seccomp_filters": "seccomp filters",
             "user_notification": "user notification", "pidfd_getfd": "pidfd_getfd",
             "yama_ptrace_scope": "Yama ptrace_scope"}
    for key, label in names.items():
        check = report["features"][key]
        lines.append(f"{label:<18}{_mark(check):<4}{check['detail']}")
    data_path = report["data_path"]
    lines.append(f"{'data path (auto)':<18}{data_path['auto']} ({data_path['why']})")
    helper = report["native_helper"]
    lines.append(f"{'native helper':<18}" + (f"built: {helper['path']}" if helper["built"]
                                             else "not built (the Python pump runs)"))
    lines.append(f"{'relay pump':<18}{report['pump']['runs']} ({report['pump']['why']})")
    connects = report["native_connects"]
    lines.append(f"{'native connects':<18}" + (
        f"usable: {connects['path']}" if connects["usable"]
        else f"{connects['problem']} (streams-run redirects connects in Python)"))
    tunnel = report.get("tunnel")
    if tunnel is not None:
        lines.append(f"tunnel {tunnel['id']}")
        lines.append(f"  {'conf':<16}{tunnel['conf']}")
        for key, value in tunnel["fields"].items():
            lines.append(f"  {key:<16}{value}")
        if tunnel["expired"]:
            lines.append(f"  {'':<16}the tunnel has EXPIRED")
        access = tunnel["access_point"]
        if access is None:
            lines.append(f"  {'access point':<16}none in the conf (a listener-side conf: the "
                         "listener access point connects to the program)")
        else:
            lines.append(f"  {'access point':<16}{access['contact']}")
            lines.append(f"  {'  TCP connect':<16}{_mark(access['tcp']):<4}"
                         f"{access['tcp']['detail']}")
            if access["handshake"] is not None:
                lines.append(f"  {'  handshake':<16}{_mark(access['handshake']):<4}"
                             f"{access['handshake']['detail']}")
    return "\n".join(lines)
