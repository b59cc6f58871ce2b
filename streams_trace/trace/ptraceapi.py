"""A thin ptrace(2) adapter: python-ptrace's call and register sets plus what it lacks.

python-ptrace does the raw call and the register structures well; its
debugger layer knows nothing of seccomp stops, so the constants for those
(PTRACE_O_TRACESECCOMP, PTRACE_O_EXITKILL, PTRACE_SEIZE, PTRACE_LISTEN,
PTRACE_GET_SYSCALL_INFO) live here, named as in ptrace(2). Memory goes through
process_vm_readv/writev; foreign file descriptors through pidfd_getfd(2).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from typing import Any

from ptrace.binding import func as _pt

# requests
PTRACE_PEEKUSER = 3
PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E
# options
PTRACE_O_TRACESYSGOOD = 0x01
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000
# events (status >> 16 of a stop)
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128
# struct ptrace_syscall_info.op
PTRACE_SYSCALL_INFO_NONE = 0
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2
PTRACE_SYSCALL_INFO_SECCOMP = 3
# wait(2)
WALL = 0x40000000  # __WALL: threads and non-SIGCHLD children too
# syscall numbers that are the same on x86_64 and aarch64 (the generic table)
SYS_PIDFD_GETFD = 438

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_libc.ptrace.restype = ctypes.c_long
_libc.syscall.restype = ctypes.c_long


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


_libc.process_vm_readv.argtypes = (
    ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
    ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong,
)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_writev.argtypes = _libc.process_vm_readv.argtypes
_libc.process_vm_writev.restype = ctypes.c_ssize_t


class _SyscallInfoData(ctypes.Union):
    class _Entry(ctypes.Structure):
        _fields_ = (("nr", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6))

    class _Exit(ctypes.Structure):
        _fields_ = (("rval", ctypes.c_int64), ("is_error", ctypes.c_uint8))

    class _Seccomp(ctypes.Structure):
        _fields_ = (
            ("nr", ctypes.c_uint64),
            ("args", ctypes.c_uint64 * 6),
            ("ret_data", ctypes.c_uint32),
        )

    _fields_ = (("entry", _Entry), ("exit", _Exit), ("seccomp", _Seccomp))


class _SyscallInfo(ctypes.Structure):
    _fields_ = (
        ("op", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("data", _SyscallInfoData),
    )


@dataclass
class SyscallInfo:
    """What PTRACE_GET_SYSCALL_INFO says about a syscall stop."""

    op: int
    arch: int
    nr: int = -1
    args: tuple[int, ...] = ()
    ret_data: int = 0
    rval: int = 0
    is_error: bool = False


def _call(request: int, pid: int, addr: int | None = 0, data: int | None = 0) -> int:
    result: int = _libc.ptrace(request, pid, addr, data)
    if result == -1:
        error = ctypes.get_errno()
        if error:
            raise OSError(error, f"ptrace({request:#x}, {pid}): {os.strerror(error)}")
    return result


def seize(pid: int, options: int) -> None:
    _call(PTRACE_SEIZE, pid, 0, options)


def cont(tid: int, signal: int = 0) -> None:
    _call(PTRACE_CONT, tid, 0, signal)


def syscall(tid: int, signal: int = 0) -> None:
    """Resume until the next syscall entry or exit (and seccomp) stop."""
    _call(PTRACE_SYSCALL, tid, 0, signal)


def listen(tid: int) -> None:
    """Leave a seized tracee in its group-stop until SIGCONT."""
    _call(PTRACE_LISTEN, tid, 0, 0)


def interrupt(tid: int) -> None:
    _call(PTRACE_INTERRUPT, tid, 0, 0)


PTRACE_GETSIGINFO = 0x4202
_SIGINFO = struct.Struct("=iii4xi")  # si_signo, si_errno, si_code, then si_pid (of 128 bytes)


def signal_sender(tid: int) -> tuple[int, int]:
    """(si_code, si_pid) of the signal a thread in signal-delivery-stop is about to take."""
    buffer = ctypes.create_string_buffer(128)
    _call(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(buffer))
    _, _, code, pid = _SIGINFO.unpack_from(buffer.raw)
    return code, pid


def tgkill(tgid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to thread ``tid`` of process ``tgid`` (a thread-directed signal)."""
    from .arch import native  # the number differs by architecture

    if _libc.syscall(native().number("tgkill"), tgid, tid, sig) < 0:
        error = ctypes.get_errno()
        if error != errno.ESRCH:  # gone: nobody to tell
            raise OSError(error, f"tgkill: {os.strerror(error)}")


def disconnect(fd: int) -> None:
    """connect(2) to an AF_UNSPEC address: dissolve a socket's connection (Linux)."""
    unspecified = ctypes.create_string_buffer(16)  # sa_family 0 = AF_UNSPEC, the rest zero
    if _libc.connect(fd, unspecified, 16) < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"connect(AF_UNSPEC): {os.strerror(error)}")


def event_message(tid: int) -> int:
    value = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(value))
    return value.value


# The same layout read with struct: one unpack instead of walking ctypes unions (that
# walk cost about 15 us per stop in the supervisor, on the path of every connect).
_INFO_SIZE = ctypes.sizeof(_SyscallInfo)
_INFO_HEAD = struct.Struct("=B3xI16x")  # op, arch (ip and sp skipped)
_INFO_ENTRY = struct.Struct("=Q6Q")  # nr, args
_INFO_SECCOMP = struct.Struct("=Q6QI")  # nr, args, ret_data
_INFO_EXIT = struct.Struct("=qB")  # rval, is_error
_INFO_DATA = _SyscallInfo.data.offset


