"""What /proc says about a traced thread: its thread group, the socket behind a descriptor."""

from __future__ import annotations

import os


def tgid_of(tid: int) -> int:
    """The process (thread-group id) of thread ``tid``; ``tid`` itself when it is gone."""
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


def fd_inode(tid: int, fd: int) -> int:
    """The inode of the file behind descriptor ``fd`` of thread ``tid``: a socket's identity,
    the same through dup, fork and descriptor reuse. Raises OSError when there is none."""
    return os.stat(f"/proc/{tid}/fd/{fd}").st_ino
