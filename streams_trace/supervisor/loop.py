"""A minimal single-threaded event loop: readiness callbacks and timers.

ptrace requests must come from the thread that attached, so the supervisor runs
everything (wait loop, handshakes, DNS) on one thread around one poll(2) set.

poll, not epoll: a program's connect wakes the supervisor through the seccomp
listener with SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, which asks the kernel to run
the woken task on the waker's CPU, a hand-off between the thread that now
sleeps in connect and the supervisor. poll's waiter receives that wake-up as
it is; epoll's wait queue passes on an ordinary one, and the supervisor then
wakes on whichever CPU it last ran on, idle or not (20-100 us more on a
virtual machine, measured with ``perf sched``). The set stays small: the
listener, the signalfd, DNS sockets and one socket per handshake in progress.
"""

from __future__ import annotations

import heapq
import itertools
import select
import selectors
import time
from collections.abc import Callable
from typing import Any

Callback = Callable[[], None]


class Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callback) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class Loop:
    """Callbacks on one poll set, used directly: every redirected connect registers and
    drops a socket, and the selectors module's bookkeeping was on that path."""

    def __init__(self) -> None:
        self.poller = select.poll()
        self._watches: dict[int, tuple[Any, Callback]] = {}  # fd -> (file object, callback)
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.running = True

    def watch(self, fileobj: Any, events: int, callback: Callback) -> None:
        """Call ``callback`` whenever ``fileobj`` is ready for ``events`` (replaces a watch).

        ``events`` takes selectors.EVENT_READ and EVENT_WRITE; errors and hang-ups call
        the callback too, which finds them out by its next read or write.
        """
        fd = _fd(fileobj)
        mask = (select.POLLIN if events & selectors.EVENT_READ else 0) | (
            select.POLLOUT if events & selectors.EVENT_WRITE else 0)
        self.poller.register(fd, mask)  # or replaces its mask
        self._watches[fd] = (fileobj, callback)

    def unwatch(self, fileobj: Any) -> None:
        fd = _fd(fileobj)
        if fd < 0:  # closed already: find it by identity (the kernel dropped it, or will)
            fd = next((known for known, (obj, _) in self._watches.items() if obj is fileobj),
                      -1)
        if self._watches.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def call_at(self, deadline: float, callback: Callback) -> Timer:
        timer = Timer(deadline, callback)
        heapq.heappush(self._timers, (deadline, next(self._order), timer))
        return timer

    def run_once(self) -> None:
        timeout_ms: float | None = None  # None: until something is ready
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            timeout_ms = max(self._timers[0][0] - time.monotonic(), 0) * 1000
        watches = self._watches
        ready = []
        for fd, events in self.poller.poll(timeout_ms):
            if events & select.POLLNVAL:
                # Closed without unwatch (epoll would have dropped it): poll would spin.
                watches.pop(fd, None)
                self.poller.unregister(fd)
            else:
                ready.append((fd, watches.get(fd)))
        for fd, watch in ready:
            # An earlier callback of this round may have dropped or replaced this watch.
            if watch is not None and watches.get(fd) is watch:
                watch[1]()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def run(self) -> None:
        while self.running:
            self.run_once()
