"""Start the program: fork, let the parent PTRACE_SEIZE the child, install the filter, exec.

The child waits on a pipe until the parent has seized it, so the program is
traced from its first instruction. It then installs the filter: the one whose
connects go to the supervisor by user notification when there is one and the
kernel takes it, else the one that stops at them under ptrace. It reports on a
socket pair which went in (``U``: user notification, whose listener descriptor
travels with the report and is closed in the child; ``S``: ptrace stops only,
and why not the other; ``N`` and a reason: none), waits once more (the parent
switches to stopping at every syscall when there is no filter), and execs. An
exec failure ends the child with 127 (not found) or 126 (not executable) and
one line on stderr, like a shell.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..trace import seccomp
from ..trace.usernotify import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
)

# Signals Python sets to SIG_IGN at start-up; exec keeps SIG_IGN, so the child puts
# them back before the program starts. (What the caller had is lost; the default is
# what nearly every caller has.) Others keep the disposition streams-run inherited.
RESTORE_DEFAULT = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclass
class Child:
    pid: int
    filter_installed: bool
    reason: str  # why there is no filter, when there is none
    listener: int | None = None  # the user-notification listener, when that filter went in
    notify_reason: str = ""  # why the user-notification filter did not go in


def _install(program: seccomp.Program | None,
             notify_program: seccomp.Program | None) -> tuple[bytes, list[int]]:
    """In the child: install the best filter that goes in; the report and its descriptors."""
    if program is None:
        return b"Ndisabled", []
    why_not = b""
    if notify_program is not None:
        # Only with killable waits (Linux 5.19): without them a signal would take the
        # thread out of a connect the supervisor is still doing, and the program could
        # write to its socket in the middle of the handshake.
        try:
            listener = seccomp.install(
                notify_program,
                SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
        except OSError as exc:
            why_not = str(exc).encode()
        else:
            assert listener is not None
            return b"U", [listener]
    try:
        seccomp.install(program)
    except OSError as exc:
        return b"N" + str(exc).encode(), []
    return b"S" + why_not, []


def spawn(
    argv: Sequence[str],
    env: dict[str, str],
    program: seccomp.Program | None,
    seize: Callable[[int], None],
    before_exec: Callable[[int, bool, str], None],
    signal_mask: set[int],
    notify_program: seccomp.Program | None = None,
) -> Child:
    """Fork and exec ``argv`` traced; ``program`` None means "no seccomp filter".

    ``notify_program``, when given, is tried first: its connects are held by
    user notification instead of a ptrace stop (``Child.listener``).

    ``seize(pid)`` attaches; ``before_exec(pid, filter_installed, reason)`` runs once
    the child knows whether the filter went in (``reason``: why not), before it may exec.
    """
    go_read, go_write = os.pipe()
    report_read, report_write = socket.socketpair()
    # The child keeps every signal blocked from its first instruction to the exec: one
    # that arrived once it is seized would stop it for a parent that is not waiting yet
    # (it reads the child's report), and both would wait forever.
    parent_mask = signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:  # the parent, whether or not the fork worked
            signal.pthread_sigmask(signal.SIG_SETMASK, parent_mask)
    if pid == 0:  # child: only async-signal-safe-ish work, then exec
        try:
            os.close(go_write)
            report_read.close()
            for number in RESTORE_DEFAULT:
                signal.signal(number, signal.SIG_DFL)
            os.read(go_read, 1)  # seized
            report, descriptors = _install(program, notify_program)
            socket.send_fds(report_write, [report], descriptors)
            for descriptor in descriptors:  # the program must not hold the listener
                os.close(descriptor)
            report_write.close()
            os.read(go_read, 1)  # the parent is ready for what the report said
            os.close(go_read)
            signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)  # the program's own
            _exec(argv, env)
        except (OSError, ValueError) as exc:  # ValueError: an empty command name
            code = 127 if isinstance(exc, ValueError) or exc.errno == errno.ENOENT else 126
            try:
                os.write(2, b"streams-run: %s: %s\n" % (os.fsencode(argv[0]),
                                                        _exec_failure(argv[0], env, exc)))
            finally:
                os._exit(code)
        except BaseException:
            os._exit(125)
        os._exit(125)  # not reached: exec replaced us
    os.close(go_read)
    report_write.close()
    try:
        seize(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(go_write)
        report_read.close()
        raise
    os.write(go_write, b"g")
    report = b""
    listener: int | None = None
    while True:
        chunk, descriptors, _, _ = socket.recv_fds(report_read, 512, 1)
        for descriptor in descriptors:
            os.set_inheritable(descriptor, False)
            listener = descriptor
        if not chunk:
            break
        report += chunk
    report_read.close()
    kind = report[:1]
    detail = report[1:].decode(errors="replace")
    child = Child(pid, kind in (b"U", b"S"), detail if kind == b"N" else "",
                  listener if kind == b"U" else None, detail if kind == b"S" else "")
    try:
        before_exec(pid, child.filter_installed, child.reason)
    finally:
        os.write(go_write, b"g")
        os.close(go_write)
    return child


def _exec(argv: Sequence[str], env: dict[str, str]) -> None:
    """execvpe, and as execvp(3), env(1) and the shells do: a file the kernel cannot
    run (an executable script without a #! line) runs as a /bin/sh script."""
    try:
        os.execvpe(argv[0], list(argv), env)
    except OSError as exc:
        script = shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if exc.errno != errno.ENOEXEC or script is None:
            raise
        os.execve("/bin/sh", ["/bin/sh", script, *argv[1:]], env)


def _exec_failure(command: str, env: dict[str, str], exc: OSError | ValueError) -> bytes:
    """Why exec failed, as a shell would say it (in the child, before it exits)."""
    if isinstance(exc, ValueError):
        return b"command not found"
    if exc.errno != errno.ENOENT:
        return (exc.strerror or "cannot run it").encode()
    if shutil.which(command, path=env.get("PATH", os.defpath)) is not None:
        # The file is there: what is missing is the interpreter its #! line names
        # (or, for a binary, its loader).
        return b"bad interpreter: its #! line (or ELF loader) names a program not found"
    return b"command not found"


def exit_status(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N for signal N."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 125

