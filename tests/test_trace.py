"""The kernel-facing bottom of streams-run: sockaddr codec, seccomp filter, DNS answers.

Pure functions get unit tests; the filter is also loaded into a real child process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from streams_trace.supervisor import dns
from streams_trace.supervisor.loop import Loop
from streams_trace.supervisor.redirect import Redirector, Settings
from streams_trace.supervisor.tracer import Task, TracedCall
from streams_trace.trace import arch, ptraceapi, seccomp, sockaddr, usernotify

from .conftest import ptrace_problem


def test_sockaddr_round_trips_v4_v6_and_mapped() -> None:
    v4 = sockaddr.SockAddr(socket.AF_INET, "10.1.2.3", 8080)
    assert sockaddr.decode(sockaddr.encode(v4)) == v4
    v6 = sockaddr.SockAddr(socket.AF_INET6, "2001:db8::7", 443)
    assert sockaddr.decode(sockaddr.encode(v6)) == v6
    link_local = sockaddr.SockAddr(socket.AF_INET6, "fe80::53", 53, scope_id=2)
    assert sockaddr.decode(sockaddr.encode(link_local)) == link_local
    assert str(link_local) == "[fe80::53%2]:53"
    assert sockaddr.python_address(link_local, socket.AF_INET6) == ("fe80::53", 53, 0, 2)
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


def test_filter_sends_notify_rules_to_the_listener_and_the_rest_to_the_tracer() -> None:
    rules = [seccomp.Rule("connect"), seccomp.Rule("bind"), seccomp.Rule("sendto", nonzero_arg=4)]
    program = seccomp.build(rules, notify={"connect"})
    returns = [k for code, _, _, k in program if code == seccomp.BPF_RET | seccomp.BPF_K]
    assert usernotify.SECCOMP_RET_USER_NOTIF in returns
    assert seccomp.SECCOMP_RET_TRACE | seccomp.DATA_REDIRECT in returns  # bind, sendto
    # The connect comparison jumps to the notify return, the bind comparison does not.
    for index, (code, jt, _, k) in enumerate(program):
        if code == seccomp.BPF_JMP | seccomp.BPF_JEQ | seccomp.BPF_K and jt:
            target = program[index + 1 + jt][3]
            if k == arch.native().number("connect"):
                assert target == usernotify.SECCOMP_RET_USER_NOTIF
            elif k == arch.native().number("bind"):
                assert target == seccomp.SECCOMP_RET_TRACE | seccomp.DATA_REDIRECT


def _notifying_child(connect_to: tuple[str, int]) -> tuple[int, int, socket.socket]:
    """Fork a child whose connects are held by user notification; (pid, listener, report).

    The child connects a TCP socket to ``connect_to`` and writes what connect said.
    """
    program = seccomp.build([seccomp.Rule("connect")], notify={"connect"})
    parent_end, child_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            parent_end.close()
            listener = seccomp.install(program, usernotify.SECCOMP_FILTER_FLAG_NEW_LISTENER)
            assert listener is not None
            socket.send_fds(child_end, [b"L"], [listener])
            os.close(listener)
            with socket.socket() as sock:
                try:
                    sock.connect(connect_to)
                    child_end.sendall(b"0 " + str(sock.getpeername()[1]).encode())
                except OSError as exc:
                    child_end.sendall(str(exc.errno).encode())
            os._exit(0)
        except BaseException:
            os._exit(98)
    child_end.close()
    _, fds, _, _ = socket.recv_fds(parent_end, 16, 1)
    return pid, fds[0], parent_end


def _user_notification_problem() -> str | None:
    numbers = re.match(r"(\d+)\.(\d+)", platform.release())
    if numbers and (int(numbers[1]), int(numbers[2])) < (5, 6):
        return (f"Linux {platform.release()} lacks SECCOMP_USER_NOTIF_FLAG_CONTINUE (5.5) "
                "or pidfd_getfd (5.6)")
    return ptrace_problem()  # reading the child's memory needs ptrace rights


@pytest.mark.parametrize("answer", ["complete", "fail", "continue"])
def test_user_notification_holds_connect_until_the_supervisor_answers(answer: str) -> None:
    problem = _user_notification_problem()
    if problem:
        pytest.skip(problem)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        pid, listener, report = _notifying_child(server.getsockname())
        try:
            held = usernotify.receive(listener)  # blocks until the child's connect
            assert held.nr == arch.native().number("connect") and held.pid == pid
            assert held.arch == arch.native().audit_arch
            raw = ptraceapi.read_memory(held.pid, held.args[1], held.args[2])
            assert sockaddr.decode(raw) == sockaddr.SockAddr(
                socket.AF_INET, "127.0.0.1", server.getsockname()[1])
            if answer == "complete":  # the supervisor's own connect on the child's socket
                pidfd = os.pidfd_open(pid)
                copy = socket.socket(fileno=ptraceapi.pidfd_getfd(pidfd, held.args[0]))
                copy.connect(server.getsockname())
                copy.close()
                os.close(pidfd)
                usernotify.respond(listener, held.id, 0)
                expected = b"0 " + str(server.getsockname()[1]).encode()
            elif answer == "fail":
                usernotify.respond(listener, held.id, -errno.ECONNREFUSED)
                expected = str(errno.ECONNREFUSED).encode()
            else:
                usernotify.respond_continue(listener, held.id)
                expected = b"0 " + str(server.getsockname()[1]).encode()
            assert report.recv(64) == expected
            with pytest.raises(OSError) as gone:  # answered once: the id is spent
                usernotify.respond(listener, held.id, 0)
            assert gone.value.errno == errno.ENOENT
        finally:
            os.close(listener)
            report.close()
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


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


def _speculation_state() -> list[str]:
    with open("/proc/self/status") as status:
        return [line.strip() for line in status if line.startswith("Speculation")]


def test_filter_leaves_the_speculation_mitigations_as_they_were() -> None:
    """Kernels before 5.16 (RHEL 8) force the store-bypass and indirect-branch mitigations
    on a process with a seccomp filter unless the filter says SPEC_ALLOW: a slower
    program for nothing."""
    modes = []
    for name in ("spec_store_bypass", "spectre_v2"):
        try:
            with open(f"/sys/devices/system/cpu/vulnerabilities/{name}") as mode:
                modes.append(mode.read().strip())
        except OSError:
            modes.append("unknown")
    if not any("seccomp" in mode for mode in modes):
        pytest.skip("this kernel does not change a seccomp-filtered process's speculation "
                    f"mitigations (spec_store_bypass: {modes[0]}; spectre_v2: {modes[1]})")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            seccomp.install(seccomp.build([seccomp.Rule("connect")]))
            os.write(write_end, "\n".join(_speculation_state()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        filtered = report.read().decode().split("\n")
    os.waitpid(pid, 0)
    assert filtered == _speculation_state()


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


def _tcp_query(query_id: int, name: str) -> bytes:
    message = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        message += bytes([len(label)]) + label.encode()
    message += b"\0" + struct.pack("!HH", dns.QTYPE_A, dns.QCLASS_IN)
    return struct.pack("!H", len(message)) + message


def _responder_stream(nameserver: tuple[str, int] | None = None
                      ) -> tuple[Loop, dns.Responder, socket.socket]:
    """A responder on a loop of its own, and a program's TCP connection to it, registered
    for ``nameserver`` (as the redirect does) when one is given."""
    loop = Loop()
    responder = dns.Responder(loop, {"globus.abc": "127.240.83.1"})
    address = responder.address_for(socket.AF_INET, False, socket.SOCK_STREAM)
    assert address is not None
    program = socket.socket()
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # small, so a test can fill them
        program.setsockopt(socket.SOL_SOCKET, option, 4096)
    program.connect(address)
    if nameserver is not None:
        responder.register(program.getsockname(), sockaddr.SockAddr(socket.AF_INET,
                                                                     *nameserver),
                           socket.SOCK_STREAM)
    return loop, responder, program


def _run_loop(loop: Loop, seconds: float) -> None:
    """Run ``loop`` for about ``seconds`` (a timer bounds each wait)."""
    deadline = time.monotonic() + seconds
    while True:
        timer = loop.call_at(min(deadline, time.monotonic() + 0.01), lambda: None)
        loop.run_once()
        timer.cancel()
        if time.monotonic() >= deadline:
            return


def test_a_program_that_sends_and_never_reads_fills_no_more_than_the_buffer() -> None:
    """Pipelined queries from a program that does not read its answers: the responder
    stops reading once STREAM_BUFFER of answers waits, then sleeps rather than spins;
    when the program reads, every whole query gets its answer."""
    loop, responder, program = _responder_stream()
    program.setblocking(False)
    query = _tcp_query(7, "globus.abc")
    queries = query * 100_000
    sent = 0
    try:
        _run_loop(loop, 0.01)  # accepted; a small send buffer there too
        (stream,) = responder.streams
        stream.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        while True:  # until a round of the loop lets the program send nothing more
            before = sent
            with contextlib.suppress(BlockingIOError):
                while sent < len(queries):
                    sent += program.send(queries[sent : sent + 65536])
            _run_loop(loop, 0.05)
            if sent == before or sent == len(queries):
                break
        assert sent < len(queries)
        assert 0 < len(stream.to_client) < 2 * dns.STREAM_BUFFER
        assert not loop.poller.poll(100)  # nothing ready: the loop sleeps
        program.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := _read_some(loop, program):
            received += chunk
        answer = dns.build_answer(query[2:], dns.parse_question(query[2:]), "127.240.83.1")
        assert bytes(received) == (struct.pack("!H", len(answer)) + answer) * (sent // len(query))
        assert not responder.streams
    finally:
        program.close()
        responder.close()


def test_a_program_slow_to_read_loses_no_answer_of_its_nameserver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelined queries for other names, then a program that reads nothing for longer
    than FORWARD_TIMEOUT: the nameserver's answers wait on our side of the responder's
    buffer, and the wait is the program's, not a silent nameserver's: every answer comes."""
    monkeypatch.setattr(dns, "FORWARD_TIMEOUT", 0.5)

    def answer_each(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while header := stream.read(2):
                query = stream.read(struct.unpack("!H", header)[0])
                question = dns.parse_question(query)
                assert question is not None
                reply = dns.build_answer(query, question, "127.0.0.9")
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    with socket.create_server(("127.0.0.1", 0)) as nameserver:
        server = threading.Thread(target=lambda: answer_each(nameserver.accept()[0]),
                                  daemon=True)
        server.start()
        loop, responder, program = _responder_stream(nameserver.getsockname())
        count = 20_000
        try:
            _run_loop(loop, 0.01)  # accepted; a small send buffer there, as in the other
            (stream,) = responder.streams
            stream.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            program.setblocking(False)
            queries = b"".join(_tcp_query(index & 0xFFFF, "other.example")
                               for index in range(count))
            sent = 0
            deadline = time.monotonic() + 1.5  # sends, and reads nothing, for 3 timeouts
            while time.monotonic() < deadline:
                with contextlib.suppress(BlockingIOError):
                    if sent < len(queries):
                        sent += program.send(queries[sent : sent + 65536])
                _run_loop(loop, 0.01)
            # Answers wait in the responder for the program, which still has them all
            # coming. (How many queries the kernel's buffers took meanwhile varies: the
            # rest goes now, while the program reads.)
            assert stream.to_client and not stream.closed
            received = bytearray()
            while sent < len(queries):
                with contextlib.suppress(BlockingIOError):
                    sent += program.send(queries[sent : sent + 65536])
                _run_loop(loop, 0.01)
                with contextlib.suppress(BlockingIOError):
                    received += program.recv(1 << 20)
            program.shutdown(socket.SHUT_WR)
            while chunk := _read_some(loop, program):
                received += chunk
            assert len(dns.take_messages(received)) == count and not received
        finally:
            program.close()
            responder.close()
        server.join(timeout=10)


def _read_some(loop: Loop, program: socket.socket) -> bytes:
    """What the program reads next while the loop runs (b"": the connection ended)."""
    while True:
        _run_loop(loop, 0.01)
        with contextlib.suppress(BlockingIOError):
            return program.recv(1 << 20)


def test_a_silent_nameserver_loses_the_connection_after_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A nameserver that takes the connection and never answers: after FORWARD_TIMEOUT
    without a byte the program's connection ends, and nothing of it is left behind."""
    monkeypatch.setattr(dns, "FORWARD_TIMEOUT", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        loop, responder, program = _responder_stream(silent.getsockname())
        try:
            program.sendall(_tcp_query(1, "other.example"))
            program.settimeout(0.01)
            started = time.monotonic()
            ended = None
            while time.monotonic() - started < 5 and ended is None:
                loop.run_once()
                with contextlib.suppress(TimeoutError):
                    ended = program.recv(100)
            assert ended == b"" and 0.4 < time.monotonic() - started < 3
            assert not responder.streams
        finally:
            program.close()
            responder.close()


class _RecordingTracer:
    """The tracer's interface to the policy, recording what the policy decides.

    ``run_to_exit`` fails as ptrace does when the thread cannot be driven, so
    the policy's error path is the one exercised; the rest of the policy (its
    /proc and process_vm_readv reads) runs for real against this process.
    """

    def __init__(self) -> None:
        self.arch = arch.native()
        self.decisions: list[tuple[str, int | None]] = []

    def resume(self, task: object, signal_number: int = 0) -> None:
        self.decisions.append(("resume", None))

    def complete(self, task: object, result: int) -> None:
        self.decisions.append(("complete", result))

    def run_to_exit(self, task: object, callback: object) -> None:
        raise OSError(errno.EIO, "ptrace: cannot run the syscall")


@pytest.fixture
def policy(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[Redirector, _RecordingTracer]]:
    from streams_trace.conf import TunnelConf
    from streams_trace.contact import Contact
    from streams_trace.supervisor.loop import Loop

    tunnel = TunnelConf("3f1c9a52-6d0e-4b8a-9e57-0c2d4b1a7f60", lankey="secret",
                        connector_contact_string=Contact("127.0.0.1", 9))
    settings = Settings(tunnel=tunnel, contacts=[Contact("127.0.0.9", 4000)],
                        listen_ports={4001})
    tracer = _RecordingTracer()
    redirector = Redirector(tracer, Loop(), settings)  # type: ignore[arg-type]
    run_log = logging.getLogger("streams_trace.run")  # may not propagate to caplog's root
    run_log.addHandler(caplog.handler)
    try:
        yield redirector, tracer
    finally:
        run_log.removeHandler(caplog.handler)
        redirector.close()


# A descriptor number no test opens (a closed low number would be reused by the policy's
# own descriptors, such as the /proc/PID/mem it opens to read sockaddrs).
UNUSED_FD = 999_999


def _sockaddr_in_memory(address: sockaddr.SockAddr) -> tuple[ctypes.Array, int, int]:
    data = sockaddr.encode(address)
    buffer = ctypes.create_string_buffer(data, len(data))
    return buffer, ctypes.addressof(buffer), len(data)


def test_policy_fails_closed_when_an_accept_on_the_tunnel_listener_cannot_be_checked(
        policy: tuple[Redirector, _RecordingTracer], caplog: pytest.LogCaptureFixture) -> None:
    redirector, tracer = policy
    me = Task(os.getpid(), os.getpid())
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        redirector.listeners.add(os.fstat(listener.fileno()).st_ino)
        # The accept cannot be run to its end (ptrace fails): it must not run unchecked.
        redirector.on_syscall(me, tracer.arch.number("accept4"), (listener.fileno(), 0, 0, 0))
        # The socket cannot even be identified: assume it is the tunnel's.
        def unreadable(task: object, fd: int) -> int:
            raise PermissionError(errno.EACCES, "/proc says no")

        identify = redirector.socket_inode
        redirector.socket_inode = unreadable  # type: ignore[method-assign]
        redirector.on_syscall(me, tracer.arch.number("accept"), (listener.fileno(), 0, 0))
        redirector.socket_inode = identify  # type: ignore[method-assign]
        # No such descriptor at all: the accept runs, and the kernel says EBADF.
        redirector.on_syscall(me, tracer.arch.number("accept"), (UNUSED_FD, 0, 0))
    assert tracer.decisions == [("complete", -errno.ECONNABORTED)] * 2 + [("resume", None)]
    warnings = {(r.levelname, r.getMessage().split()[0]) for r in caplog.records
                if "could not check" in r.getMessage()}  # a set: caplog may see a record twice
    assert warnings == {("WARNING", "accept4"), ("WARNING", "accept")}


def test_policy_fails_closed_on_tunnel_binds_and_connects_only(
        policy: tuple[Redirector, _RecordingTracer]) -> None:
    redirector, tracer = policy
    me = Task(os.getpid(), os.getpid())
    gone = UNUSED_FD  # /proc and pidfd_getfd fail on it
    tunnel_port = sockaddr.SockAddr(socket.AF_INET, "0.0.0.0", 4001)
    contact = sockaddr.SockAddr(socket.AF_INET, "127.0.0.9", 4000)
    other = sockaddr.SockAddr(socket.AF_INET, "127.0.0.1", 4002)
    keep = []
    for nr, address in (("bind", tunnel_port), ("connect", contact)):
        buffer, pointer, length = _sockaddr_in_memory(address)
        keep.append(buffer)
        redirector.on_syscall(me, tracer.arch.number(nr), (gone, pointer, length))
    # A tunnel connect whose check failed is refused; what streams-run has no business
    # with runs on even when checking it failed.
    for address in (contact, other):
        buffer, pointer, length = _sockaddr_in_memory(address)
        keep.append(buffer)
        redirector._fail_closed(TracedCall(tracer, me),  # type: ignore[arg-type]
                                tracer.arch.number("connect"),
                                (gone, pointer, length), OSError(errno.EIO, "ptrace"))
    # (The connect above on a descriptor that is gone got the kernel's answer, EBADF.)
    assert tracer.decisions == [("complete", -errno.EACCES), ("complete", -errno.EBADF),
                                ("complete", -errno.ECONNREFUSED), ("resume", None)]
