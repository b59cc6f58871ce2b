"""Architecture specifics in one place: syscall numbers, registers, AUDIT_ARCH.

x86_64 is the supported and tested architecture. aarch64 is "a table away":
its numbers are here, and a register adapter for ``user_pt_regs`` (x0-x7, pc,
read with PTRACE_GETREGSET) is all that is missing.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

# From <linux/audit.h>: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000  # x32 ABI syscalls on x86_64 carry this bit


@dataclass(frozen=True)
class Arch:
    name: str
    audit_arch: int
    syscall_instruction_length: int  # how far back the pc goes to re-execute a syscall
    syscalls: dict[str, int]

    def number(self, name: str) -> int:
        return self.syscalls[name]

    def is_x32(self, number: int) -> bool:
        """Whether ``number`` is an x32-ABI call (x86_64 only; a negative one is none)."""
        return (self.audit_arch == AUDIT_ARCH_X86_64
                and X32_SYSCALL_BIT <= number & 0xFFFFFFFF < 0x80000000)


X86_64 = Arch(
    name="x86_64",
    audit_arch=AUDIT_ARCH_X86_64,
    syscall_instruction_length=2,  # "syscall" is 0f 05
    syscalls={
        "close": 3,
        "mmap": 9,
        "socket": 41,
        "connect": 42,
        "accept": 43,
        "sendto": 44,
        "recvfrom": 45,
        "sendmsg": 46,
        "bind": 49,
        "getsockopt": 55,
        "tgkill": 234,
        "accept4": 288,
        "seccomp": 317,
        "io_uring_setup": 425,
    },
)

AARCH64 = Arch(
    name="aarch64",
    audit_arch=AUDIT_ARCH_AARCH64,
    syscall_instruction_length=4,  # "svc #0"
    syscalls={
        "close": 57,
        "socket": 198,
        "mmap": 222,
        "bind": 200,
        "accept": 202,
        "connect": 203,
        "sendto": 206,
        "recvfrom": 207,
        "sendmsg": 211,
        "getsockopt": 209,
        "tgkill": 131,
        "accept4": 242,
        "seccomp": 277,
        "io_uring_setup": 425,
    },
)

ARCHES = {"x86_64": X86_64, "aarch64": AARCH64}
SUPPORTED = ("x86_64",)  # architectures with a register adapter below


def native() -> Arch:
    return ARCHES.get(platform.machine(), X86_64)


def is_supported() -> bool:
    return platform.machine() in SUPPORTED


# -- registers (x86_64 user_regs_struct as python-ptrace defines it) -------------------

_ARG_REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


def syscall_number(regs: Any) -> int:
    """The syscall being made (orig_rax keeps it after rax takes the return value)."""
    return _signed(regs.orig_rax)


def set_syscall_number(regs: Any, number: int) -> None:
    """At a syscall entry stop: make the thread run syscall ``number`` instead."""
    regs.orig_rax = number


def instruction_pointer(regs: Any) -> int:
    return int(regs.rip)


def set_instruction_pointer(regs: Any, address: int) -> None:
    regs.rip = address


def syscall_args(regs: Any) -> tuple[int, ...]:
    return tuple(int(getattr(regs, name)) for name in _ARG_REGISTERS)


def set_syscall_args(regs: Any, args: tuple[int, ...]) -> None:
    for name, value in zip(_ARG_REGISTERS, args, strict=False):
        setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)


# Byte offsets in user_regs_struct (PTRACE_PEEKUSER/POKEUSER): skipping a syscall writes
# just two words, two small ptrace calls instead of a GETREGS/SETREGS round trip.
_ORIG_RAX_OFFSET = 15 * 8
_RAX_OFFSET = 10 * 8
_RDI_OFFSET = 14 * 8
SYSCALL_NUMBER_OFFSET = _ORIG_RAX_OFFSET  # the syscall made (or being restarted)
RETURN_VALUE_OFFSET = _RAX_OFFSET
FIRST_ARG_OFFSET = _RDI_OFFSET
# Kernel-internal results a thread can carry into a signal-delivery-stop
# (<linux/errno.h>): restart after the handler only with SA_RESTART / always.
ERESTARTSYS = 512
ERESTARTNOINTR = 513


def skip_syscall_words(result: int) -> tuple[tuple[int, int], ...]:
    """At a syscall entry stop: do not run the syscall, make it return ``result``.

    The (user area offset, value) words to poke: orig_rax -1 (no syscall), then rax.
    """
    return ((_ORIG_RAX_OFFSET, 0xFFFFFFFFFFFFFFFF), (_RAX_OFFSET, result & 0xFFFFFFFFFFFFFFFF))


def rewind_to_syscall(regs: Any, number: int, args: tuple[int, ...]) -> None:
    """At a syscall exit stop: make the thread execute syscall ``number(args)`` next."""
    regs.rip = regs.rip - X86_64.syscall_instruction_length
    regs.rax = number
    set_syscall_args(regs, args)


def _signed(value: int) -> int:
    value = int(value)
    return value - (1 << 64) if value >= 1 << 63 else value
