"""A minimal single-threaded event loop: readiness callbacks and timers.

ptrace requests must come from the thread that attached, so the supervisor runs
everything (wait loop, handshakes, DNS) on one thread around one selector.
"""

from __future__ import annotations

import heapq
import itertools
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


class Loop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.running = True

    def watch(self, fileobj: Any, events: int, callback: Callback) -> None:
        """Call ``callback`` whenever ``fileobj`` is ready for ``events`` (replaces a watch)."""
        # A new watch is the common case (every redirected connect): register first, as
        # a failed modify raises and catches KeyError twice inside selectors.
        try:
            self.selector.register(fileobj, events, callback)
        except KeyError:
            self.selector.modify(fileobj, events, callback)

    def unwatch(self, fileobj: Any) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def call_at(self, deadline: float, callback: Callback) -> Timer:
        timer = Timer(deadline, callback)
        heapq.heappush(self._timers, (deadline, next(self._order), timer))
        return timer

    def run_once(self) -> None:
        timeout = None
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            timeout = max(self._timers[0][0] - time.monotonic(), 0)
        for key, _ in self.selector.select(timeout):
            # An earlier callback of this round may have dropped or replaced this watch.
            current = self.selector.get_map().get(key.fd)
            if current is not None and current.data is key.data:
                key.data()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def run(self) -> None:
        while self.running:
            self.run_once()
