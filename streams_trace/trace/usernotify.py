"""seccomp user notification (seccomp_unotify(2)): a syscall held in the kernel for the supervisor.

A filter rule that returns ``SECCOMP_RET_USER_NOTIF`` puts the calling thread
to sleep inside the syscall and queues a notification on a *listener* file
descriptor (made when the filter is installed with
``SECCOMP_FILTER_FLAG_NEW_LISTENER``). The supervisor reads it, does the work,
and answers: a return value for the syscall, or "run it as it is"
(``SECCOMP_USER_NOTIF_FLAG_CONTINUE``, Linux 5.5). No ptrace stop, no
register access: this is the fast path for connect. Constants and structs are
named as in <linux/seccomp.h>.
"""

from __future__ import annotations

import fcntl
import struct
from dataclasses import dataclass

SECCOMP_RET_USER_NOTIF = 0x7FC00000
# seccomp(2) flags for SECCOMP_SET_MODE_FILTER
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3  # Linux 5.0
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5  # Linux 5.19
# struct seccomp_notif_resp.flags
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1 << 0  # Linux 5.5
# SECCOMP_IOCTL_NOTIF_SET_FLAGS
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1 << 0  # Linux 6.6

# struct seccomp_notif { u64 id; u32 pid; u32 flags; struct seccomp_data data; }
# struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }
_NOTIF = struct.Struct("=QIIiIQ6Q")
# struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }
_RESP = struct.Struct("=QqiI")


def _ioc(direction: int, number: int, size: int) -> int:
    """_IOC(direction, '!', number, size) of <asm-generic/ioctl.h>."""
    return (direction << 30) | (size << 16) | (ord("!") << 8) | number


_IOC_WRITE, _IOC_READ = 1, 2
SECCOMP_IOCTL_NOTIF_RECV = _ioc(_IOC_READ | _IOC_WRITE, 0, _NOTIF.size)
SECCOMP_IOCTL_NOTIF_SEND = _ioc(_IOC_READ | _IOC_WRITE, 1, _RESP.size)
SECCOMP_IOCTL_NOTIF_ID_VALID = _ioc(_IOC_WRITE, 2, 8)
SECCOMP_IOCTL_NOTIF_SET_FLAGS = _ioc(_IOC_WRITE, 4, 8)


@dataclass(frozen=True, slots=True)
class Notification:
    """One held syscall: ``id`` answers it, ``pid`` is the thread (in our pid namespace)."""

    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, ...]


def set_sync_wake_up(listener: int, on: bool = True) -> bool:
    """Ask the kernel to wake the held thread and the supervisor on the waker's CPU, as
    a hand-off rather than a wake-up elsewhere (Linux 6.6), or (``on`` false) to wake
    them as usual again; False where it cannot."""
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                    SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP if on else 0)
    except OSError:
        return False
    return True


def receive(listener: int) -> Notification:
    """The next held syscall. Raises OSError(ENOENT) when its thread left the syscall
    (a signal or death) between the listener polling readable and this call; call
    it only when the listener polls readable, or it blocks."""
    buffer = bytearray(_NOTIF.size)  # the kernel insists on a zeroed struct
    fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buffer, True)
    return decode(buffer)


def decode(data: bytes | bytearray) -> Notification:
    """A struct seccomp_notif as the kernel fills it in."""
    notif_id, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(data)
    return Notification(notif_id, pid, nr, arch, tuple(args))


def still_held(listener: int, notif_id: int) -> bool:
    """True while the thread still waits for this notification's answer (so its thread
    id still names it)."""
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notif_id))
    except OSError:
        return False
    return True


def respond(listener: int, notif_id: int, result: int) -> None:
    """Finish the held syscall without running it: it returns ``result`` (-errno: fails).
    Raises OSError(ENOENT) when the thread no longer waits for this answer."""
    if result < 0:
        answer = _RESP.pack(notif_id, 0, result, 0)
    else:
        answer = _RESP.pack(notif_id, result, 0, 0)
    fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, answer)


def respond_continue(listener: int, notif_id: int) -> None:
    """Let the held syscall run as the program made it."""
    fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND,
                _RESP.pack(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE))
