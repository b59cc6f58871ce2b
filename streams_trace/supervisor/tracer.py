"""The process/thread table and the one ``waitpid(-1, __WALL)`` loop.

Stops are read as SIGCHLD arrives on a signalfd, so the same loop also drives
handshakes and DNS: the supervisor never blocks on one connection. What to do
at a stopped connect/bind/accept/sendto/recvfrom is the policy's business (see
``redirect``); this module only knows how to stop, hold, complete and resume
threads, follow forks, clones and execs, re-deliver signals and keep
group-stops (Ctrl-Z) working.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..trace import arch as archmod
from ..trace import ptraceapi as pt
from ..trace import seccomp
from ..trace.procfs import is_thread_of, pending_signals, tgid_of, thread_has_exited
from .loop import Loop

log = logging.getLogger("streams_trace.run")

OPTIONS = (
    pt.PTRACE_O_TRACESYSGOOD
    | pt.PTRACE_O_TRACEFORK
    | pt.PTRACE_O_TRACEVFORK
    | pt.PTRACE_O_TRACECLONE
    | pt.PTRACE_O_TRACEEXEC
    | pt.PTRACE_O_TRACESECCOMP
    | pt.PTRACE_O_EXITKILL  # a dying supervisor must not leave the program off the tunnel
)
SYSCALL_STOP = signal.SIGTRAP | 0x80  # with PTRACE_O_TRACESYSGOOD
STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
TERMINAL_STOP_SIGNALS = {signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
# SIGCONT too: `kill -TSTP` to streams-run stops the program, `kill -CONT` must resume it.
FORWARDED_SIGNALS = {
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGTSTP, signal.SIGCONT,
}
SI_KERNEL = 0x80  # siginfo si_code of a signal the terminal sent to the whole job
SI_USER = 0  # siginfo si_code of a signal sent with kill()
TAKEN_MEMORY = 0.5  # s a signal the program took is remembered (see Tracer.took)

ExitCallback = Callable[[pt.SyscallInfo], None]


@dataclass(eq=False)
class Task:
    """One traced thread."""

    tid: int
    tgid: int
    started: bool = False  # its initial attach stop has been seen
    on_exit_stop: ExitCallback | None = None  # the policy waits for this syscall's result
    inject: str | None = None  # "close-entry" / "close-exit" while closing an fd in it
    # (instruction pointer after the syscall, nr, args) to re-run
    restart: tuple[int, int, tuple[int, ...]] | None = None
    held_signals: list[int] = field(default_factory=list)  # arrived during an injected close
    on_death: list[Callable[[], None]] = field(default_factory=list)


class HeldCall(Protocol):
    """A syscall of a program thread waiting for the supervisor's decision.

    Held at a ptrace stop (``TracedCall``) or by seccomp user notification
    (``notify.NotifiedCall``); the policy answers both alike.
    """

    tid: int
    tgid: int

    @property
    def on_death(self) -> list[Callable[[], None]]: ...
    def complete(self, result: int) -> None: ...  # it returns ``result`` without running
    def resume(self) -> None: ...  # it runs as the program made it


class TracedCall:
    """A syscall held at a ptrace (seccomp or syscall-entry) stop."""

    __slots__ = ("task", "tgid", "tid", "tracer")

    def __init__(self, tracer: Tracer, task: Task) -> None:
        self.tracer = tracer
        self.task = task
        self.tid = task.tid
        self.tgid = task.tgid

    @property
    def on_death(self) -> list[Callable[[], None]]:
        return self.task.on_death

    def complete(self, result: int) -> None:
        self.tracer.complete(self.task, result)

    def resume(self) -> None:
        self.tracer.resume(self.task)


class Policy(Protocol):
    def on_syscall(self, task: Task, nr: int, args: tuple[int, ...]) -> None: ...
    def on_new_task(self, creator: Task, tid: int, tgid: int) -> None: ...
    def forget_thread(self, task: Task) -> None: ...
    def forget_process(self, tgid: int, exec_by: int | None = None) -> None: ...


class Tracer:
    def __init__(self, loop: Loop, *, stop_every_syscall: bool = False) -> None:
        self.loop = loop
        self.arch = archmod.native()
        self.stop_every_syscall = stop_every_syscall  # no seccomp filter: fallback mode
        self.tasks: dict[int, Task] = {}
        self.policy: Policy | None = None
        self.main_pid = 0
        self.taken: list[tuple[int, int, float]] = []  # (signal, kill() sender, when) taken
        self.expected: list[tuple[int, int, float]] = []  # seen pending, not taken yet
        self.main_status: int | None = None
        self.failure: str | None = None  # set when the supervisor itself ends the program
        self.stopped_self = False
        # Called at each signal-delivery-stop before the signal goes on (notify.py's fix-up).
        self.on_signal_stop: Callable[[Task], None] | None = None

    # -- start -------------------------------------------------------------------------

    def adopt(self, pid: int) -> None:
        """Take the seized first child into the table."""
        self.main_pid = pid
        self.tasks[pid] = Task(pid, pid, started=True)

    def enter_fallback(self, pid: int) -> None:
        """No seccomp filter: stop the child once, then resume it stopping at every syscall."""
        self.stop_every_syscall = True
        pt.interrupt(pid)
        while True:
            _, status = os.waitpid(pid, pt.WALL)
            if os.WIFSTOPPED(status) and status >> 16 == pt.PTRACE_EVENT_STOP:
                break
            if os.WIFSTOPPED(status):  # a signal that raced us in: deliver it later
                pt.cont(pid, os.WSTOPSIG(status))
                pt.interrupt(pid)
        pt.syscall(pid)

    # -- what the policy calls ---------------------------------------------------------

    def resume(self, task: Task, signal_number: int = 0) -> None:
        """Let the thread run on (it keeps stopping at syscalls when someone waits for one)."""
        try:
            if self.stop_every_syscall or task.on_exit_stop or task.inject:
                pt.syscall(task.tid, signal_number)
            else:
                pt.cont(task.tid, signal_number)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def complete(self, task: Task, result: int) -> None:
        """At a syscall entry: skip the syscall, make it return ``result`` (-errno on error)."""
        try:
            for offset, value in archmod.skip_syscall_words(result):
                pt.poke_user(task.tid, offset, value)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
            return
        self.resume(task)

    def run_to_exit(self, task: Task, callback: ExitCallback) -> None:
        """Run the syscall the thread is stopped at; call ``callback`` with its result."""
        task.on_exit_stop = callback
        self.resume(task)

    def close_and_restart(self, task: Task, fd: int, nr: int, args: tuple[int, ...],
                          restore: tuple[int, bytes] | None = None) -> None:
        """At a syscall exit: close ``fd`` inside the program, then re-run syscall ``nr(args)``.

        Used when an accepted connection fails the handshake: the program never
        sees it, and its accept goes on waiting (or says EAGAIN). ``restore`` is
        (address, bytes) of program memory to put back first: the accept's address
        length, which the kernel replaced with the refused peer's (the restarted
        accept would take that for the room the buffer has).
        """
        try:
            if restore is not None:
                pt.write_memory(task.tid, *restore)
            regs = pt.get_registers(task.tid)
            task.restart = (archmod.instruction_pointer(regs), nr, args)
            archmod.rewind_to_syscall(regs, self.arch.number("close"), (fd,))
            pt.set_registers(task.tid, regs)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
            return
        task.inject = "close-entry"
        self.resume(task)

    def run_instead(self, task: Task, nr: int, args: tuple[int, ...],
                    on_result: Callable[[int], None]) -> None:
        """At a syscall entry: run ``nr(args)`` in the thread first, then its own syscall again.

        ``on_result`` gets the injected syscall's result (-errno on error). The thread
        then re-issues the syscall it was making, so the policy sees it stop once more
        (scratch memory is mapped this way, and the recvfrom filter added).
        """
        regs = pt.get_registers(task.tid)
        original = (archmod.syscall_number(regs), archmod.syscall_args(regs))
        archmod.set_syscall_number(regs, nr)
        archmod.set_syscall_args(regs, args)
        pt.set_registers(task.tid, regs)

        def at_exit(info: pt.SyscallInfo) -> None:
            on_result(int(info.rval))
            try:
                regs = pt.get_registers(task.tid)
                archmod.rewind_to_syscall(regs, *original)
                pt.set_registers(task.tid, regs)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
                return
            self.resume(task)

        self.run_to_exit(task, at_exit)

    def kill_process(self, task: Task, reason: str) -> None:
        log.error("%s", reason)
        if task.tgid == self.main_pid:
            self.failure = reason
        try:
            os.kill(task.tgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- the wait loop -----------------------------------------------------------------

    def reap(self) -> None:
        """Handle every stop and exit that is waiting."""
        while True:
            try:
                tid, status = os.waitpid(-1, os.WNOHANG | pt.WALL)
            except ChildProcessError:
                self.loop.running = False
                return
            if tid == 0:
                return
            try:
                self._handle(tid, status)
            except OSError as exc:
                if exc.errno != errno.ESRCH:  # the thread died under us: its exit comes next
                    raise

    def _task(self, tid: int) -> Task:
        task = self.tasks.get(tid)
        if task is None:  # a new thread whose stop overtook its creator's event
            task = Task(tid, tgid_of(tid))
            self.tasks[tid] = task
        return task

    def _handle(self, tid: int, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._on_exit(tid, status)
            return
        if not os.WIFSTOPPED(status):
            return
        task = self._task(tid)
        sig = os.WSTOPSIG(status)
        event = status >> 16
        if sig == SYSCALL_STOP:
            self._on_syscall_stop(task)
        elif event == pt.PTRACE_EVENT_SECCOMP:
            self._on_seccomp_stop(task)
        elif event in (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, pt.PTRACE_EVENT_CLONE):
            child = pt.event_message(tid)
            known = self.tasks.get(child)
            # Asked of the kernel whatever the event (a thread made with SIGCHLD as its
            # exit signal is reported as a fork), by a path look-up, not a status read.
            tgid = known.tgid if known is not None else (
                task.tgid if is_thread_of(child, task.tgid) else child)
            if known is None:
                self.tasks[child] = Task(child, tgid)
            if self.policy is not None:
                self.policy.on_new_task(task, child, tgid)
            self.resume(task)
        elif event == pt.PTRACE_EVENT_EXEC:
            # The exec'ing thread now has the thread-group id; every other thread is gone.
            try:
                former = pt.event_message(tid)  # the exec'ing thread's id before
            except OSError:  # killed meanwhile: its exit, next, forgets the rest
                former = tid
            for other in [t for t in self.tasks.values() if t.tgid == task.tgid and t.tid != tid]:
                self._forget_task(other, tell_policy=False)  # forget_process does it all
            if self.policy is not None:  # a new memory image: scratch memory is gone
                self.policy.forget_process(task.tgid, exec_by=former)
            # When another thread exec'd, this Task was the old main thread's, which may
            # have been held for a connection: that thread is gone, end what waited on it.
            for callback in task.on_death:
                callback()
            task.on_death.clear()
            task.on_exit_stop, task.inject, task.restart = None, None, None
            task.held_signals.clear()
            self.resume(task)
        elif event == pt.PTRACE_EVENT_STOP:
            # A thread's first stop says SIGTRAP, unless it was born into a group stop
            # (a stop signal came while it was being made): then it stays stopped too.
            task.started = True
            if sig in STOP_SIGNALS:
                self._on_group_stop(task, sig)
            else:
                self.resume(task)
        elif event:
            self.resume(task)
        else:  # signal-delivery-stop: give the signal to the program (Go's SIGURG too)
            task.started = True
            if sig in FORWARDED_SIGNALS and task.tgid == self.main_pid:
                self._note_taken(task, sig)
            if task.inject == "close-entry":
                # It would run its handler from where our injected close is about to
                # start, and the handler's system calls would be taken for the close:
                # keep the signal until the program's own syscall is back in place.
                task.held_signals.append(sig)
                self.resume(task)
                return
            if self.on_signal_stop is not None:
                self.on_signal_stop(task)
            self.resume(task, sig)

    def _note_taken(self, task: Task, sig: int) -> None:
        """Remember who sent a signal the program takes: see ``took``."""
        try:
            code, sender = pt.signal_sender(task.tid)
        except OSError:
            return
        now = time.monotonic()
        who = sender if code == SI_USER else -1
        self.taken = [entry for entry in self.taken if now - entry[2] < TAKEN_MEMORY]
        for index, (expected, expected_sender, _) in enumerate(self.expected):
            if (expected, expected_sender) == (sig, who):
                del self.expected[index]  # ``took`` saw it pending: already accounted for
                return
        self.taken.append((sig, who, now))

    def took(self, sig: int, sender: int) -> bool:
        """Whether the program has taken, or has pending, signal ``sig`` that ``sender``
        sent: a kill() to the whole process group reaches streams-run and the program
        alike, and forwarding it would deliver it twice. (Taking the record.)"""
        now = time.monotonic()
        if self._forget_taken(sig, sender, now):
            return True
        if sig in pending_signals(self.main_pid):
            # When the program takes it, that is this one: nothing to remember then.
            self.expected = [entry for entry in self.expected if now - entry[2] < TAKEN_MEMORY]
            self.expected.append((sig, sender, now))
            return True
        # Not pending: never sent to the program, or taken since the first look. A thread
        # that took it is in its signal stop by now (the kernel takes a signal and stops
        # the thread in one step), so handle the waiting stops and look again.
        self.reap()
        return self._forget_taken(sig, sender, now)

    def _forget_taken(self, sig: int, sender: int, now: float) -> bool:
        for index, (taken, who, when) in enumerate(self.taken):
            if taken == sig and who == sender and now - when < TAKEN_MEMORY:
                del self.taken[index]
                return True
        return False

    def _on_group_stop(self, task: Task, sig: int) -> None:
        pt.listen(task.tid)  # stay stopped until SIGCONT, as without a tracer
        # Ctrl-Z: the shell waits for us, not the program; stop too so it sees the job
        # stop. Also for SIGSTOP when we run in the terminal's foreground: top and other
        # full-screen programs catch SIGTSTP, restore the terminal and stop themselves
        # with SIGSTOP. (In the background or without a terminal, a SIGSTOP sent to
        # the program alone stops only the program, as without streams-run.)
        if task.tgid != self.main_pid or task.tid != self._job_thread():
            return  # each thread of the program reports the stop: one is enough
        if sig in TERMINAL_STOP_SIGNALS or _in_terminal_foreground():
            os.kill(os.getpid(), signal.SIGSTOP)

    def _job_thread(self) -> int:
        """The thread whose stops stand for the program's: its main thread, else (that
        one called pthread_exit) its lowest other thread."""
        if not thread_has_exited(self.main_pid):
            return self.main_pid
        others = [each.tid for each in self.tasks.values()
                  if each.tgid == self.main_pid and each.tid != self.main_pid]
        return min(others, default=self.main_pid)

    def _on_seccomp_stop(self, task: Task) -> None:
        info = pt.syscall_info(task.tid)
        if info.ret_data == seccomp.DATA_FOREIGN_ARCH or info.arch != self.arch.audit_arch:
            self._refuse_foreign(task, info)
            return
        assert self.policy is not None
        self.policy.on_syscall(task, info.nr, info.args)

    def _on_syscall_stop(self, task: Task) -> None:
        if task.inject == "close-entry":
            task.inject = "close-exit"
            self.resume(task)
            return
        if task.inject == "close-exit":
            assert task.restart is not None
            address, nr, args = task.restart
            regs = pt.get_registers(task.tid)
            archmod.set_instruction_pointer(regs, address)
            archmod.rewind_to_syscall(regs, nr, args)
            pt.set_registers(task.tid, regs)
            task.inject, task.restart = None, None
            self.resume(task)
            held, task.held_signals = task.held_signals, []
            for sig in held:  # see the signal-delivery-stop in _handle
                pt.tgkill(task.tgid, task.tid, sig)
            return
        info = pt.syscall_info(task.tid)
        if info.op == pt.PTRACE_SYSCALL_INFO_EXIT and task.on_exit_stop is not None:
            callback, task.on_exit_stop = task.on_exit_stop, None
            callback(info)
            return
        if info.op == pt.PTRACE_SYSCALL_INFO_ENTRY and self.stop_every_syscall:
            if info.arch != self.arch.audit_arch or self.arch.is_x32(info.nr):
                self._refuse_foreign(task, info)
                return
            assert self.policy is not None
            self.policy.on_syscall(task, info.nr, info.args)
            return
        self.resume(task)

    def _refuse_foreign(self, task: Task, info: pt.SyscallInfo) -> None:
        abi = ("the x32 ABI" if info.arch == self.arch.audit_arch else
               f"a foreign ABI (audit arch {info.arch:#x}, not {self.arch.name})")
        self.kill_process(
            task,
            f"process {task.tgid} made a system call through {abi}; 32-bit and x32 programs "
            f"cannot be put on the tunnel by streams-run, so it was stopped",
        )
        self.resume(task)

    def _on_exit(self, tid: int, status: int) -> None:
        task = self.tasks.get(tid)
        if task is not None:
            self._forget_task(task)
        if tid == self.main_pid:
            self.main_status = status
            self.loop.running = False

    def _forget_task(self, task: Task, tell_policy: bool = True) -> None:
        self.tasks.pop(task.tid, None)
        for callback in task.on_death:
            callback()
        task.on_death.clear()
        if self.policy is not None and tell_policy:
            self.policy.forget_thread(task)
            if task.tid == task.tgid:
                self.policy.forget_process(task.tgid)


def _in_terminal_foreground() -> bool:
    """Whether streams-run's process group owns its controlling terminal now."""
    for descriptor in (0, 1, 2):
        try:
            return os.tcgetpgrp(descriptor) == os.getpgrp()
        except OSError:  # not a terminal, or not ours
            continue
    return False