def syscall_info(tid: int) -> SyscallInfo:
    raw = ctypes.create_string_buffer(_INFO_SIZE)
    _call(PTRACE_GET_SYSCALL_INFO, tid, _INFO_SIZE, ctypes.addressof(raw))
    op, arch = _INFO_HEAD.unpack_from(raw)
    if op == PTRACE_SYSCALL_INFO_SECCOMP:
        nr, *args, ret_data = _INFO_SECCOMP.unpack_from(raw, _INFO_DATA)
        return SyscallInfo(op, arch, nr, tuple(args), ret_data)
    if op == PTRACE_SYSCALL_INFO_ENTRY:
        nr, *args = _INFO_ENTRY.unpack_from(raw, _INFO_DATA)
        return SyscallInfo(op, arch, nr, tuple(args))
    if op == PTRACE_SYSCALL_INFO_EXIT:
        rval, is_error = _INFO_EXIT.unpack_from(raw, _INFO_DATA)
        return SyscallInfo(op, arch, rval=rval, is_error=bool(is_error))
    return SyscallInfo(op, arch)


def get_registers(tid: int) -> Any:
    return _pt.ptrace_getregs(tid)


def set_registers(tid: int, regs: Any) -> None:
    _pt.ptrace_setregs(tid, regs)


def peek_user(tid: int, offset: int) -> int:
    """One word of the tracee's user area (a register, by its offset), unsigned."""
    ctypes.set_errno(0)  # -1 is also a valid word: only errno tells a failure
    result = _call(PTRACE_PEEKUSER, tid, offset, 0)
    return result & 0xFFFFFFFFFFFFFFFF


def poke_user(tid: int, offset: int, value: int) -> None:
    """Write one word of the tracee's user area (a register, by its offset)."""
    _call(PTRACE_POKEUSER, tid, offset, value)


def read_memory(tid: int, address: int, size: int) -> bytes:
    """Read ``size`` bytes of the tracee's memory (fewer if the range ends unmapped)."""
    buffer = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.addressof(buffer), size)
    remote = _Iovec(address, size)
    done = _libc.process_vm_readv(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"process_vm_readv({tid}): {os.strerror(error)}")
    return buffer.raw[:done]


def open_memory(tid: int) -> int:
    """A descriptor on the memory of thread ``tid``'s process (/proc/TID/mem; needs
    ptrace rights).

    Reading through it with ``read_memory_at`` is one plain pread, cheaper than
    process_vm_readv through ctypes on the path of every connect. Opened through a
    thread, not the process id: once the main thread has exited (pthread_exit) the
    process id's entry has no memory, while the other threads go on. It names the
    memory image it was opened on and outlives the thread: open it again after an exec.
    """
    return os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)


def memory_closed(tid: int) -> bool:
    """Whether the kernel keeps us, tracer or not, out of thread ``tid``'s memory (and
    so its descriptors): its process is not dumpable (an unreadable executable, prctl
    PR_SET_DUMPABLE 0) and we lack CAP_SYS_PTRACE, or a security module says no."""
    try:
        os.close(open_memory(tid))
    except PermissionError:
        return True
    except OSError:  # gone, say: nothing to explain
        pass
    return False


def _is_user_address(address: int) -> bool:
    """Whether ``address`` can be an offset into /proc/TID/mem (pread and pwrite take
    a signed one)."""
    return 0 < address < 1 << 63


def read_memory_at(memory: int, address: int, size: int) -> bytes:
    """Read ``size`` bytes at ``address`` through an ``open_memory`` descriptor."""
    if not _is_user_address(address):
        raise OSError(errno.EFAULT, f"bad address {address:#x}")
    try:
        data = os.pread(memory, size, address)
    except OSError as exc:
        if exc.errno != errno.EIO:  # EIO: nothing mapped there, the kernel's EFAULT
            raise
        data = b""
    if len(data) != size:  # unmapped, or the process's memory is gone
        raise OSError(errno.EFAULT, f"{size} bytes at {address:#x} cannot be read")
    return data


def write_memory(tid: int, address: int, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` at ``address`` in thread ``tid``'s process.

    process_vm_writev honours the page's protection; with ``force``, a read-only page
    (a const sockaddr, say) is written through /proc/TID/mem instead, as a debugger
    writes a breakpoint: the kernel copies the page for this process alone."""
    buffer = ctypes.create_string_buffer(data, len(data))
    local = _Iovec(ctypes.addressof(buffer), len(data))
    remote = _Iovec(address, len(data))
    done = _libc.process_vm_writev(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done == len(data):
        return
    error = ctypes.get_errno() if done < 0 else errno.EFAULT
    if not (force and error == errno.EFAULT and _is_user_address(address)):
        raise OSError(error, f"process_vm_writev({tid}): {os.strerror(error)}")
    memory = os.open(f"/proc/{tid}/mem", os.O_WRONLY | os.O_CLOEXEC)
    try:
        written = os.pwrite(memory, data, address)
    except OSError as exc:
        if exc.errno != errno.EIO:  # EIO: nothing mapped there
            raise
        written = 0
    finally:
        os.close(memory)
    if written != len(data):
        raise OSError(errno.EFAULT, f"{len(data)} bytes at {address:#x} cannot be written")


# pidfd_open(2) flag: a descriptor on one thread rather than its process (Linux 6.9).
PIDFD_THREAD = os.O_EXCL


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A copy of the tracee's file descriptor ``target_fd`` in this process (close-on-exec)."""
    result: int = _libc.syscall(SYS_PIDFD_GETFD, pidfd, target_fd, 0)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"pidfd_getfd: {os.strerror(error)}")
    return result
