"""A minimal single-threaded event loop: readiness callbacks and timers.

ptrace requests must come from the thread that attached, so the supervisor runs
everything (wait loop, handshakes, DNS) on one thread around one epoll descriptor.
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
    """Callbacks on one epoll descriptor, used directly: every redirected connect registers
    and drops a socket, and the selectors module's bookkeeping was on that path."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
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
        mask = (select.EPOLLIN if events & selectors.EVENT_READ else 0) | (
            select.EPOLLOUT if events & selectors.EVENT_WRITE else 0)
        if fd in self._watches:
            self.epoll.modify(fd, mask)
        else:
            self.epoll.register(fd, mask)
        self._watches[fd] = (fileobj, callback)

    def unwatch(self, fileobj: Any) -> None:
        fd = _fd(fileobj)
        if fd < 0:  # closed already: find it by identity (the kernel dropped it, or will)
            fd = next((known for known, (obj, _) in self._watches.items() if obj is fileobj),
                      -1)
        if self._watches.pop(fd, None) is None:
            return
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass

    def call_at(self, deadline: float, callback: Callback) -> Timer:
        timer = Timer(deadline, callback)
        heapq.heappush(self._timers, (deadline, next(self._order), timer))
        return timer

    def run_once(self) -> None:
        timeout = -1.0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            timeout = max(self._timers[0][0] - time.monotonic(), 0)
        watches = self._watches
        ready = [(fd, watches.get(fd)) for fd, _ in self.epoll.poll(timeout)]
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
