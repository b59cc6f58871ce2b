"""What /proc says about a traced thread: its thread group, the socket behind a descriptor."""

from __future__ import annotations

import os
import stat


def _status_fields(tid: int, *names: bytes) -> list[bytes]:
    """The first word of each line of /proc/TID/status named ``names``; none if gone."""
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            return [line.split()[1] for line in status if line.startswith(names)]
    except OSError:
        return []


def tgid_of(tid: int) -> int:
    """The process (thread-group id) of thread ``tid``; ``tid`` itself when it is gone."""
    values = _status_fields(tid, b"Tgid:")
    return int(values[0]) if values else tid


def is_thread_of(tid: int, tgid: int) -> bool:
    """Whether thread ``tid`` belongs to process ``tgid`` (a look-up, no file read)."""
    return os.path.exists(f"/proc/{tgid}/task/{tid}")


def seccomp_filter_count(tid: int) -> int | None:
    """How many seccomp filters thread ``tid`` has (Linux 5.9); None when gone or not told."""
    values = _status_fields(tid, b"Seccomp_filters:")
    return int(values[0]) if values else None


def pending_signals(pid: int) -> set[int]:
    """The signals pending for process ``pid`` or its main thread (ShdPnd, SigPnd)."""
    pending: set[int] = set()
    for value in _status_fields(pid, b"ShdPnd:", b"SigPnd:"):
        bits = int(value, 16)
        pending.update(n + 1 for n in range(64) if bits >> n & 1)
    return pending


def thread_has_exited(tid: int) -> bool:
    """Whether thread ``tid`` is gone or a zombie (a main thread that called
    pthread_exit stays one while other threads of its process run)."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as stat_file:
            return stat_file.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def thread_exists(tid: int) -> bool:
    """Whether thread ``tid`` still runs (or is a zombie not yet reaped)."""
    return os.path.exists(f"/proc/{tid}")


# A TCP socket's state (include/net/tcp_states.h), as /proc/net/tcp's "st" column and
# tcp_info.tcpi_state give it: a socket that never started connecting, or is done.
TCP_CLOSE = 7


def socket_in_use(tid: int, fd: int) -> bool:
    """Whether descriptor ``fd`` of thread ``tid`` is anything but a TCP socket that was
    never connected, connecting or listening: no such descriptor, not a socket, or a
    socket /proc/TID/net/tcp{,6} shows past TCP_CLOSE. (Fresh sockets are not listed.)"""
    info = os.stat(f"/proc/{tid}/fd/{fd}")
    if not stat.S_ISSOCK(info.st_mode):
        return True
    inode = str(info.st_ino).encode()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{tid}/net/{table}", "rb") as sockets:
                next(sockets, None)  # the header
                for line in sockets:
                    fields = line.split()
                    if len(fields) > 9 and fields[9] == inode:
                        return int(fields[3], 16) != TCP_CLOSE
        except FileNotFoundError:  # no IPv6 here
            continue
    return False


def fd_inode(tid: int, fd: int) -> int:
    """The inode of the file behind descriptor ``fd`` of thread ``tid``: a socket's identity,
    the same through dup, fork and descriptor reuse. Raises OSError when there is none."""
    return os.stat(f"/proc/{tid}/fd/{fd}").st_ino


def descriptor_blocks(tid: int, fd: int) -> bool:
    """Whether descriptor ``fd`` of thread ``tid`` is in blocking mode (its file's flags,
    from /proc/TID/fdinfo/FD, octal, without O_NONBLOCK)."""
    with open(f"/proc/{tid}/fdinfo/{fd}", "rb") as info:
        for line in info:
            if line.startswith(b"flags:"):
                return not int(line.split()[1], 8) & os.O_NONBLOCK
    return True
