"""One streams-run session: start the program traced, run the loop, return its exit status."""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
from collections.abc import Sequence

from ..errors import StreamsTraceError
from ..trace import arch as archmod
from ..trace import ptraceapi as pt
from ..trace import seccomp
from ..trace.signalfd import SignalFd
from . import SUPERVISOR_FAILED, fastconnect, launch
from .loop import Loop
from .notify import Notifier
from .redirect import REFUSED_SYSCALLS, Redirector, Settings
from .tracer import FORWARDED_SIGNALS, OPTIONS, SI_KERNEL, SI_USER, Tracer

log = logging.getLogger("streams_trace.run")

# The syscalls the redirect needs to see; everything else runs untraced.
RULES = (
    seccomp.Rule("connect"),
    seccomp.Rule("bind"),
    seccomp.Rule("accept"),
    seccomp.Rule("accept4"),
    # musl resolves with sendto() to the nameserver: only the calls that carry an address
    # stop.
    seccomp.Rule("sendto", nonzero_arg=4),
    # (recvfrom with an address stops only in a process that sent to a DNS stand-in:
    # Redirector.watch_recvfrom adds a filter for it then.)
    # TCP Fast Open: a send that connects (see Redirector.on_sendmsg).
    seccomp.Rule("sendmsg", nonzero_arg=2, mask=socket.MSG_FASTOPEN),
)
# "trace": connects stop under ptrace too, never by user notification (for comparison);
# "off": no filter, the stop-at-every-syscall fallback.
SECCOMP_ENV = "STREAMS_TRACE_SECCOMP"


class SupervisorError(StreamsTraceError):
    """streams-run itself cannot do its job (exit status 125)."""


def _seize(pid: int) -> None:
    try:
        pt.seize(pid, OPTIONS)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS):
            raise SupervisorError(
                "ptrace is not permitted here "
                f"({os.strerror(exc.errno)}): check /proc/sys/kernel/yama/ptrace_scope "
                "(3 forbids it) and, in a container, its seccomp profile and CAP_SYS_PTRACE"
            ) from None
        raise


def run(
    argv: Sequence[str],
    settings: Settings,
    *,
    env: dict[str, str] | None = None,
    use_seccomp: bool | None = None,
    quiet: bool = False,
) -> int:
    """Run ``argv`` on the tunnel; the program's exit status (128+N for signal N)."""
    if not archmod.is_supported():
        raise SupervisorError(
            f"streams-run supports x86_64 programs only, not {archmod.native().name}"
        )
    try:
        fastconnect.check_choice()
    except fastconnect.Unavailable as exc:
        raise SupervisorError(str(exc)) from None
    seccomp_mode = os.environ.get(SECCOMP_ENV, "on").lower()
    if use_seccomp is None:
        use_seccomp = seccomp_mode not in ("off", "0", "no")
    loop = Loop()
    signals = SignalFd({signal.SIGCHLD, *FORWARDED_SIGNALS})
    tracer = Tracer(loop)
    redirector = Redirector(tracer, loop, settings)
    tracer.policy = redirector
    program = seccomp.build(RULES, refuse=REFUSED_SYSCALLS) if use_seccomp else None
    # The direct path's connects need no registers: user notification holds them
    # without a ptrace stop. Relay mode rewrites the connect's arguments, so it stops.
    notify_program = None
    if program is not None and settings.data_path == "direct" and seccomp_mode != "trace":
        notify_program = seccomp.build(RULES, notify={"connect"}, refuse=REFUSED_SYSCALLS)

    def before_exec(pid: int, installed: bool, reason: str) -> None:
        if not installed:
            if not quiet:
                log.warning(
                    "no seccomp filter (%s): stopping the program at every system call, "
                    "which makes it slower",
                    reason or "unavailable",
                )
            tracer.enter_fallback(pid)

    try:
        child = launch.spawn(
            argv, dict(os.environ if env is None else env), program, _seize, before_exec,
            signals.previous_mask, notify_program,
        )
    except BaseException:
        redirector.close()
        signals.close()
        raise
    if child.listener is not None:
        native = redirector.start_native_connects(child.listener)
        if native is None and fastconnect.choice() == "native":
            os.kill(child.pid, signal.SIGKILL)
            redirector.close()
            signals.close()
            raise SupervisorError(f"the native connect path did not start, and "
                                  f"${fastconnect.CONNECTS_ENV} is native (the -d log says why)")
        redirector.notifier = Notifier(loop, child.listener, tracer, redirector, native)
        tracer.on_signal_stop = redirector.notifier.on_signal_stop
        how = "seccomp filter, connects by user notification" + (
            ", redirected in native code" if native is not None else "")
    elif child.filter_installed:
        how = "seccomp filter, connects stop under ptrace" + (
            f" (no user notification: {child.notify_reason})" if child.notify_reason else "")
    else:
        how = "every syscall stops"
    log.debug("started %s as process %d (%s)", argv[0], child.pid, how)
    tracer.adopt(child.pid)

    leads_session = os.getsid(0) == os.getpid()

    def on_signals() -> None:
        arrived = signals.read()
        if any(number == signal.SIGCHLD for number, _, _ in arrived):
            tracer.reap()  # first: the program may just have taken what we got too
        for number, code, sender in arrived:
            if number == signal.SIGCHLD:
                continue
            if code == SI_KERNEL and not (number == signal.SIGHUP and leads_session):
                continue  # the terminal sent it to the whole job (a hang-up goes to the
                # session leader alone: to us, when the shell exec'd streams-run)
            if code == SI_USER and tracer.took(number, sender):
                continue  # a kill() to the whole process group reached the program too
            try:
                os.kill(child.pid, number)
            except ProcessLookupError:
                pass

    loop.watch(signals, selectors.EVENT_READ, on_signals)
    ended = False
    try:
        tracer.reap()
        loop.run()
        ended = True
    finally:
        redirector.close()
        loop.unwatch(signals)
        # Once the program has gone, streams-run's last act is to exit with its status:
        # a signal for the program that comes now must not replace that status.
        signals.close(ignore=FORWARDED_SIGNALS if ended else ())
    log.debug("supervisor: %d connection%s put on the tunnel, %d refused",
              redirector.redirected, "" if redirector.redirected == 1 else "s",
              redirector.refused)
    if tracer.failure is not None:
        return SUPERVISOR_FAILED
    if tracer.main_status is None:
        return SUPERVISOR_FAILED
    return launch.exit_status(tracer.main_status)
