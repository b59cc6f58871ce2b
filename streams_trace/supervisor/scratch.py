"""Memory of the supervisor's own inside each traced process.

One anonymous mapping per process (an ``mmap`` injected into the program the first
time one is needed), cut into slots, one per use in flight: relay mode's private
sockaddrs and option buffers, the recvfrom filter the redirect adds to a process
(``Redirector.watch_recvfrom``). An exec takes the mapping with the old image.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Callable

from .tracer import Task, Tracer

log = logging.getLogger("streams_trace.run")

SCRATCH_SIZE = 64 * 1024
SLOT_SIZE = 128  # a sockaddr_storage; a BPF program of 16 instructions


class Scratch:
    """Slots of supervisor-owned memory inside each traced process."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.free: dict[int, list[int]] = {}  # tgid -> free slot addresses

    def has_slot(self, tgid: int, count: int = 1) -> bool:
        return len(self.free.get(tgid, ())) >= count

    def add_mapping(self, tgid: int, address: int) -> None:
        slots = self.free.setdefault(tgid, [])
        slots.extend(range(address, address + SCRATCH_SIZE, SLOT_SIZE))

    def acquire(self, tgid: int) -> int:
        return self.free[tgid].pop()

    def release(self, tgid: int, slot: int) -> None:
        if tgid in self.free:  # gone after an exec or exit: the mapping went with it
            self.free[tgid].append(slot)

    def forget(self, tgid: int) -> None:
        self.free.pop(tgid, None)

    def ensure(self, task: Task, count: int = 1,
               on_failure: Callable[[int], None] | None = None) -> bool:
        """True when ``count`` slots are free; else map scratch memory in the program (in
        place of its stopped syscall, which then stops again) and return False. When the
        program cannot map it, ``on_failure`` gets the errno; without one, the process is
        killed (it cannot go on unredirected)."""
        if self.has_slot(task.tgid, count):
            return True
        arch = self.tracer.arch

        def mapped(result: int) -> None:
            if result < 0 and result > -4096:
                if on_failure is not None:
                    on_failure(-result)
                    return
                log.error("cannot map memory of the supervisor's in process %d: %s",
                          task.tgid, os.strerror(-result))
                self.tracer.kill_process(task, "streams-run could not prepare process "
                                               f"{task.tgid}")
                return
            self.add_mapping(task.tgid, result & 0xFFFFFFFFFFFFFFFF)

        self.tracer.run_instead(
            task, arch.number("mmap"),
            (0, SCRATCH_SIZE, mmap.PROT_READ | mmap.PROT_WRITE,
             mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, 0xFFFFFFFFFFFFFFFF, 0),
            mapped,
        )
        return False
