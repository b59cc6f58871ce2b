"""Start the program: fork, let the parent PTRACE_SEIZE the child, install the filter, exec.

The child waits on a pipe until the parent has seized it, so the program is
traced from its first instruction. It then reports on a second pipe whether the
seccomp filter went in (``S``) or not (``N`` and a reason), waits once more
(the parent switches to stopping at every syscall when there is no filter),
and execs. An exec failure ends the child with 127 (not found) or 126 (not
executable) and one line on stderr, like a shell.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..trace import seccomp

# Signals Python sets to SIG_IGN at start-up or that the supervisor ignores; exec
# keeps SIG_IGN, so the child puts them back before the program starts.
RESTORE_DEFAULT = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


@dataclass
class Child:
    pid: int
    filter_installed: bool
    reason: str  # why there is no filter, when there is none


def spawn(
    argv: Sequence[str],
    env: dict[str, str],
    program: list[tuple[int, int, int, int]] | None,
    seize: Callable[[int], None],
    before_exec: Callable[[int, bool, str], None],
    signal_mask: set[int],
) -> Child:
    """Fork and exec ``argv`` traced; ``program`` None means "no seccomp filter".

    ``seize(pid)`` attaches; ``before_exec(pid, filter_installed, reason)`` runs once
    the child knows whether the filter went in (``reason``: why not), before it may exec.
    """
    go_read, go_write = os.pipe()
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish work, then exec
        try:
            os.close(go_write)
            os.close(report_read)
            for number in RESTORE_DEFAULT:
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
            os.read(go_read, 1)  # seized
            if program is None:
                report = b"Ndisabled"
            else:
                try:
                    seccomp.install(program)
                    report = b"S"
                except OSError as exc:
                    report = b"N" + str(exc).encode()
            os.write(report_write, report)
            os.close(report_write)
            os.read(go_read, 1)  # the parent is ready for what the report said
            os.close(go_read)
            os.execvpe(argv[0], list(argv), env)
        except OSError as exc:
            code = 127 if exc.errno == errno.ENOENT else 126
            reason = "command not found" if code == 127 else exc.strerror
            os.write(2, f"streams-run: {argv[0]}: {reason}\n".encode())
            os._exit(code)
        except BaseException:
            os._exit(125)
        os._exit(125)  # not reached: exec replaced us
    os.close(go_read)
    os.close(report_write)
    try:
        seize(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(go_write)
        os.close(report_read)
        raise
    os.write(go_write, b"g")
    report = b""
    while True:
        chunk = os.read(report_read, 512)
        if not chunk:
            break
        report += chunk
    os.close(report_read)
    installed = report[:1] == b"S"
    reason = report[1:].decode(errors="replace")
    try:
        before_exec(pid, installed, reason)
    finally:
        os.write(go_write, b"g")
        os.close(go_write)
    return Child(pid, installed, reason)


def exit_status(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N for signal N."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 125

