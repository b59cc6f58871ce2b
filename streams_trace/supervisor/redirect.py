"""The redirect policy: what streams-run does at a stopped connect, bind, accept, sendto
or recvfrom.

Initiator side: a connect to ``globus.<TUNNEL_ID>:<fake_port>`` (the name
resolves, through ``dns``, to an address of ours) or to a ``--globus-contact``
goes to the initiator access point. The supervisor takes the program's own
socket with pidfd_getfd, connects it and runs the LAN handshake, then completes
the program's connect without running it: no relay, the program's socket is
the tunnel connection, and its sockaddr buffer is never written.

Listener side: a bind to a tunnel port marks that socket (by inode, so dup,
fork and fd reuse cannot confuse it). An accept on a marked socket runs to its
end; the supervisor then authenticates the new connection before the program
sees it. One that fails is closed inside the program and the accept runs
again, so a blocking accept goes on waiting and a non-blocking one says EAGAIN.

Each operation is a small state machine on the supervisor's loop: many
handshakes proceed at once and none blocks the supervisor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import selectors
import socket
import struct
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..conf import TunnelConf
from ..contact import Contact, globus_name
from ..handshake import (
    DEFAULT_TIMEOUT,
    Acceptor,
    Connector,
    Failure,
    Handshake,
    State,
    describe_failure,
    tunnel_id_bytes,
)
from ..trace import ptraceapi as pt
from ..trace import seccomp
from ..trace import sockaddr as sa_codec
from ..trace.procfs import fd_inode, seccomp_filter_count, tgid_of, thread_exists
from ..trace.sockaddr import SockAddr
from . import fastconnect
from .dns import Responder, hosts_file_addresses
from .loop import Loop, Timer
from .scratch import SLOT_SIZE, Scratch
from .tracer import HeldCall, Task, TracedCall, Tracer

if TYPE_CHECKING:
    from .notify import NotifiedCall, Notifier
    from .relay_mode import Relay

log = logging.getLogger("streams_trace.run")

# Addresses the DNS responder gives the tunnel's names; loopback, so a connect
# that somehow escaped the redirect reaches nothing outside this node.
FAKE_NETWORK = ipaddress.IPv4Network("127.240.83.0/24")
DNS_PORT = 53
TIMEVAL = struct.Struct("@ll")  # struct timeval, as SO_SNDTIMEO gives it
# Refused with ENOSYS, as by a kernel without them: io_uring's connect and accept run
# in the kernel, past any seccomp filter or tracer, so they would bypass the redirect
# (and the listener's handshake). Programs then use the ordinary calls.
REFUSED_SYSCALLS = ("io_uring_setup",)
# Daemons that look names up for glibc outside the program, where the tunnel's names are
# unknown (and would leak to the real DNS): nscd, and systemd-resolved for nss-resolve.
# Refused, glibc resolves in the program itself, through the tunnel's responder.
NAME_SERVICE_SOCKETS = frozenset({
    "/var/run/nscd/socket", "/run/nscd/socket",
    "/run/systemd/resolve/io.systemd.Resolve",
})
# Sockaddr buffers pointed at a stand-in remembered per process, at most (see on_sendto).
MAX_STAND_IN_BUFFERS = 64
# How the recvfrom filter is added to a process (watch_recvfrom): for all its threads, with
# the program's speculation mitigations left alone. Without TSYNC where one of its threads
# cannot take it (a filter of its own), without SPEC_ALLOW where the kernel (before 4.17)
# does not know the flag.
RECVFROM_FILTER_FLAGS = seccomp.SECCOMP_FILTER_FLAG_TSYNC | seccomp.SECCOMP_FILTER_FLAG_SPEC_ALLOW


@dataclass
class Settings:
    tunnel: TunnelConf
    contacts: list[Contact] = field(default_factory=list)  # --globus-contact and the conf's
    listen_ports: set[int] = field(default_factory=set)
    timeout: float = DEFAULT_TIMEOUT  # connect + handshake, per connection
    # "direct": connect the program's own socket (pidfd_getfd); "relay": move its connect
    # and bind to loopback ports of the supervisor and pump the bytes (see relay_mode.py).
    data_path: str = "direct"
    pump: str | None = None  # relay mode's pump: None/"auto", "native" or "python"


class PidfdGetfdMissing(OSError):
    pass


class Redirector:
    """The policy object the tracer calls at every stopped syscall."""

    def __init__(self, tracer: Tracer, loop: Loop, settings: Settings) -> None:
        self.tracer = tracer
        self.loop = loop
        self.settings = settings
        self.tunnel = settings.tunnel
        numbers = tracer.arch.syscalls
        self.handlers = {
            numbers["connect"]: self._on_traced_connect,
            numbers["bind"]: self.on_bind,
            numbers["accept"]: self.on_accept,
            numbers["accept4"]: self.on_accept,
            numbers["sendto"]: self.on_sendto,
            numbers["recvfrom"]: self.on_recvfrom,
            numbers["sendmsg"]: self.on_sendmsg,
        }
        for name in REFUSED_SYSCALLS:  # without a filter, every syscall stops here
            self.handlers[numbers[name]] = self._refuse
        self.syscall_names = {numbers[name]: name for name in
                              ("connect", "bind", "accept", "accept4", "sendto")}  # log lines
        self.pidfds: dict[int, int] = {}
        self.memory: dict[int, int] = {}  # tgid -> its /proc/PID/mem, for sockaddr reads
        self.destinations: dict[int, tuple | None] = {}  # socket family -> access point address
        self.spare_connector: Connector | None = None  # see prepare_connector
        self._sockaddrs: dict[bytes, SockAddr] = {}  # raw sockaddr -> decoded (a small cache)
        self.closed_processes: set[int] = set()  # not dumpable, said so (_fail_closed)
        self.listeners: set[int] = set()  # inodes of the program's tunnel listening sockets
        self.scratch = Scratch(tracer)  # memory of ours in the program (relay mode's too)
        # Processes whose sendto went to a stand-in (their recvfrom is looked at), and per
        # process, each sockaddr buffer written there: address -> (what we wrote, what
        # the program had). See on_sendto and on_recvfrom.
        self.stand_in_users: set[int] = set()
        self.stand_in_buffers: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        # The filter that stops recvfrom with an address, added to a process when it first
        # sends to a stand-in (watch_recvfrom); the processes that have it, those that
        # could not take it, and the next way to try for those that are getting it.
        self.recvfrom_filter = seccomp.pack(
            seccomp.build([seccomp.Rule("recvfrom", nonzero_arg=4)], tracer.arch))
        assert len(self.recvfrom_filter) <= SLOT_SIZE
        self.recvfrom_watched: set[int] = set()
        self.recvfrom_unwatchable: set[int] = set()  # not tried again at every sendto
        # tgid -> its threads that have the filter, where the process's others could not
        # take it (one has a filter of its own).
        self.recvfrom_watched_threads: dict[int, set[int]] = {}
        self.recvfrom_flags: dict[int, int] = {}  # tgid -> the flags its next try uses
        self.access_point = _numeric(self.tunnel.connector_contact_string)
        # Names the responder answers, and the (host, port) pairs a connect is redirected for.
        hosts = iter(FAKE_NETWORK.hosts())
        self.names: dict[str, str] = {}
        self.targets: dict[tuple[str, int], str] = {}
        if self.tunnel.fake_port is not None:
            name = globus_name(self.tunnel.tunnel_id)
            self.names[name] = str(next(hosts))
            self.targets[(self.names[name], self.tunnel.fake_port)] = (
                f"{name}:{self.tunnel.fake_port}"
            )
        for contact in settings.contacts:
            try:
                literal = ipaddress.ip_address(contact.host)
            except ValueError:
                address = self.names.setdefault(contact.host.lower(), str(next(hosts)))
                self.targets[(address, contact.port)] = str(contact)
                # A name the hosts file knows never reaches our responder: its real
                # addresses are tunnel destinations too.
                for known in hosts_file_addresses(contact.host):
                    self.targets[(known, contact.port)] = str(contact)
                continue
            host = str(literal.ipv4_mapped or literal) if literal.version == 6 else str(literal)
            self.targets[(host, contact.port)] = str(contact)
        self.dns = Responder(loop, self.names) if self.names else None
        self.redirected = 0
        self.refused = 0
        self.relay: Relay | None = None
        # Set when the program's connects come by user notification (see notify.py).
        self.notifier: Notifier | None = None
        self.native_targets: list[tuple[str, int]] = []  # as given to the native path
        if settings.data_path == "relay":
            from ..relay import best_pump
            from .relay_mode import Relay

            self.relay = Relay(self, loop, lambda: best_pump(settings.pump))

    # -- dispatch ----------------------------------------------------------------------

    def on_syscall(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        handler = self.handlers.get(nr)
        if handler is None:
            self.tracer.resume(task)
            return
        try:
            handler(task, nr, args)
        except OSError as exc:
            self._failed(TracedCall(self.tracer, task), nr, args, exc)

    def _refuse(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        self.tracer.complete(task, -errno.ENOSYS)

    def on_notified(self, call: NotifiedCall, nr: int, args: tuple[int, ...]) -> None:
        """A connect held by user notification (the filter notifies for nothing else)."""
        try:
            self.on_connect(call, nr, args)
        except OSError as exc:
            self._failed(call, nr, args, exc)

    def _failed(self, call: HeldCall, nr: int, args: tuple[int, ...], exc: OSError) -> None:
        """A handler raised: answer the held call, unless its thread is gone."""
        # ESRCH can also name another thread of a living program (its exited main
        # thread, say): only a thread that is really gone needs no answer.
        if exc.errno == errno.ESRCH and not thread_exists(call.tid):
            return
        try:
            self._fail_closed(call, nr, args, exc)
        except OSError as again:
            if again.errno != errno.ESRCH:  # died meanwhile: nobody waits for an answer
                raise

    def _on_traced_connect(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        self.on_connect(TracedCall(self.tracer, task), nr, args)

    def _fail_closed(self, task: HeldCall, nr: int, args: tuple[int, ...],
                     exc: OSError) -> None:
        """A handler failed at a syscall entry: never let a tunnel syscall run unchecked.

        An accept on the tunnel's listening socket would hand the program an
        unauthenticated connection, a bind to a tunnel port would listen without
        the check, a connect to the tunnel would go to the fake address: those
        fail (the program sees an error and may retry); anything else runs on.
        When the failure hides which socket or address it is, assume the tunnel's.
        """
        numbers = self.tracer.arch.syscalls
        result: int | None = None
        if exc.errno == errno.EFAULT and nr in (numbers["bind"], numbers["connect"]):
            # The program's address argument points at nothing: what the kernel says.
            log.debug("%s of process %d: bad address", self.syscall_names[nr], task.tgid)
            task.complete(-errno.EFAULT)
            return
        if nr in (numbers["accept"], numbers["accept4"]):
            if self._is_tunnel_listener(task, args[0]):
                result = -errno.ECONNABORTED  # accept(2): "retry", as after a reset peer
        elif nr == numbers["bind"]:
            local = self._sockaddr_or_none(task, args[1], args[2])
            if local is None or (local.is_ip and local.port in self.settings.listen_ports):
                result = -errno.EACCES
        elif nr == numbers["connect"]:
            target = self._sockaddr_or_none(task, args[1], args[2])
            if target is None or (self.access_point is not None
                                  and target.is_ip and target.key in self.targets):
                result = -errno.ECONNREFUSED
            elif (self.dns is not None and target.is_ip and target.port == DNS_PORT
                  and exc.errno not in (errno.ENOTSOCK, errno.EBADF)):
                # Not pointed at the responder, it could carry the tunnel's names out. (A
                # descriptor that is no socket gets the kernel's own error: nothing leaves.)
                result = -errno.ECONNREFUSED
        elif nr == numbers["sendto"] and self.dns is not None:
            # A query not checked may be for the tunnel's names: it must not leave.
            target = self._sockaddr_or_none(task, args[4], args[5])
            if target is None or (target.is_ip and target.port == DNS_PORT):
                result = -errno.EPERM
        if result is None:
            log.debug("syscall %d of thread %d left alone: %s", nr, task.tid, exc)
            task.resume()
            return
        self.refused += 1
        what = self.syscall_names.get(nr, str(nr))
        if exc.errno in (errno.EACCES, errno.EPERM) and pt.memory_closed(task.tid):
            # Every call it makes that needs a check fails the same way: say why once.
            if task.tgid not in self.closed_processes:
                self.closed_processes.add(task.tgid)
                log.warning(
                    "process %d is closed to streams-run, so its connects, binds, tunnel "
                    "accepts and sendto calls fail: it is not dumpable (an unreadable "
                    "executable, or prctl PR_SET_DUMPABLE 0) and streams-run lacks "
                    "CAP_SYS_PTRACE, or a security module forbids it; make the file "
                    "readable, or give streams-run CAP_SYS_PTRACE", task.tgid)
            log.debug("%s of process %d refused: %s", what, task.tgid, exc)
        else:
            log.warning("%s of process %d refused, streams-run could not check it: %s",
                        what, task.tgid, exc)
        task.complete(result)

    def _is_tunnel_listener(self, task: Task | HeldCall, fd: int) -> bool:
        marked: Collection[int] = (
            self.relay.listener_of_inode.keys() if self.relay is not None else self.listeners)
        if not marked:
            return False
        try:
            return self.socket_inode(task, fd) in marked
        except OSError as exc:
            # No such descriptor (the kernel will say EBADF), or else we cannot tell
            # which socket: then treat it as the tunnel's.
            return not (exc.errno == errno.ENOENT and thread_exists(task.tid))

    def _sockaddr_or_none(self, task: Task | HeldCall, address: int,
                          length: int) -> SockAddr | None:
        """The sockaddr argument, or None when it cannot be read (the caller assumes the worst)."""
        try:
            return self._read_sockaddr(task, address, length) or SockAddr(0)
        except OSError:
            return None

    def _has_recvfrom_filter(self, tgid: int, tid: int) -> bool:
        return tgid in self.recvfrom_watched or \
            tid in self.recvfrom_watched_threads.get(tgid, ())

    def on_new_task(self, creator: Task, tid: int, tgid: int) -> None:
        """A new thread or process starts under its creator's seccomp filters: with the
        recvfrom filter if its creator had it then (not added again at its first sendto
        to a stand-in)."""
        if tgid == creator.tgid:
            threads = self.recvfrom_watched_threads.get(tgid)
            if threads is not None and creator.tid in threads:
                threads.add(tid)
            return
        if tgid in self.recvfrom_watched or not self._has_recvfrom_filter(creator.tgid,
                                                                          creator.tid):
            return
        # Another thread's filter may have gone in (TSYNC: its process only) between this
        # fork and now. The child has it only if it has every filter its creator has; if
        # not, or it is gone, it adds its own when it needs one.
        count = seccomp_filter_count(tid)
        if count is not None and count == seccomp_filter_count(creator.tid):
            self.recvfrom_watched.add(tgid)

    def forget_thread(self, task: Task) -> None:
        """The thread exited (its id may come back as another thread's)."""
        threads = self.recvfrom_watched_threads.get(task.tgid)
        if threads is not None:
            threads.discard(task.tid)

    def forget_process(self, tgid: int, exec_by: int | None = None) -> None:
        """The process exited, or its thread ``exec_by`` (its id before) ran a new
        program, which keeps that thread's seccomp filters and nothing else."""
        self.closed_processes.discard(tgid)
        self.stand_in_users.discard(tgid)
        self.stand_in_buffers.pop(tgid, None)
        if exec_by is not None and self._has_recvfrom_filter(tgid, exec_by):
            self.recvfrom_watched.add(tgid)
        else:
            self.recvfrom_watched.discard(tgid)
        self.recvfrom_unwatchable.discard(tgid)
        self.recvfrom_flags.pop(tgid, None)
        self.recvfrom_watched_threads.pop(tgid, None)
        self.scratch.forget(tgid)
        for table in (self.pidfds, self.memory):
            descriptor = table.pop(tgid, None)
            if descriptor is not None:
                os.close(descriptor)
        if self.relay is not None:
            self.relay.forget_process(tgid)

    def close(self) -> None:
        for tgid in {*self.pidfds, *self.memory}:
            self.forget_process(tgid)
        if self.relay is not None:
            self.relay.close()
        if self.dns is not None:
            self.dns.close()
        if self.notifier is not None:
            self.notifier.close()

    # -- helpers -----------------------------------------------------------------------

    def _read_sockaddr(self, task: Task | HeldCall, address: int,
                       length: int) -> SockAddr | None:
        if not address or not 2 <= length <= sa_codec.MAX_SOCKADDR:
            return None
        raw = self.read_memory(task, address, length)
        # Programs connect to the same few addresses again and again; SockAddr is frozen.
        decoded = self._sockaddrs.get(raw)
        if decoded is None:
            decoded = sa_codec.decode(raw)
            if decoded is not None:
                if len(self._sockaddrs) >= 256:
                    self._sockaddrs.clear()
                self._sockaddrs[raw] = decoded
        return decoded

    def read_memory(self, task: Task | HeldCall, address: int, size: int) -> bytes:
        """``size`` bytes of the program's memory, through its cached /proc/TID/mem."""
        memory = self.memory.get(task.tgid)
        if memory is None:
            memory = self.memory[task.tgid] = pt.open_memory(task.tid)
        return pt.read_memory_at(memory, address, size)

    def take_socket(self, task: Task | HeldCall, fd: int, family: int = -1) -> socket.socket:
        """The program's socket ``fd`` as a socket object of ours (the same open file).

        ``family``, when the caller knows it, saves asking the kernel (its type is
        still asked: a datagram socket must not be taken for a stream)."""
        if self.relay is not None:  # relay mode must work where pidfd_getfd does not
            raise PidfdGetfdMissing(errno.EPERM, "relay mode does not take program sockets")
        pidfd = self.pidfds.get(task.tgid)
        if pidfd is None:
            pidfd = os.pidfd_open(task.tgid)
            self.pidfds[task.tgid] = pidfd
        try:
            copy = pt.pidfd_getfd(pidfd, fd)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                raise PidfdGetfdMissing(
                    exc.errno,
                    "this kernel has no pidfd_getfd (Linux 5.6+), which streams-run needs "
                    "to take over the program's socket",
                ) from None
            # The main thread gone: ESRCH, or EBADF on kernels that look for the
            # descriptor in its (empty) table, while the calling thread has it.
            leader_gone = task.tid != task.tgid and (
                exc.errno == errno.ESRCH
                or (exc.errno == errno.EBADF and os.path.exists(f"/proc/{task.tid}/fd/{fd}")))
            if not leader_gone:
                raise
            copy = pt.pidfd_getfd(self._thread_pidfd(task), fd)
        try:
            return socket.socket(family, -1, 0, fileno=copy)
        except OSError:
            os.close(copy)
            raise

    def _thread_pidfd(self, task: Task | HeldCall) -> int:
        """A pidfd through which the process's descriptors are reached, for when its main
        thread has exited (pthread_exit) and the process's own pidfd no longer reaches
        them: one on the calling thread, kept in place of the process's."""
        try:
            pidfd = os.pidfd_open(task.tid, pt.PIDFD_THREAD)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            raise OSError(errno.EPERM, "the program's main thread has exited, and this "
                          "kernel (before 6.9) gives no way to its other threads' sockets; "
                          "try --data-path relay") from None
        os.close(self.pidfds.pop(task.tgid))
        self.pidfds[task.tgid] = pidfd
        return pidfd

    def socket_inode(self, task: Task | HeldCall, fd: int) -> int:
        return fd_inode(task.tid, fd)

    # -- initiator side ----------------------------------------------------------------

    def start_native_connects(self, listener: int) -> fastconnect.FastConnect | None:
        """The native connect path on ``listener`` (see fastconnect.py), or None where it
        cannot run and $STREAMS_TRACE_CONNECTS does not insist (the -d log says why)."""
        wanted = fastconnect.choice()  # checked before the program started
        if wanted == "python":
            return None
        try:
            # Without an access point (a listener's conf) or its address (a name that did
            # not resolve), the tunnel's connects are Python's to refuse, with its reason.
            access_point = None
            if self.access_point is not None and self.access_point.is_ip:
                access_point = self.access_point
                self.native_targets = list(self.targets)
            setup = fastconnect.pack_setup(
                self.settings.timeout, tunnel_id_bytes(self.tunnel.tunnel_id),
                self.tunnel.secret, access_point, self.native_targets)
            return fastconnect.FastConnect(listener, setup)
        except fastconnect.Unavailable as exc:
            (log.warning if wanted == "native" else log.debug)(
                "connects are redirected in Python: no native connect path (%s)", exc)
            return None

    def on_native_connect(self, done: fastconnect.Done) -> None:
        """A connect the native path carried out: count it, and its -d line."""
        if done.result == 0:
            self.redirected += 1
        else:
            self.refused += 1
        if not log.isEnabledFor(logging.DEBUG):
            return
        Outcome = fastconnect.Outcome
        if done.outcome is Outcome.UNREACHABLE:
            outcome = f"{Operation.unreachable}: {os.strerror(done.detail)}"
        elif done.outcome is Outcome.IO_FAILED:
            outcome = f"handshake failed: {os.strerror(done.detail)}"
        elif done.outcome is Outcome.HANDSHAKE_FAILED:
            failure = Failure.from_wire(done.detail) or Failure.PEER_CLOSED
            outcome = "handshake failed: " + describe_failure(failure,
                                                              Failure.from_wire(done.peer))
        else:
            outcome = OUTCOME_WORDS[done.outcome]
        if not done.answered:
            outcome += " (the thread had gone)"
        task = self.tracer.tasks.get(done.tid)
        host, port = self.native_targets[done.target]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        log_connect(done.fd, task.tgid if task is not None else tgid_of(done.tid),
                    self.targets[(host, port)], str(SockAddr(family, host, port)),
                    self.access_point, outcome, done.elapsed, done.result, native=True)

    def prepare_connector(self) -> None:
        """Make the next connect's handshake (nonce and all) while no program waits."""
        secret = self.tunnel.secret
        if self.spare_connector is None and secret is not None:
            self.spare_connector = Connector(secret, self.tunnel.tunnel_id)

    def take_connector(self, deadline: float) -> Connector | None:
        """A fresh handshake for one connect ending at ``deadline``; None without a secret."""
        if self.tunnel.secret is None:
            return None
        self.prepare_connector()
        machine, self.spare_connector = self.spare_connector, None
        assert machine is not None
        machine.deadline = deadline
        return machine

    def on_connect(self, call: HeldCall, nr: int, args: tuple[int, ...]) -> None:
        fd, address, length = args[0], args[1], args[2]
        target = self._read_sockaddr(call, address, length)
        if target is not None and target.path in NAME_SERVICE_SOCKETS and self.dns is not None:
            log.debug("dns: process %d asked %s; refused, so it resolves names itself",
                      call.tgid, target.path)
            call.complete(-errno.ECONNREFUSED)
            return
        if target is None or not target.is_ip:
            call.resume()
            return
        if target.port == DNS_PORT and self.dns is not None and target.key not in self.targets:
            if self.relay is not None:
                assert isinstance(call, TracedCall)  # relay mode always stops under ptrace
                self.relay.redirect_dns_connect(call.task, fd, target)
            else:
                self._redirect_dns(call, fd, target)
            return
        name = self.targets.get(target.key)
        if name is None or self.access_point is None:
            call.resume()
            return
        if self.relay is not None:
            assert isinstance(call, TracedCall)
            self.relay.connect(call, fd, target, name)
            return
        ConnectRedirect(self, call, fd, target, name).start()

    def _redirect_dns(self, call: HeldCall, fd: int, nameserver: SockAddr) -> None:
        assert self.dns is not None
        sock = self.take_socket(call, fd)
        if sock.type == socket.SOCK_STREAM:  # DNS over TCP: options use-vc, a retry
            responder = self.dns.address_for(sock.family, nameserver.mapped, sock.type)
            if responder is None:
                sock.close()
                self.refuse_dns(call, nameserver)
                return
            DnsStreamConnect(self, call, fd, sock, nameserver, responder).start()
            return
        try:
            responder = self.dns.address_for(sock.family, nameserver.mapped)
            if sock.type != socket.SOCK_DGRAM:
                call.resume()
                return
            if responder is None:
                self.refuse_dns(call, nameserver)
                return
            try:
                sock.connect(responder)
            except OSError as exc:
                call.complete(-(exc.errno or errno.ECONNREFUSED))
                return
            self.dns.register(sock.getsockname(), nameserver)
        finally:
            sock.close()
        log.debug("dns: queries of process %d to %s go through the tunnel's responder",
                  call.tgid, nameserver)
        call.complete(0)

    def refuse_dns(self, call: HeldCall, nameserver: SockAddr) -> None:
        """A DNS connect the responder cannot take (no loopback address, or no stand-in
        left): refused, as whatever the socket sent would reach the nameserver past the
        responder, queries for the tunnel's names included."""
        log.debug("dns: connect of process %d to %s refused (ECONNREFUSED): the tunnel's "
                  "responder cannot take it", call.tgid, nameserver)
        call.complete(-errno.ECONNREFUSED)

    def _refuse_fast_open(self, task: Task, target: SockAddr | None) -> bool:
        """A TCP Fast Open send (MSG_FASTOPEN: connect, and send with the SYN) to the
        tunnel fails with EOPNOTSUPP (and a -d line): it would connect past the
        redirect. True when it was refused."""
        if target is None or not target.is_ip or target.key not in self.targets:
            return False
        log.debug("send with MSG_FASTOPEN by process %d to %s refused (EOPNOTSUPP): TCP "
                  "Fast Open cannot go through the tunnel; connect first", task.tgid, target)
        self.refused += 1
        self.tracer.complete(task, -errno.EOPNOTSUPP)
        return True

    def on_sendmsg(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        """Stopped only with MSG_FASTOPEN (the filter checks the flags; without a filter
        every sendmsg comes here)."""
        if args[2] & socket.MSG_FASTOPEN:
            header = self.read_memory(task, args[1], 16)  # msghdr: msg_name, msg_namelen
            name, name_length = struct.unpack_from("=QI", header)
            if self._refuse_fast_open(task, self._read_sockaddr(task, name, name_length)):
                return
        self.tracer.resume(task)

    def on_sendto(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        """musl resolves with sendto() to each nameserver, without connect()."""
        buffer, length, address, address_length = args[1], args[2], args[4], args[5]
        nameserver = self._read_sockaddr(task, address, address_length)
        if args[3] & socket.MSG_FASTOPEN and self._refuse_fast_open(task, nameserver):
            return
        if (self.dns is None or nameserver is None or not nameserver.is_ip
                or nameserver.port != DNS_PORT or not 0 < length <= 65535):
            self.tracer.resume(task)
            return
        query = self.read_memory(task, buffer, length)
        if not self.dns.is_ours(query):
            self.tracer.resume(task)  # other names go to the real nameserver, untouched
            return
        # musl sends to &ns[j], its own copy of the nameserver's address for this lookup,
        # and takes only replies from an address in ns[] (1.2.4 and later read them with
        # recvmsg, which is never stopped): point that entry at our stand-in for the
        # nameserver, and both its query and our reply pass. (A buffer used again later
        # is fine too: the stand-in passes other names on to that nameserver.) Resolvers
        # that check replies against a copy of their own, or with recvfrom, are told the
        # nameserver's address instead of the stand-in's there (on_recvfrom).
        stand_in = self.dns.address_for_nameserver(nameserver.family, nameserver)
        if stand_in is None:
            # Sent as it is, the query would leak the tunnel's name to the nameserver.
            log.debug("dns: query of process %d to %s failed (ENOBUFS): no stand-in for "
                      "that nameserver can be made", task.tgid, nameserver)
            self.tracer.complete(task, -errno.ENOBUFS)
            return
        if not self.watch_recvfrom(task):
            return  # the filter goes in first, in place of this sendto, which stops again
        # A sockaddr_in6 may come without its last field (RFC 2133's 24 bytes): the
        # stand-in's scope id is 0, so its first 24 bytes say all.
        encoded = sa_codec.encode(stand_in)[:address_length]
        try:
            original = self.read_memory(task, address, len(encoded))
            # The program's buffer may be read-only (a const sockaddr): written anyway.
            pt.write_memory(task.tid, address, encoded, force=True)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise
            log.debug("dns: query of process %d to %s failed (EFAULT): its address "
                      "cannot be rewritten: %s", task.tgid, nameserver, exc)
            self.tracer.complete(task, -errno.EFAULT)
            return
        self.stand_in_users.add(task.tgid)
        log.debug("dns: query of process %d to %s sent to the tunnel's responder at %s",
                  task.tgid, nameserver, stand_in)

        def sent(info: pt.SyscallInfo) -> None:
            # Noted once the kernel has taken the address: a reply another thread reads
            # meanwhile must not put the nameserver's back before this query is sent.
            self._note_stand_in_buffer(task.tgid, address, encoded, original)
            self.tracer.resume(task)

        self.tracer.run_to_exit(task, sent)

    def watch_recvfrom(self, task: Task) -> bool:
        """True once the process's recvfrom calls that ask for the source stop here (see
        on_recvfrom). The filter the program starts with lets them run, at full speed:
        UDP programs read that way, and only a process that sends to a stand-in needs
        them. Its first such sendto adds a filter for them to the process (all its
        threads; its children and later images inherit it), run in place of the
        stopped sendto, which then stops again: False until then."""
        tgid = task.tgid
        if (self._has_recvfrom_filter(tgid, task.tid) or tgid in self.recvfrom_unwatchable
                or self.tracer.stop_every_syscall):
            return True

        def give_up(reason: str) -> None:
            self.recvfrom_unwatchable.add(tgid)
            self.recvfrom_flags.pop(tgid, None)
            log.warning("process %d: its recvfrom calls cannot be watched (%s); a resolver "
                        "in it that checks where answers come from may not resolve the "
                        "tunnel's names", tgid, reason)

        if not self.scratch.ensure(task, 2, lambda error: give_up(os.strerror(error))):
            return False  # memory for the filter first
        flags = self.recvfrom_flags.get(tgid, RECVFROM_FILTER_FLAGS)
        program, header = self.scratch.acquire(tgid), self.scratch.acquire(tgid)
        try:
            pt.write_memory(task.tid, program, self.recvfrom_filter)
            pt.write_memory(task.tid, header,
                            seccomp.pack_fprog(len(self.recvfrom_filter) // 8, program))
        except OSError:
            self.scratch.release(tgid, program)
            self.scratch.release(tgid, header)
            raise

        def added(result: int) -> None:
            self.scratch.release(tgid, program)
            self.scratch.release(tgid, header)
            if result == 0 and flags & seccomp.SECCOMP_FILTER_FLAG_TSYNC:
                self.recvfrom_watched.add(tgid)
                self.recvfrom_flags.pop(tgid, None)
                log.debug("dns: process %d sent to a stand-in: its recvfrom calls that ask "
                          "for the source stop from now on", tgid)
            elif result == 0:  # this thread only; the next one starts with these flags
                self.recvfrom_watched_threads.setdefault(tgid, set()).add(task.tid)
                log.debug("dns: thread %d of process %d sent to a stand-in: its recvfrom "
                          "calls that ask for the source stop from now on (not all threads "
                          "of the process could take the filter)", task.tid, tgid)
            elif result > 0 and flags & seccomp.SECCOMP_FILTER_FLAG_TSYNC:  # that thread cannot
                self.recvfrom_flags[tgid] = flags & ~seccomp.SECCOMP_FILTER_FLAG_TSYNC
            elif result == -errno.EINVAL and flags & seccomp.SECCOMP_FILTER_FLAG_SPEC_ALLOW:
                self.recvfrom_flags[tgid] = flags & ~seccomp.SECCOMP_FILTER_FLAG_SPEC_ALLOW
            else:
                give_up(os.strerror(-result) if result < 0 else "a thread refused")

        self.tracer.run_instead(
            task, self.tracer.arch.number("seccomp"),
            (seccomp.SECCOMP_SET_MODE_FILTER, flags, header, 0, 0, 0),
            added)
        return False

    def _note_stand_in_buffer(self, tgid: int, address: int, written: bytes,
                              original: bytes) -> None:
        buffers = self.stand_in_buffers.setdefault(tgid, {})
        buffers.pop(address, None)  # noted again, as the newest
        if len(buffers) >= MAX_STAND_IN_BUFFERS:
            del buffers[next(iter(buffers))]  # the oldest
        buffers[address] = (written, original)

    def on_recvfrom(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        """A recvfrom that asks who sent the datagram, in a process watch_recvfrom added
        the filter to (which stops no other).

        A resolver that reads answers with recvfrom checks their source: dnspython
        against its own copy of the nameserver's address, musl before 1.2.4 against
        ns[], the buffer on_sendto pointed at our stand-in. Such a reply from the
        stand-in is reported as the nameserver's, and the program's buffers are put
        back as they were, so both checks pass. Only for processes that sent to a
        stand-in; every other recvfrom runs as it is."""
        address, length_at = args[4], args[5]
        if task.tgid not in self.stand_in_users or not address or not length_at:
            self.tracer.resume(task)
            return
        try:
            (room,) = struct.unpack("=I", self.read_memory(task, length_at, 4))
        except OSError:
            self.tracer.resume(task)  # the kernel says EFAULT
            return
        self.tracer.run_to_exit(task, lambda info: self._received(task, args, room, info))

    def _received(self, task: Task, args: tuple[int, ...], room: int,
                  info: pt.SyscallInfo) -> None:
        assert self.dns is not None
        try:
            if not (info.is_error or info.rval < 0) and room >= 8:
                source = self._read_sockaddr(task, args[4], min(room, sa_codec.MAX_SOCKADDR))
                nameserver = self.dns.stand_in_for.get(source.key) if source else None
                if source is not None and nameserver is not None:
                    as_sent = SockAddr(source.family, nameserver.host, nameserver.port,
                                       mapped=source.family == socket.AF_INET6
                                       and ":" not in nameserver.host,
                                       scope_id=nameserver.scope_id)
                    pt.write_memory(task.tid, args[4], sa_codec.encode(as_sent)[:room])
                    self._restore_stand_in_buffers(task)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return
            log.debug("dns: the source of a reply to process %d is left as is: %s",
                      task.tgid, exc)
        self.tracer.resume(task)

    def _restore_stand_in_buffers(self, task: Task) -> None:
        """Put back the nameserver's address in each buffer on_sendto pointed at a
        stand-in and that still says so (musl before 1.2.4 compares the reply's
        source, now the nameserver's, with them); forget the rest, used since."""
        buffers = self.stand_in_buffers.pop(task.tgid, {})
        for address, (written, original) in buffers.items():
            try:
                if self.read_memory(task, address, len(written)) == written:
                    pt.write_memory(task.tid, address, original, force=True)
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    raise
                continue  # unmapped since: nothing to restore

    # -- listener side -----------------------------------------------------------------

    def on_bind(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        fd, address, length = args[0], args[1], args[2]
        local = self._read_sockaddr(task, address, length)
        if local is not None and local.is_ip and local.port in self.settings.listen_ports:
            if self.relay is not None:
                self.relay.bind(task, fd, local)
                return
            inode = self.socket_inode(task, fd)
            if inode not in self.listeners:
                self.listeners.add(inode)
                log.debug("bind %s by process %d: its connections will be authenticated "
                          "as the tunnel's listener", local, task.tgid)
        self.tracer.resume(task)

    def on_accept(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        if self.relay is not None:
            if self.relay.listener_of_inode and \
                    self.socket_inode(task, args[0]) in self.relay.listener_of_inode:
                self.relay.accept(task, nr, args)
            else:
                self.tracer.resume(task)
            return
        if not self.listeners or self.tunnel.secret is None:
            self.tracer.resume(task)
            return
        if self.socket_inode(task, args[0]) not in self.listeners:
            self.tracer.resume(task)
            return
        room = None  # the address length the program gave: see close_and_restart
        if args[1] and args[2]:
            try:
                room = (args[2], self.read_memory(task, args[2], 4))
            except OSError:
                pass  # the kernel will say EFAULT
        self.tracer.run_to_exit(task, lambda info: self._accepted(task, nr, args, room, info))

    def _accepted(self, task: Task, nr: int, args: tuple[int, ...],
                  room: tuple[int, bytes] | None, info: pt.SyscallInfo) -> None:
        if info.is_error or info.rval < 0:
            self.tracer.resume(task)
            return
        AcceptCheck(self, TracedCall(self.tracer, task), int(info.rval), nr, args, room).start()


class Operation:
    """One connection being set up for a held thread: socket I/O, a deadline, one log line."""

    name = ""  # what the program connects to, for log lines
    unreachable = "access point unreachable"  # what a failed connect_socket means

    def __init__(self, owner: Redirector, call: HeldCall, fd: int) -> None:
        self.owner = owner
        self.loop: Loop = owner.loop
        self.call = call
        self.fd = fd
        self.started = time.monotonic()
        self.deadline = self.started + owner.settings.timeout
        self.sock: socket.socket | None = None
        self.saved_flags: int | None = None
        self.machine: Handshake | None = None
        self.timer: Timer | None = None
        self.finished = False

    def _take(self, family: int = -1) -> socket.socket:
        self.sock = self.owner.take_socket(self.call, self.fd, family)
        return self.sock

    def _hold(self) -> None:
        """Before going back to the loop: the deadline, and an end if the thread dies.
        (Not earlier: the first handshake message goes out before this bookkeeping.)"""
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._on_timeout)
            self.call.on_death.append(self._on_death)

    def _set_nonblocking(self) -> bool:
        """Non-blocking for the supervisor's connect; True if the program's socket was
        blocking. The flag lives on the shared open file, so ``_restore`` puts the
        program's own setting back as soon as the connect is done; the handshake's sends
        and receives use MSG_DONTWAIT instead."""
        assert self.sock is not None
        flags = fcntl.fcntl(self.sock.fileno(), fcntl.F_GETFL)
        if flags & os.O_NONBLOCK:
            return False
        fcntl.fcntl(self.sock.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.saved_flags = flags
        return True

    def _start_handshake(self, machine: Handshake) -> None:
        assert self.sock is not None
        self.machine = machine
        out = machine.start()
        if out:
            self.sock.sendall(out, socket.MSG_DONTWAIT)
        self._restore()  # a connect's non-blocking flag, not needed for MSG_DONTWAIT I/O
        self._hold()
        self.loop.watch(self.sock, selectors.EVENT_READ, self._on_readable)

    def _on_readable(self) -> None:
        assert self.sock is not None and self.machine is not None
        machine = self.machine
        try:
            while machine.state is State.IN_PROGRESS:
                try:
                    data = self.sock.recv(machine.bytes_needed, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                out = machine.receive(data)
                if out:
                    # Small messages on a fresh connection: they fit the send buffer.
                    self.sock.sendall(out, socket.MSG_DONTWAIT)
                    if machine.state is State.IN_PROGRESS:
                        return  # the peer's answer cannot be here yet; the loop calls again
        except OSError as exc:
            self.handshake_done(False, f"handshake failed: {exc.strerror or exc}")
            return
        if machine.state is State.AUTHENTICATED:
            self.handshake_done(True, OUTCOME_WORDS[fastconnect.Outcome.AUTHENTICATED])
        else:
            self.handshake_done(False, f"handshake failed: {machine.failure_text}")

    def _on_timeout(self) -> None:
        self.timer = None
        if self.machine is not None:
            self.machine.check_deadline(self.deadline)
        self.timed_out()

    def _on_death(self) -> None:
        self._release()
        self.finished = True

    def _restore(self) -> None:
        """Put the program's own socket settings back (they live on the shared file)."""
        if self.sock is None:
            return
        if self.saved_flags is not None:
            try:
                fcntl.fcntl(self.sock.fileno(), fcntl.F_SETFL, self.saved_flags)
            except OSError:
                pass
        self.saved_flags = None

    def _release(self) -> None:
        """Put the program's settings back and drop our copy of its socket."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock is not None:
            self.loop.unwatch(self.sock)
            self._restore()
            self.sock.close()
            self.sock = None
        on_death = self.call.on_death
        if self._on_death in on_death:
            on_death.remove(self._on_death)

    def _abandon(self) -> None:
        """Undo the program's socket's connection (a connect still under way is aborted,
        an open one reset), leaving the socket as a refused connect does: unconnected, so
        a retry on it is a fresh connect."""
        if self.sock is not None:
            try:
                pt.disconnect(self.sock.fileno())
            except OSError:
                pass

    def connect_socket(self, destination: tuple) -> None:
        """Connect the program's socket (taken) to ``destination`` as its connect would:
        ``_connected`` once done (a blocking socket waits no longer than its
        SO_SNDTIMEO), else ``finish`` with the error."""
        sock = self.sock
        assert sock is not None
        if self._set_nonblocking():
            self._keep_send_timeout(sock)
        error = sock.connect_ex(destination)
        if error == errno.ENETUNREACH and sock.family == socket.AF_INET6 and \
                str(destination[0]).startswith("::ffff:"):
            # An IPv6-only socket (Go's "tcp6") cannot reach an IPv4 access point;
            # a socket not yet bound or connected may drop that flag, and then can.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                error = sock.connect_ex(destination)
        if error == 0 and _fast_open_deferred(sock):
            error = errno.EINPROGRESS
        if error == errno.EINPROGRESS:
            # A loopback connect is usually done by now: asking again says so (0), says
            # EALREADY while it goes on, or gives its error, in one system call.
            error = sock.connect_ex(destination)
            if error == errno.EISCONN:
                error = 0
        elif error in (0, errno.EISCONN, errno.EALREADY):
            # A fresh socket says EINPROGRESS: this one was connected, or connecting,
            # already (0: a non-blocking connect of its own had finished). Its business:
            # no handshake into its stream, and the kernel's answer.
            self._answer(-error)
            log.debug("connect fd %d of process %d to %s: the socket was connected already; "
                      "the program gets %s", self.fd, self.call.tgid, self.name,
                      errno.errorcode.get(error, "0"))
            return
        if error == 0:
            self._connected()
        elif error == errno.EALREADY:
            self._hold()
            self.loop.watch(sock, selectors.EVENT_WRITE, self._on_writable)
        else:
            self.finish(-error, f"{self.unreachable}: {os.strerror(error)}")

    def _keep_send_timeout(self, sock: socket.socket) -> None:
        seconds, microseconds = TIMEVAL.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, TIMEVAL.size))
        self.wait_no_longer_than(seconds + microseconds / 1e6)

    def wait_no_longer_than(self, send_timeout: float) -> None:
        """A blocking connect waits no longer than its socket's SO_SNDTIMEO (0: none), as
        in the kernel; it then fails with ETIMEDOUT (the kernel says EINPROGRESS and
        connects on in the background, which a connection not yet authenticated must not)."""
        if send_timeout > 0:
            self.deadline = min(self.deadline, self.started + send_timeout)

    def _on_writable(self) -> None:
        assert self.sock is not None
        self.loop.unwatch(self.sock)
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.finish(-error, f"{self.unreachable}: {os.strerror(error)}")
            return
        self._connected()

    def _connected(self) -> None:
        raise NotImplementedError

    def _answer(self, result: int) -> bool:
        """Complete the program's held connect with ``result`` (once: False if it was
        already answered). The program waits on this: its settings back, its connect
        completed, and only then our own clean-up (our copy is not the program's)."""
        if self.finished:
            return False
        self.finished = True
        self._restore()
        self.call.complete(result)
        self._release()
        return True

    def finish(self, result: int, outcome: str) -> None:
        raise NotImplementedError

    def elapsed_ms(self) -> str:
        return f"{(time.monotonic() - self.started) * 1000:.2f} ms"

    def handshake_done(self, ok: bool, outcome: str) -> None:
        raise NotImplementedError

    def timed_out(self) -> None:
        self._abandon()
        self.finish(-errno.ETIMEDOUT, OUTCOME_WORDS[fastconnect.Outcome.TIMED_OUT])


class ConnectRedirect(Operation):
    """A program's connect to the tunnel, carried out by the supervisor on its socket."""

    def __init__(self, owner: Redirector, call: HeldCall, fd: int, target: SockAddr,
                 name: str) -> None:
        super().__init__(owner, call, fd)
        self.target = target
        self.name = name
        assert owner.access_point is not None
        self.access_point: Contact = owner.access_point

    def start(self) -> None:
        try:
            sock = self._take(self.target.family)  # a connect's address is of its socket's family
        except PidfdGetfdMissing as exc:
            log.error("%s", exc.strerror)
            self.finish(-errno.ECONNREFUSED, "refused: " + str(exc.strerror))
            return
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.ENOTSOCK):
                raise
            self.finish(-exc.errno, "not a socket")  # what the kernel would have said
            return
        if sock.type != socket.SOCK_STREAM:
            self._release()
            self.call.resume()
            return
        destination = self._destination(sock.family)
        if destination is None:
            self.finish(-errno.EAFNOSUPPORT, "refused: an IPv4 socket cannot reach an IPv6 "
                        "access point")
            return
        self.connect_socket(destination)

    def _destination(self, family: int) -> tuple | None:
        known = self.owner.destinations
        if family not in known:
            host, port = self.access_point.host, self.access_point.port
            known[family] = (None if family != socket.AF_INET6 and ":" in host
                             else sa_codec.python_address(SockAddr(family, host, port), family))
        return known[family]

    def _connected(self) -> None:
        assert self.sock is not None
        # No TCP_NODELAY needed: each handshake message goes out only once the peer's
        # answer (which acknowledges the one before) is in, so Nagle never holds one back.
        machine = self.owner.take_connector(self.deadline)
        if machine is None:
            self.finish(0, OUTCOME_WORDS[fastconnect.Outcome.CONNECTED_NO_SECRET])
            return
        try:
            # HELLO first, so the access point works on it while we put the program's
            # flags back and do our bookkeeping.
            self._start_handshake(machine)
        except OSError as exc:
            self.handshake_done(False, f"handshake failed: {exc.strerror or exc}")

    def handshake_done(self, ok: bool, outcome: str) -> None:
        if ok:
            self.finish(0, outcome)
        else:
            self._abandon()
            self.finish(-errno.ECONNREFUSED, outcome)

    def finish(self, result: int, outcome: str) -> None:
        if not self._answer(result):
            return
        self.owner.prepare_connector()  # for the next connect, now that this one is answered
        if result == 0:
            self.owner.redirected += 1
        else:
            self.owner.refused += 1
        if log.isEnabledFor(logging.DEBUG):
            log_connect(self.fd, self.call.tgid, self.name, str(self.target), self.access_point,
                        outcome, time.monotonic() - self.started, result)


# The -d words for outcomes that carry no detail, on either path (see log_connect).
OUTCOME_WORDS = {
    fastconnect.Outcome.AUTHENTICATED: "authenticated",
    fastconnect.Outcome.CONNECTED_NO_SECRET: "connected (no LAN secret)",
    fastconnect.Outcome.TIMED_OUT: "timed out",
    fastconnect.Outcome.ABANDONED: "abandoned: streams-run was stopping",
}


def log_connect(fd: int, tgid: int, name: str, target: str, access_point: Contact | None,
                outcome: str, elapsed: float, result: int, native: bool = False) -> None:
    """The -d line of one redirected connect (either path)."""
    log.debug(
        "connect fd %d of process %d to %s (%s) -> initiator access point %s: %s in %.2f ms%s%s",
        fd, tgid, name, target, access_point, outcome, elapsed * 1000,
        "" if result == 0 else f", the program gets {errno.errorcode.get(-result, result)}",
        " (native connect path)" if native else "",
    )


class DnsStreamConnect(Operation):
    """A program's TCP connect to a nameserver, made to the responder's stream listener
    instead, which answers the tunnel's names and forwards the rest to that nameserver."""

    unreachable = "the responder is unreachable"

    def __init__(self, owner: Redirector, call: HeldCall, fd: int, sock: socket.socket,
                 nameserver: SockAddr, responder: tuple) -> None:
        super().__init__(owner, call, fd)
        self.sock = sock
        self.nameserver = nameserver
        self.name = f"nameserver {nameserver}"
        self.responder = responder

    def start(self) -> None:
        self.connect_socket(self.responder)

    def _connected(self) -> None:
        assert self.sock is not None and self.owner.dns is not None
        # Before the program can send a query: the responder looks it up by this address.
        self.owner.dns.register(self.sock.getsockname(), self.nameserver, socket.SOCK_STREAM)
        self.finish(0, "connected to the tunnel's responder")

    def finish(self, result: int, outcome: str) -> None:
        if not self._answer(result):
            return
        log.debug("dns: TCP connect fd %d of process %d to %s: %s in %s%s", self.fd,
                  self.call.tgid, self.nameserver, outcome, self.elapsed_ms(),
                  "" if result == 0
                  else f", the program gets {errno.errorcode.get(-result, result)}")


class AcceptCheck(Operation):
    """Authenticate a connection the program just accepted, before its accept returns."""

    def __init__(self, owner: Redirector, call: TracedCall, fd: int, nr: int,
                 args: tuple[int, ...], room: tuple[int, bytes] | None) -> None:
        super().__init__(owner, call, fd)
        self.task = call.task
        self.nr = nr
        self.args = args
        self.room = room  # (where, what) the accept's address length was at its entry
        self.peer = "peer"

    def start(self) -> None:
        secret = self.owner.tunnel.secret
        assert secret is not None
        try:
            sock = self._take()
            host, port = sock.getpeername()[:2]
            self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            remaining = max(self.deadline - time.monotonic(), 0.001)
            self._start_handshake(Acceptor(secret, self.owner.tunnel.tunnel_id, timeout=remaining))
        except OSError as exc:
            self.handshake_done(False, f"cannot check it: {exc.strerror or exc}")

    def handshake_done(self, ok: bool, outcome: str) -> None:
        if self.finished:
            return
        self.finished = True
        if not ok and self.machine is not None and self.sock is not None:
            # receive() already returned any REJECT; tell the peer we are done.
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if ok:
            self.owner.redirected += 1
            self._restore()
            self.call.resume()  # the program waits on this; clean up after
            self._release()
        else:
            self.owner.refused += 1
            self._release()  # our copy must be closed too, or the peer never sees the end
            self.owner.tracer.close_and_restart(self.task, self.fd, self.nr, self.args,
                                                self.room)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "accept fd %d of process %d from %s: %s in %s%s",
                self.fd, self.task.tgid, self.peer, outcome, self.elapsed_ms(),
                "" if ok else "; closed, the program never sees it",
            )

    def timed_out(self) -> None:
        self.handshake_done(False, "handshake timed out")


TCP_FASTOPEN_CONNECT = 30  # <netinet/tcp.h>; not in Python's socket module


def _fast_open_deferred(sock: socket.socket) -> bool:
    """Whether a connect that said 0 at once only deferred the connection to the first
    send (TCP_FASTOPEN_CONNECT, curl --tcp-fastopen): then start it now, with an
    empty send, and say True; the handshake goes first, not the program's bytes.
    False for a socket that really was connected already (the program's own)."""
    try:
        if not sock.getsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT):
            return False
        sock.send(b"", socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # EINPROGRESS: the SYN is on its way
    except OSError:
        return False
    return False  # sent nothing on a connected socket


def _numeric(contact: Contact | None) -> Contact | None:
    """The access point with its name looked up now, once, before the program starts:
    a lookup on the supervisor's loop would hold every other connect, and an IPv6
    socket cannot be given a name. (Globus gives addresses; a hand-written conf may not.)"""
    if contact is None or contact.is_ip:
        return contact
    try:
        found = socket.getaddrinfo(contact.host, contact.port, type=socket.SOCK_STREAM)
    except OSError as exc:  # its connects will fail, each with a -d line that says why
        log.warning("cannot look up the access point %s: %s", contact, exc)
        return contact
    # IPv4 first, as Globus gives (an IPv6 socket reaches it v4-mapped).
    found.sort(key=lambda each: each[0] != socket.AF_INET)
    address = str(found[0][4][0])
    log.debug("access point %s is %s", contact, address)
    return Contact(address, contact.port)
