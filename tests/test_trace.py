"""The kernel-facing bottom of streams-run: sockaddr codec, seccomp filter, DNS answers.

Pure functions get unit tests; the filter is also loaded into a real child process.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from streams_trace.supervisor import dns
from streams_trace.trace import arch, seccomp, sockaddr


def test_sockaddr_round_trips_v4_v6_and_mapped() -> None:
    v4 = sockaddr.SockAddr(socket.AF_INET, "10.1.2.3", 8080)
    assert sockaddr.decode(sockaddr.encode(v4)) == v4
    v6 = sockaddr.SockAddr(socket.AF_INET6, "2001:db8::7", 443)
    assert sockaddr.decode(sockaddr.encode(v6)) == v6
    mapped = sockaddr.decode(sockaddr.encode(sockaddr.SockAddr(socket.AF_INET6, "127.0.0.1", 9)))
    assert mapped is not None and mapped.mapped and mapped.key == ("127.0.0.1", 9)
    assert str(mapped) == "127.0.0.1:9" and str(v6) == "[2001:db8::7]:443"


def test_sockaddr_matches_what_the_kernel_writes() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", port) + bytes(4)
    raw += socket.inet_pton(socket.AF_INET6, "::1") + bytes(4)
    assert sockaddr.decode(raw) == sockaddr.SockAddr(socket.AF_INET6, "::1", port)


def test_sockaddr_unix_and_short_input() -> None:
    assert sockaddr.decode(b"\x01") is None
    unix = sockaddr.decode(struct.pack("=H", socket.AF_UNIX) + b"/run/nscd/socket\0")
    assert unix is not None and unix.path == "/run/nscd/socket" and not unix.is_ip
    abstract = sockaddr.decode(struct.pack("=H", socket.AF_UNIX) + b"\0hidden")
    assert abstract is not None and abstract.path == "@hidden"
    assert sockaddr.decode(sockaddr.encode(abstract)) == abstract


def test_filter_checks_arch_first_and_traces_only_the_rules() -> None:
    program = seccomp.build([seccomp.Rule("connect"), seccomp.Rule("sendto", nonzero_arg=4)])
    assert program[0] == (seccomp.BPF_LD | seccomp.BPF_W | seccomp.BPF_ABS, 0, 0,
                          seccomp.SECCOMP_DATA_ARCH)
    assert program[1][3] == arch.AUDIT_ARCH_X86_64
    returns = [k for code, _, _, k in program if code == seccomp.BPF_RET | seccomp.BPF_K]
    assert seccomp.SECCOMP_RET_TRACE | seccomp.DATA_FOREIGN_ARCH in returns
    assert seccomp.SECCOMP_RET_TRACE | seccomp.DATA_REDIRECT in returns
    assert len(seccomp.pack(program)) == 8 * len(program)


def _run_filtered_child(action: str) -> int:
    """Fork a child that installs the filter (no tracer) and tries ``action``."""
    program = seccomp.build([seccomp.Rule("connect")])
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.install(program)
            sock = socket.socket()
            if action == "connect":
                try:
                    sock.connect(("127.0.0.1", 9))
                except OSError as exc:
                    os._exit(exc.errno or 99)
                os._exit(0)
            os.getpid()
            sock.close()
            os._exit(0)
        except BaseException:
            os._exit(98)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_filter_in_a_real_process_traps_connect_only() -> None:
    # Without a tracer, SECCOMP_RET_TRACE makes the syscall fail with ENOSYS: proof that
    # connect was sent to the tracer while the other syscalls ran untouched.
    assert _run_filtered_child("connect") == errno.ENOSYS
    assert _run_filtered_child("other") == 0


def test_dns_answers_a_and_nodata() -> None:
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"\x06globus\x03ABC\x00" + struct.pack("!HH", dns.QTYPE_A, dns.QCLASS_IN)
    question = dns.parse_question(query)
    assert question is not None and question.name == "globus.abc"
    reply = dns.build_answer(query, question, "127.240.83.1")
    ident, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", reply)
    assert (ident, qd, an) == (0x1234, 1, 1) and flags & dns.FLAG_QR
    assert reply.endswith(socket.inet_aton("127.240.83.1"))
    aaaa = query[:-4] + struct.pack("!HH", dns.QTYPE_AAAA, dns.QCLASS_IN)
    aaaa_question = dns.parse_question(aaaa)
    assert aaaa_question is not None
    assert struct.unpack_from("!HHHH", dns.build_answer(aaaa, aaaa_question, "1.2.3.4"))[3] == 0


@pytest.mark.parametrize("junk", [b"", b"\x00" * 5, b"\x00" * 12 + b"\x40" + b"a" * 70])
def test_dns_ignores_junk(junk: bytes) -> None:
    assert dns.parse_question(junk) is None
