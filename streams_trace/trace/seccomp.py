"""A seccomp-BPF filter that sends only the redirect's syscalls to the tracer.

Everything else runs untraced (about 25 ns extra per syscall, no stop). Rules
named in ``notify`` go to the supervisor by seccomp user notification instead
of a ptrace stop (see ``usernotify``). The filter checks the architecture
first: a syscall made through a foreign ABI (``int 0x80`` from 32-bit code,
x32) is sent to the tracer tagged ``DATA_FOREIGN_ARCH`` so the supervisor
refuses it loudly instead of leaving it off the tunnel. Constants are named as
in seccomp(2), prctl(2) and <linux/filter.h>.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from . import arch as archmod
from .usernotify import SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_RET_USER_NOTIF

# prctl(2)
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
# seccomp(2)
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1  # the seccomp(2) operation (prctl's is SECCOMP_MODE_FILTER)
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0  # the filter goes on every thread of the process
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2  # Linux 4.17
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF
# <linux/filter.h>, <linux/bpf_common.h>
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_JEQ, BPF_JGE, BPF_JSET = 0x10, 0x30, 0x40
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
SECCOMP_DATA_NR = 0
SECCOMP_DATA_ARCH = 4
SECCOMP_DATA_ARGS = 16

# What SECCOMP_RET_DATA carries to the tracer (read with PTRACE_GETEVENTMSG).
DATA_REDIRECT = 1
DATA_FOREIGN_ARCH = 2


class SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter)))


@dataclass(frozen=True)
class Rule:
    """Trace syscall ``name``; with ``nonzero_arg`` set, only when that argument is not 0,
    or, with ``mask`` too, only when it has one of the bits of ``mask`` (a 32-bit one)."""

    name: str
    nonzero_arg: int | None = None
    mask: int | None = None


def _arg_low(index: int) -> int:
    return SECCOMP_DATA_ARGS + 8 * index  # little endian: the low word comes first


Program = list[tuple[int, int, int, int]]


def build(rules: Iterable[Rule], arch: archmod.Arch | None = None,
          notify: Collection[str] = (), refuse: Collection[str] = ()) -> Program:
    """The filter program as (code, jt, jf, k) tuples, jumps resolved.

    Syscalls named in ``notify`` return SECCOMP_RET_USER_NOTIF instead of
    SECCOMP_RET_TRACE (only for a plain rule, without an argument check); those
    named in ``refuse`` fail with ENOSYS, as on a kernel without them.
    """
    arch = arch or archmod.native()
    rules = list(rules)
    # Symbolic program: jumps name labels; resolved below into relative offsets.
    program: list[tuple[int, str | int, str | int, int]] = []
    labels: dict[str, int] = {}

    def emit(code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        program.append((code, jt, jf, k))

    emit(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH)
    emit(BPF_JMP | BPF_JEQ | BPF_K, arch.audit_arch, 0, "foreign")
    emit(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR)
    if arch.audit_arch == archmod.AUDIT_ARCH_X86_64:
        # A negative number (syscall(-1)) is no call at all: the kernel says ENOSYS.
        # Below that, the x32 bit marks the x32 ABI.
        emit(BPF_JMP | BPF_JGE | BPF_K, 0x80000000, "allow", 0)
        emit(BPF_JMP | BPF_JGE | BPF_K, archmod.X32_SYSCALL_BIT, "foreign", 0)
    for i, rule in enumerate(rules):
        if rule.nonzero_arg is not None:
            target = f"check{i}"
        else:
            target = "notify" if rule.name in notify else "trace"
        emit(BPF_JMP | BPF_JEQ | BPF_K, arch.number(rule.name), target, 0)
    for name in refuse:
        emit(BPF_JMP | BPF_JEQ | BPF_K, arch.number(name), "refuse", 0)
    emit(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)  # no rule matched
    # BPF jumps go forward only: the argument checks come before the shared returns.
    for i, rule in enumerate(rules):
        if rule.nonzero_arg is None:
            continue
        labels[f"check{i}"] = len(program)
        emit(BPF_LD | BPF_W | BPF_ABS, _arg_low(rule.nonzero_arg))
        if rule.mask is not None:
            emit(BPF_JMP | BPF_JSET | BPF_K, rule.mask, "trace", "allow")
            continue
        emit(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, "trace")
        emit(BPF_LD | BPF_W | BPF_ABS, _arg_low(rule.nonzero_arg) + 4)
        emit(BPF_JMP | BPF_JEQ | BPF_K, 0, "allow", "trace")
    labels["allow"] = len(program)
    emit(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
    labels["trace"] = len(program)
    emit(BPF_RET | BPF_K, SECCOMP_RET_TRACE | DATA_REDIRECT)
    labels["notify"] = len(program)
    emit(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF)
    labels["refuse"] = len(program)
    emit(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | errno.ENOSYS)
    labels["foreign"] = len(program)
    emit(BPF_RET | BPF_K, SECCOMP_RET_TRACE | DATA_FOREIGN_ARCH)

    resolved = []
    for index, (code, jt, jf, k) in enumerate(program):
        offsets = []
        for jump in (jt, jf):
            if isinstance(jump, str):
                offset = labels[jump] - index - 1
                if not 0 <= offset <= 255:
                    raise ValueError("seccomp filter too long for a BPF jump")
                offsets.append(offset)
            else:
                offsets.append(jump)
        resolved.append((code, offsets[0], offsets[1], k))
    return resolved


def pack(program: list[tuple[int, int, int, int]]) -> bytes:
    """The program as the kernel's struct sock_filter array (for tests and dumps)."""
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def pack_fprog(instructions: int, address: int) -> bytes:
    """struct sock_fprog for a packed program of ``instructions`` at ``address`` (in
    another process: a filter installed there by an injected seccomp call)."""
    return bytes(SockFprog(instructions, ctypes.cast(address, ctypes.POINTER(SockFilter))))


def install(program: Program, flags: int = 0) -> int | None:
    """Set no_new_privs and load the filter into the calling thread; raise OSError.

    With SECCOMP_FILTER_FLAG_NEW_LISTENER in ``flags`` the user-notification
    listener's file descriptor is returned. The filter always asks to leave the
    program's speculation mitigations as they were: kernels before 5.16 (RHEL 8)
    otherwise force the costly store-bypass and STIBP ones on every filtered
    process, and this filter is a tracing aid, not a sandbox.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(error)}")
    filters = (SockFilter * len(program))(*(SockFilter(c, t, f, k) for c, t, f, k in program))
    fprog = SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(SockFilter)))
    libc.syscall.restype = ctypes.c_long
    number = archmod.native().number("seccomp")
    result = libc.syscall(number, SECCOMP_SET_MODE_FILTER,
                          ctypes.c_uint(flags | SECCOMP_FILTER_FLAG_SPEC_ALLOW),
                          ctypes.byref(fprog))
    error = ctypes.get_errno() if result < 0 else 0
    if error == errno.EINVAL:  # before Linux 4.17, which did not know the flag
        result = libc.syscall(number, SECCOMP_SET_MODE_FILTER, ctypes.c_uint(flags),
                              ctypes.byref(fprog))
        error = ctypes.get_errno() if result < 0 else 0
    if error == errno.ENOSYS and not flags:  # no seccomp(2) before Linux 3.17
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0:
            return None
        error = ctypes.get_errno()
    if error:
        raise OSError(error, f"seccomp(SECCOMP_SET_MODE_FILTER, {flags:#x}): "
                             f"{os.strerror(error)}")
    return int(result) if flags & SECCOMP_FILTER_FLAG_NEW_LISTENER else None
