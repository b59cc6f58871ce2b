"""Probes of the kernel features streams-run uses, each tried for real on a child process.

Version strings are not trusted (RHEL backports, sites that forbid features):
each probe forks a short-lived child and does the thing. ``--data-path auto``
and ``streams-trace doctor`` share these; nothing here prints.
"""

from __future__ import annotations

import errno
import os
import platform
import signal
from collections.abc import Callable
from dataclasses import dataclass

from . import ptraceapi as pt
from . import seccomp, usernotify

YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str  # what was found, in a few words


def _paused_child() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only waits to be killed
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            while True:
                signal.pause()
        finally:
            os._exit(0)
    return pid


def _end(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, pt.WALL)
    except ChildProcessError:
        pass


def kernel_release() -> str:
    return platform.release()


def yama_scope() -> Probe:
    try:
        with open(YAMA_SCOPE) as scope:
            value = scope.read().strip()
    except OSError:
        return Probe(True, "no Yama LSM (no extra ptrace restriction)")
    meaning = {
        "0": "classic: any process of the same user",
        "1": "restricted: descendants only (streams-run traces its own child)",
        "2": "admin only: needs CAP_SYS_PTRACE",
        "3": "no ptrace at all",
    }.get(value, "unknown")
    ok = value in ("0", "1") or (value == "2" and os.geteuid() == 0)
    return Probe(ok, f"{value} ({meaning})")


def ptrace_permitted() -> Probe:
    """PTRACE_SEIZE a child and read its syscall state (PTRACE_GET_SYSCALL_INFO, 5.3+)."""
    pid = _paused_child()
    try:
        try:
            pt.seize(pid, 0)
        except OSError as exc:
            return Probe(False, f"PTRACE_SEIZE refused: {os.strerror(exc.errno or 0)}")
        try:
            pt.interrupt(pid)
            os.waitpid(pid, pt.WALL)
            pt.syscall_info(pid)
        except OSError as exc:
            return Probe(False, f"PTRACE_GET_SYSCALL_INFO failed ({os.strerror(exc.errno or 0)}; "
                                "Linux 5.3+ needed)")
        return Probe(True, "PTRACE_SEIZE and PTRACE_GET_SYSCALL_INFO work")
    finally:
        _end(pid)


def _report_from_child(action: Callable[[], str]) -> str:
    """Run ``action`` in a forked child (filters stay there); what it returned, or its error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reported through the pipe
        try:
            os.close(read_end)
            try:
                os.write(write_end, action().encode())
            except OSError as exc:
                os.write(write_end, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        return os.read(read_end, 512).decode(errors="replace") or "the probe child died"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


_ALLOW_ALL = [(seccomp.BPF_RET | seccomp.BPF_K, 0, 0, seccomp.SECCOMP_RET_ALLOW)]


def seccomp_filters() -> Probe:
    """Install an allow-all filter in a child (no_new_privs + SECCOMP_MODE_FILTER)."""

    def install() -> str:
        seccomp.install(_ALLOW_ALL)
        return "ok"

    report = _report_from_child(install)
    if report == "ok":
        return Probe(True, "seccomp-BPF filters can be installed")
    return Probe(False, report)


def user_notification() -> Probe:
    """Install a filter with a user-notification listener and killable waits in a child,
    as streams-run's direct path does to hold connects without a ptrace stop."""

    def install() -> str:
        listener = seccomp.install(_ALLOW_ALL, usernotify.SECCOMP_FILTER_FLAG_NEW_LISTENER
                                   | usernotify.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
        assert listener is not None
        return "ok sync" if usernotify.set_sync_wake_up(listener) else "ok"

    report = _report_from_child(install)
    if report == "ok sync":
        return Probe(True, "connects are held without a ptrace stop, with synchronous "
                           "wake-ups (Linux 6.6+)")
    if report == "ok":
        return Probe(True, "connects are held without a ptrace stop (no synchronous "
                           "wake-ups before Linux 6.6)")
    return Probe(False, f"{report} (Linux 5.19+ needed): connects stop under ptrace")


def pidfd_getfd() -> Probe:
    """Take a copy of a child's file descriptor, as direct mode does with the program's socket."""
    if not hasattr(os, "pidfd_open"):
        return Probe(False, "this Python has no os.pidfd_open")
    read_end, write_end = os.pipe()
    pid = _paused_child()
    try:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            return Probe(False, f"pidfd_open failed: {os.strerror(exc.errno or 0)} "
                                "(Linux 5.3+ needed)")
        try:
            copy = pt.pidfd_getfd(pidfd, read_end)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                return Probe(False, "pidfd_getfd is missing (Linux 5.6+ needed)")
            return Probe(False, f"pidfd_getfd is not permitted ({os.strerror(exc.errno or 0)})")
        finally:
            os.close(pidfd)
        os.close(copy)
        return Probe(True, "pidfd_getfd works")
    finally:
        _end(pid)
        os.close(read_end)
        os.close(write_end)


def choose_data_path(requested: str) -> tuple[str, str]:
    """(data path, why) for ``requested`` (auto, direct or relay); auto probes pidfd_getfd once."""
    if requested != "auto":
        return requested, "asked for"
    probe = pidfd_getfd()
    if probe.ok:
        return "direct", "auto: pidfd_getfd works, so the program's own socket is connected"
    return "relay", f"auto: {probe.detail}, so connections are relayed"
