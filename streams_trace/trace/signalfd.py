"""signalfd(2) through ctypes: blocked signals read from a file descriptor.

The supervisor's wait loop sleeps in poll(2); SIGCHLD (and the signals it forwards to
the program) arrive on this descriptor instead of interrupting it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
from collections.abc import Collection


class SignalFd:
    """Blocked signals read from a signalfd (SIGCHLD wakes the wait loop)."""

    SFD_NONBLOCK = os.O_NONBLOCK
    SFD_CLOEXEC = os.O_CLOEXEC
    SIGINFO = struct.Struct("=IiiI")  # ssi_signo, ssi_errno, ssi_code, ssi_pid (of 128 bytes)

    def __init__(self, signals: set[int]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        mask = (ctypes.c_ulong * 16)()  # sigset_t: 1024 bits
        for number in signals:
            mask[(number - 1) // 64] |= 1 << ((number - 1) % 64)
        self.previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        fd = libc.signalfd(-1, ctypes.byref(mask), self.SFD_NONBLOCK | self.SFD_CLOEXEC)
        if fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"signalfd: {os.strerror(error)}")
        self.fd: int = fd

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[tuple[int, int, int]]:
        """(signal, si_code, sender pid) of each pending signal."""
        try:
            data = os.read(self.fd, 128 * 32)
        except BlockingIOError:
            return []
        return [
            (signo, code, pid)
            for signo, _, code, pid in (
                self.SIGINFO.unpack_from(data, offset) for offset in range(0, len(data), 128)
            )
        ]

    def close(self, ignore: Collection[int] = ()) -> None:
        """Unblock the signals again, discarding those still pending.

        The signals in ``ignore`` are ignored from now on: once the program has gone,
        such a signal (still pending, or sent in the moments before this process
        exits) would end it by its default action, with the signal's status instead
        of the program's."""
        for number in ignore:
            signal.signal(number, signal.SIG_IGN)
        while self.read():
            pass
        os.close(self.fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.previous_mask)
