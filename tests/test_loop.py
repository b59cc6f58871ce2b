"""The supervisor's event loop: readiness callbacks, timers, and a descriptor closed early."""

from __future__ import annotations

import os
import selectors
import socket
import time

from streams_trace.supervisor.loop import Loop


def test_a_readable_socket_calls_back_until_unwatched() -> None:
    loop = Loop()
    left, right = socket.socketpair()
    with left, right:
        seen: list[bytes] = []
        loop.watch(left, selectors.EVENT_READ, lambda: seen.append(left.recv(16)))
        right.send(b"one")
        loop.run_once()
        assert seen == [b"one"]
        loop.unwatch(left)
        right.send(b"two")
        loop.call_at(time.monotonic() + 0.05, lambda: None)  # so run_once returns
        loop.run_once()
        assert seen == [b"one"]


def test_watching_again_replaces_the_events_and_callback() -> None:
    loop = Loop()
    left, right = socket.socketpair()
    with left, right:
        calls: list[str] = []
        loop.watch(left, selectors.EVENT_READ, lambda: calls.append("read"))
        loop.watch(left, selectors.EVENT_WRITE, lambda: calls.append("write"))
        loop.run_once()  # writable at once, and nothing to read
        assert calls == ["write"]


def test_timers_fire_in_deadline_order_and_cancelled_ones_do_not() -> None:
    loop = Loop()
    fired: list[str] = []
    now = time.monotonic()
    loop.call_at(now + 0.02, lambda: fired.append("second"))
    loop.call_at(now + 0.01, lambda: fired.append("first"))
    loop.call_at(now + 0.015, lambda: fired.append("cancelled")).cancel()
    while len(fired) < 2:
        loop.run_once()
    assert fired == ["first", "second"]
    assert time.monotonic() - now >= 0.02


def test_a_descriptor_closed_without_unwatch_is_dropped_not_polled_forever() -> None:
    loop = Loop()
    read_end, write_end = os.pipe()
    calls: list[int] = []
    loop.watch(read_end, selectors.EVENT_READ, lambda: calls.append(1))
    os.close(read_end)  # a bug elsewhere; poll(2) now says POLLNVAL for it every time
    os.close(write_end)
    loop.run_once()
    assert calls == []
    started = time.monotonic()
    loop.call_at(started + 0.05, lambda: None)
    loop.run_once()  # sleeps until the timer instead of returning at once for the stale fd
    assert time.monotonic() - started >= 0.04
