"""Connects held by seccomp user notification: the fast path of the initiator side.

With a user-notification filter the program's connect sleeps in the kernel
while the supervisor reads the notification from the listener on its loop,
decides, and answers: a result for the connect (the supervisor did it on the
program's socket) or "run it as it is". Compared with a ptrace stop this saves
the SIGCHLD/waitpid round, the register reads and writes and the resume; the
tracer still follows every thread, fork and exec, and still stops the program
at bind, accept, a sendto with an address, and (in a process that sent the tunnel's
names that way) a recvfrom with one.

The filter goes in with SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (``launch``):
once the supervisor has read a notification, only a fatal signal takes the
thread out of its connect, as at a ptrace stop; other signals wait for the
answer. A signal that comes before the supervisor has read it withdraws the
notification: the connect, which never ran, would end in EINTR for a handler
without SA_RESTART (CPython's), and the program would take its unconnected
socket for one connecting in the background. ``on_signal_stop`` turns that into
a restart after the handler, which makes the connect again.

A traced thread that dies stays a zombie until this supervisor reaps it, on
this same loop, so a notification's thread id cannot name another thread while
its callback runs. (With the native connect path, ``fastconnect``, the listener
is read by its thread, and what it passes on waited in a queue meanwhile: the
loop first checks that the call is still held, and then the same holds.)
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import socket
from collections.abc import Callable
from typing import Protocol

from ..trace import arch as archmod
from ..trace import ptraceapi as pt
from ..trace import usernotify
from ..trace.procfs import TCP_CLOSE, tgid_of
from .fastconnect import Done, FastConnect
from .loop import Loop
from .tracer import Task, Tracer

log = logging.getLogger("streams_trace.run")


class NotifiedPolicy(Protocol):
    def on_notified(self, call: NotifiedCall, nr: int, args: tuple[int, ...]) -> None: ...
    def on_native_connect(self, done: Done) -> None: ...
    def take_socket(self, task: Task, fd: int) -> socket.socket: ...


class NotifiedCall:
    """A syscall held by user notification; answer it once, with ``complete`` or ``resume``."""

    __slots__ = ("id", "notifier", "tgid", "tid")

    def __init__(self, notifier: Notifier, notif_id: int, tid: int, tgid: int) -> None:
        self.notifier = notifier
        self.id = notif_id
        self.tid = tid
        self.tgid = tgid

    @property
    def on_death(self) -> list[Callable[[], None]]:
        task = self.notifier.tracer.tasks.get(self.tid)
        return task.on_death if task is not None else []

    def complete(self, result: int) -> None:
        self.notifier.answer(self, result)

    def resume(self) -> None:
        self.notifier.answer(self, None)


class Notifier:
    """Reads the listener on the supervisor's loop and hands each held call to the policy."""

    def __init__(self, loop: Loop, listener: int, tracer: Tracer,
                 policy: NotifiedPolicy, native: FastConnect | None = None) -> None:
        self.loop = loop
        self.listener = listener
        self.tracer = tracer
        self.policy = policy
        self.native = native
        self.connect_number = tracer.arch.number("connect")
        self._deciding: NotifiedCall | None = None  # the call the policy is looking at now
        if native is not None:
            # Its thread reads the listener and answers most connects; the flag is the
            # listener's, so toggling it from here (``answer``) would race with that.
            self.sync_wake_up = False
            loop.watch(native, selectors.EVENT_READ, self._on_native_readable)
            return
        # Where the kernel has it (6.6); fine without. See loop.py and ``answer``.
        self.sync_wake_up = usernotify.set_sync_wake_up(listener)
        loop.watch(listener, selectors.EVENT_READ, self._on_readable)

    def close(self) -> None:
        if self.native is not None:
            self.loop.unwatch(self.native)
            # First, as its thread reads the listener; the program has gone, so only the
            # records of its last connects matter (their -d lines and counts).
            for message in self.native.close():
                if isinstance(message, Done):
                    self.policy.on_native_connect(message)
        else:
            self.loop.unwatch(self.listener)
        os.close(self.listener)

    def _on_readable(self) -> None:
        try:
            notification = usernotify.receive(self.listener)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):  # its thread left the syscall
                return
            raise
        self._decide(notification)

    def _on_native_readable(self) -> None:
        native = self.native
        assert native is not None
        for message in native.read():
            if isinstance(message, Done):
                self.policy.on_native_connect(message)
            elif usernotify.still_held(self.listener, message.id):  # else: a signal or death
                self._decide(message)
        if native.ended:
            # Its thread stopped by itself: the program has gone (nothing holds the
            # filter), or it failed. Either way the listener is ours to read again.
            self.loop.unwatch(native)
            native.close()
            self.native = None
            if not _hung_up(self.listener):
                log.warning("the native connect path stopped; connects are redirected in "
                            "Python from now on")
                self.loop.watch(self.listener, selectors.EVENT_READ, self._on_readable)

    def _decide(self, notification: usernotify.Notification) -> None:
        task = self.tracer.tasks.get(notification.pid)
        tgid = task.tgid if task is not None else tgid_of(notification.pid)
        call = NotifiedCall(self, notification.id, notification.pid, tgid)
        self._deciding = call
        try:
            self.policy.on_notified(call, notification.nr, notification.args)
        finally:
            self._deciding = None

    def on_signal_stop(self, task: Task) -> None:
        """At a signal-delivery-stop: restart a connect whose notification a signal withdrew.

        A connect that really ran and was interrupted while waiting (a blocking TCP
        connect to a slow peer) keeps its EINTR: its socket is past TCP_CLOSE.
        """
        if pt.peek_user(task.tid, archmod.SYSCALL_NUMBER_OFFSET) != self.connect_number:
            return
        result = pt.peek_user(task.tid, archmod.RETURN_VALUE_OFFSET)
        if result != -archmod.ERESTARTSYS & 0xFFFFFFFFFFFFFFFF:
            return
        fd = pt.peek_user(task.tid, archmod.FIRST_ARG_OFFSET) & 0xFFFFFFFF
        if self._connect_started(task, fd):
            return
        pt.poke_user(task.tid, archmod.RETURN_VALUE_OFFSET,
                     -archmod.ERESTARTNOINTR & 0xFFFFFFFFFFFFFFFF)

    def _connect_started(self, task: Task, fd: int) -> bool:
        try:
            with self.policy.take_socket(task, fd) as sock:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        except OSError:  # not TCP: a UDP connect never waits; a UNIX one that did is made again
            return False
        return info[0] != TCP_CLOSE

    def answer(self, call: NotifiedCall, result: int | None) -> None:
        """``result`` for the held syscall (-errno: it fails), or None: it runs as it is."""
        # The same-CPU hand-off suits the notification (its thread has just gone to
        # sleep there) and an answer given at once (we go back to sleep), but not one
        # given after a handshake: we go on running, and so may the access point we
        # just heard from, both ahead of the answered thread while another CPU idles.
        # Woken as usual, it goes where the scheduler finds room. (A connect every few
        # ms returned 200-700 us later with the hand-off for every answer.)
        hand_off = call is self._deciding
        if self.sync_wake_up and not hand_off:
            usernotify.set_sync_wake_up(self.listener, False)
        try:
            if result is None:
                usernotify.respond_continue(self.listener, call.id)
            else:
                usernotify.respond(self.listener, call.id, result)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the thread was killed meanwhile
                raise
            return
        finally:
            if self.sync_wake_up and not hand_off:
                usernotify.set_sync_wake_up(self.listener)
        if self.sync_wake_up:
            # Where no other CPU had room the thread waits behind us: let it run now and
            # do our clean-up once it sleeps again (its connect returns 30-50 us sooner
            # on a VM; where nothing else waits, this returns at once).
            os.sched_yield()


def _hung_up(listener: int) -> bool:
    """True once no thread has the filter any more (RECV would then block for good)."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    return any(events & select.POLLHUP for _, events in poller.poll(0))
