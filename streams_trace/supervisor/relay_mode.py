"""Relay mode: the data path for kernels (or sites) where pidfd_getfd is missing or denied.

The supervisor cannot touch the program's sockets, so it moves the program's
syscalls instead, and a pump (the native splice helper, else the Python one)
carries the bytes:

- Initiator side: the supervisor connects to the access point and runs the
  handshake while the program's thread is held in its connect; then the
  connect runs with its address argument pointing at a PRIVATE copy of a
  sockaddr (a loopback port of the supervisor, open for this one connect) in
  scratch memory the supervisor mapped into the program. The program's own
  buffer is never written, and the registers are put back when the syscall
  returns. The accepted connection and the access point connection go to the
  pump.
- Listener side: the program's bind is moved (the same way) to a private
  loopback port; the supervisor listens on the address the program asked for,
  authenticates each connection from the access point, connects to the
  private port and hands the pair to the pump. The program's accept on that
  socket is checked: a connection that did not come from the supervisor is
  closed inside the program and never seen.
- Names: a DNS connect goes to the responder's stand-in for its nameserver the same way
  (a private sockaddr); musl's sendto has its own copy of the address rewritten, and a
  reply's source is told back at recvfrom, as in the direct path.

Scratch memory: see ``scratch``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..handshake import Acceptor
from ..relay.pump import close_with_reset
from ..trace import arch as archmod
from ..trace import ptraceapi as pt
from ..trace import sockaddr as sa_codec
from ..trace.procfs import descriptor_blocks, socket_in_use
from ..trace.sockaddr import SockAddr
from .loop import Loop, Timer
from .redirect import TIMEVAL, ConnectRedirect, Operation, Redirector
from .tracer import Task, TracedCall

if TYPE_CHECKING:
    from ..relay import Pump

log = logging.getLogger("streams_trace.run")

ADDRLEN_OFFSET = 120  # where a scratch slot keeps an accept's socklen_t
PRIVATE_CONNECT_RETRY = 0.02  # the program may bind a moment before it listens
DRAIN_TIMEOUT = 5.0  # at the end, how long relayed connections may take to finish


@functools.cache
def _ipv6_loopback_usable() -> bool:
    """Whether ::1 can be bound here: not where IPv6 is disabled (by sysctl, or at boot)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def loopback_for(address: SockAddr, port: int) -> SockAddr:
    """A loopback sockaddr of the same kind as ``address`` (v4-mapped stays v4-mapped).

    Where IPv6 is disabled an IPv6 socket can still be dual-stack (a server binding
    [::] serves IPv4), so its twin is then 127.0.0.1, v4-mapped, instead of ::1."""
    if address.family == socket.AF_INET6 and not address.mapped and _ipv6_loopback_usable():
        return SockAddr(socket.AF_INET6, "::1", port)
    return SockAddr(address.family, "127.0.0.1", port, mapped=address.family == socket.AF_INET6)


def own_socket_for(address: SockAddr) -> socket.socket:
    """A supervisor socket that can listen on or connect to ``address``'s loopback twin."""
    if loopback_for(address, 0).host == "::1":
        return socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


class ExpectedPeers:
    """Source address of each connection the supervisor made to a private port -> its
    operation: a relayed listening program's accept lets in only these.

    Shared with the pump's thread, which forgets a pair's entry when it ends (a lock:
    between its look and its removal, the loop may give the same source port to a
    new connection, whose entry must stay)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: dict[tuple[str, int], object] = {}

    def add(self, source: tuple[str, int], owner: object) -> None:
        with self._lock:
            self._peers[source] = owner

    def take(self, source: tuple[str, int]) -> bool:
        """Whether ``source`` is expected; an accepted connection is expected once."""
        with self._lock:
            return self._peers.pop(source, None) is not None

    def forget(self, source: tuple[str, int], owner: object) -> None:
        """Drop ``owner``'s entry, and not one that came since for the same address."""
        with self._lock:
            if self._peers.get(source) is owner:
                del self._peers[source]


class Relay:
    """The relay-mode half of the policy; the Redirector hands it stopped syscalls."""

    def __init__(self, owner: Redirector, loop: Loop, pump_factory: Callable[[], Pump]) -> None:
        self.owner = owner
        self.tracer = owner.tracer
        self.loop = loop
        self.scratch = owner.scratch  # shared with the redirect's own uses
        self._pump_factory = pump_factory
        self._pump: Pump | None = None
        self.listeners: dict[tuple[int, str, int], TunnelListener] = {}
        self.listener_of_inode: dict[int, TunnelListener] = {}
        self.expected_peers = ExpectedPeers()
        self.socket_types: dict[int, int] = {}  # socket inode -> SO_TYPE, just learned
        self.send_timeouts: dict[int, float] = {}  # socket inode -> SO_SNDTIMEO (s), likewise
        self.relayed = 0

    @property
    def pump(self) -> Pump:
        if self._pump is None:  # started on first use: `streams-run TUNNEL true` needs none
            self._pump = self._pump_factory()
            log.debug("relay: data pump %s carries relayed connections", self._pump.name)
        return self._pump

    def close(self) -> None:
        for listener in list(self.listeners.values()):
            listener.close()
        if self._pump is not None:
            # The program may have written its last bytes just before it ended: let the
            # pump carry what the sockets still hold. Its side of each pair (a) is over;
            # the far side may keep an idle connection open, and is not waited for.
            self._pump.end_when_sent()
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while self._pump.active and time.monotonic() < deadline:
                time.sleep(0.01)
            self._pump.close()

    def forget_process(self, tgid: int) -> None:
        for listener in list(self.listeners.values()):
            if listener.owner_tgid == tgid:
                # A child that inherited the program's socket (or the new image after
                # an exec) may go on accepting on it.
                self.still_held(listener)

    def still_held(self, listener: TunnelListener) -> bool:
        """Whether a traced process still holds the program's socket behind ``listener``.

        The tunnel port stays while one does; when none does, the supervisor closes
        its listener too, so the port is free again, as the program left it."""
        holder = self._holder_of(listener)
        if holder is not None:
            listener.owner_tgid = holder
            return True
        listener.close()
        if self.listeners.get(listener.key) is listener:
            del self.listeners[listener.key]
        for inode in [inode for inode, each in self.listener_of_inode.items()
                      if each is listener]:
            del self.listener_of_inode[inode]
        return False

    def _holder_of(self, listener: TunnelListener) -> int | None:
        """A traced process that still holds the program's socket behind ``listener``."""
        wanted = {f"socket:[{inode}]" for inode, each in self.listener_of_inode.items()
                  if each is listener}
        for pid in sorted({task.tgid for task in self.tracer.tasks.values()}):
            try:
                descriptors = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for descriptor in descriptors:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{descriptor}") in wanted:
                        return pid
                except OSError:
                    continue
        return None

    # -- scratch memory and private arguments --------------------------------------------

    def run_with_private(self, task: Task, data: bytes, replace: Callable[[int], dict[int, int]],
                         on_exit: Callable[[pt.SyscallInfo, int], None]) -> None:
        """Run the stopped syscall with some arguments pointing at ``data`` in a scratch slot.

        ``replace(slot)`` gives {argument index: new value}; the arguments are put back
        at the syscall's exit, then ``on_exit(info, slot)`` runs (and must resume the
        thread); the slot is free again after it.
        """
        slot = self.scratch.acquire(task.tgid)
        try:
            pt.write_memory(task.tid, slot, data)
            regs = pt.get_registers(task.tid)
            saved = archmod.syscall_args(regs)
            args = list(saved)
            for index, value in replace(slot).items():
                args[index] = value
            archmod.set_syscall_args(regs, tuple(args))
            pt.set_registers(task.tid, regs)
        except OSError:
            self.scratch.release(task.tgid, slot)
            raise

        def at_exit(info: pt.SyscallInfo) -> None:
            try:
                regs = pt.get_registers(task.tid)
                archmod.set_syscall_args(regs, saved)
                pt.set_registers(task.tid, regs)
                on_exit(info, slot)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
            finally:
                self.scratch.release(task.tgid, slot)

        self.tracer.run_to_exit(task, at_exit)

    # -- names -------------------------------------------------------------------------

    def _responder(self, task: Task, nameserver: SockAddr) -> SockAddr | None:
        """The responder that stands in for ``nameserver``; None when the task was refused,
        or will stop here again (scratch memory mapped first)."""
        dns = self.owner.dns
        assert dns is not None
        if not self.scratch.ensure(task):
            return None
        responder = dns.address_for_nameserver(nameserver.family, nameserver)
        if responder is None:
            self.owner.refuse_dns(TracedCall(self.tracer, task), nameserver)
        return responder

    def redirect_dns_connect(self, task: Task, fd: int, nameserver: SockAddr) -> None:
        # A datagram socket goes to the responder's socket for this nameserver, a stream
        # one (DNS over TCP: options use-vc, a retry) to its listener for it.
        kind = self._socket_type(task, fd)
        if kind is None:
            return
        if kind not in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            self.tracer.resume(task)
            return
        responder = self._responder(task, nameserver)
        if responder is None:
            return
        data = sa_codec.encode(responder)
        log.debug("dns: queries of process %d to %s go through the tunnel's responder",
                  task.tgid, nameserver)
        self.run_with_private(task, data, lambda slot: {1: slot, 2: len(data)},
                              lambda info, slot: self.tracer.resume(task))

    def _only_for(self, task: Task, fd: int, wanted: int) -> bool:
        """True when the program's ``fd`` is a socket of type ``wanted``. Else the
        stopped syscall runs as it is, or (while its type is asked in the program)
        comes back here later."""
        kind = self._socket_type(task, fd)
        if kind is None:
            return False
        if kind != wanted:
            self.tracer.resume(task)
            return False
        return True

    def _socket_type(self, task: Task, fd: int) -> int | None:
        """SO_TYPE of the program's ``fd`` (-1: not a socket one can ask), or None when it
        is being asked now: the program's syscall then runs again, and comes back here."""
        inode = self.owner.socket_inode(task, fd)
        kind = self.socket_types.pop(inode, None)
        if kind is None:
            self._learn_type(task, fd, inode)
        return kind

    def _learn_type(self, task: Task, fd: int, inode: int) -> None:
        """getsockopt(fd, SO_TYPE) run in the program in place of its syscall."""

        def learned(value: bytes | None) -> None:
            # -1: not a socket one can ask (the kernel will say so to the connect)
            self.socket_types[inode] = struct.unpack("=i", value)[0] if value else -1

        self._ask_option(task, fd, socket.SO_TYPE, 4, learned)

    def _send_timeout(self, task: Task, fd: int) -> float | None:
        """The SO_SNDTIMEO that bounds a blocking connect on the program's ``fd`` in
        seconds (0: none, or not a blocking socket), or None when it is being asked now:
        the program's syscall then runs again, and comes back here."""
        try:
            inode = self.owner.socket_inode(task, fd)
            timeout = self.send_timeouts.pop(inode, None)  # just asked: taken either way
            if not descriptor_blocks(task.tid, fd):
                return 0.0
        except OSError:
            return 0.0  # the connect will find out what is wrong with it
        if timeout is None:

            def learned(value: bytes | None) -> None:
                seconds, microseconds = TIMEVAL.unpack(value) if value else (0, 0)
                self.send_timeouts[inode] = seconds + microseconds / 1e6

            self._ask_option(task, fd, socket.SO_SNDTIMEO, TIMEVAL.size, learned)
        return timeout

    def _ask_option(self, task: Task, fd: int, option: int, size: int,
                    learned: Callable[[bytes | None], None]) -> None:
        """getsockopt(fd, SOL_SOCKET, option) run in the program in place of its syscall;
        ``learned`` gets the value's ``size`` bytes (None when the kernel refused), and
        the program's syscall then runs again."""
        if not self.scratch.ensure(task):
            return
        slot = self.scratch.acquire(task.tgid)
        try:
            pt.write_memory(task.tid, slot, bytes(size) + struct.pack("=I", size))
        except OSError:
            self.scratch.release(task.tgid, slot)
            raise

        def returned(result: int) -> None:
            try:
                learned(pt.read_memory(task.tid, slot, size) if result == 0 else None)
            except OSError:
                learned(None)
            finally:
                self.scratch.release(task.tgid, slot)

        self.tracer.run_instead(
            task, self.tracer.arch.number("getsockopt"),
            (fd, socket.SOL_SOCKET, option, slot, slot + size, 0), returned)

    # -- initiator side ----------------------------------------------------------------

    def connect(self, call: TracedCall, fd: int, target: SockAddr, name: str) -> None:
        # The tunnel connection comes before the program's connect runs: first make sure
        # that connect can succeed, or the listening side would see a connection for
        # nothing. A bad descriptor, not a socket, or one connected (or connecting)
        # already: the kernel gives the program its own answer.
        try:
            in_use = socket_in_use(call.tid, fd)
        except OSError:
            in_use = True
        if in_use:
            call.resume()
            return
        if not self.scratch.ensure(call.task):
            return
        send_timeout = self._send_timeout(call.task, fd)
        if send_timeout is None:
            return  # asked in the program first; its connect comes back here
        redirect = RelayConnect(self.owner, self, call, fd, target, name)
        redirect.wait_no_longer_than(send_timeout)  # as a blocking connect in the kernel
        redirect.start()

    # -- listener side -----------------------------------------------------------------

    def bind(self, task: Task, fd: int, local: SockAddr) -> None:
        if not self.scratch.ensure(task):
            return
        # Only a stream socket is the tunnel's listener: a UDP socket on the same port
        # (DNS servers, iperf3 -u) binds as it asked, and must not take the private port.
        if not self._only_for(task, fd, socket.SOCK_STREAM):
            return
        key = TunnelListener.key_of(local)
        listener = self.listeners.get(key)
        created = listener is None
        if listener is None:
            try:
                listener = TunnelListener(self, local, task.tgid)
            except OSError as exc:  # the program's own bind would have failed the same way
                self.tracer.complete(task, -(exc.errno or errno.EADDRINUSE))
                return
        try:
            inode = self.owner.socket_inode(task, fd)
            # A private port: the kernel picks one, we give it back, the program binds it.
            # The probe stays bound until the last moment; what remains is the gap from
            # its close to the program's bind: a process binding that very port then
            # makes the program's bind fail (EADDRINUSE), which ``bound`` cleans up.
            with own_socket_for(local) as probe:
                probe.bind(sa_codec.python_address(loopback_for(local, 0), probe.family))
                private = loopback_for(local, probe.getsockname()[1])
                data = sa_codec.encode(private)
        except OSError:
            if created:
                listener.close()  # not watched and bound with no program socket behind it
            raise

        def bound(info: pt.SyscallInfo, slot: int) -> None:
            assert listener is not None
            if info.is_error or info.rval < 0:
                if created:
                    listener.close()
                log.debug("bind %s by process %d: the private port %s failed: %s", local,
                          task.tgid, private, os.strerror(-int(info.rval)))
            else:
                self.listeners[key] = listener
                listener.private = private
                self.listener_of_inode[inode] = listener
                log.debug("bind %s by process %d: moved to the private port %s; the "
                          "supervisor listens on %s and relays authenticated connections",
                          local, task.tgid, private, local)
            self.tracer.resume(task)

        try:
            self.run_with_private(task, data, lambda slot: {1: slot, 2: len(data)}, bound)
        except OSError:
            if created:
                listener.close()
            raise

    def accept(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        """The program accepts on a relayed socket: let only the supervisor's connections in."""
        if not self.scratch.ensure(task):
            return
        address_pointer, length_pointer = args[1], args[2]
        data = bytes(ADDRLEN_OFFSET) + struct.pack("=I", ADDRLEN_OFFSET)

        def accepted(info: pt.SyscallInfo, slot: int) -> None:
            if info.is_error or info.rval < 0:
                self.tracer.resume(task)
                return
            (length,) = struct.unpack("=I", pt.read_memory(task.tid, slot + ADDRLEN_OFFSET, 4))
            raw = pt.read_memory(task.tid, slot, min(length, ADDRLEN_OFFSET))
            peer = sa_codec.decode(raw)
            if peer is not None and self.expected_peers.take(peer.key):
                # Only now give the program what it asked for: a refused connection's
                # length would be taken for the buffer's room by the restarted accept.
                if address_pointer and length_pointer:
                    (room,) = struct.unpack("=I", pt.read_memory(task.tid, length_pointer, 4))
                    pt.write_memory(task.tid, address_pointer, raw[:room])
                    pt.write_memory(task.tid, length_pointer, struct.pack("=I", length))
                self.tracer.resume(task)
                return
            log.debug("accept fd %d of process %d: a connection from %s did not come "
                      "through the supervisor; closed inside the program", int(info.rval),
                      task.tgid, peer)
            self.owner.refused += 1
            self.tracer.close_and_restart(task, int(info.rval), nr, args)

        self.run_with_private(
            task, data, lambda slot: {1: slot, 2: slot + ADDRLEN_OFFSET}, accepted)


class RelayConnect(ConnectRedirect):
    """A program's connect: access point and handshake first, then a private loopback hop."""

    def __init__(self, owner: Redirector, relay: Relay, call: TracedCall, fd: int,
                 target: SockAddr, name: str) -> None:
        super().__init__(owner, call, fd, target, name)
        self.task = call.task  # relay mode works on the stopped thread itself
        self.relay = relay
        self.entry: socket.socket | None = None  # the private loopback port for this connect
        self.program_side: socket.socket | None = None
        self.access_socket: socket.socket | None = None

    def _take(self, family: int = -1) -> socket.socket:
        # Not the program's socket: one of ours, of the access point's family.
        own_family = socket.AF_INET6 if ":" in self.access_point.host else socket.AF_INET
        sock = socket.socket(own_family, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.sock = sock
        self.timer = self.loop.call_at(self.deadline, self._on_timeout)
        self.task.on_death.append(self._on_death)
        return sock

    def finish(self, result: int, outcome: str) -> None:
        if self.finished:
            return
        if result != 0:
            super().finish(result, outcome)
            return
        # Authenticated: keep the access point connection, let the program connect to us.
        if self.sock is not None:
            self.loop.unwatch(self.sock)
        self.access_socket, self.sock = self.sock, None
        self.finished = True
        self._release()
        self.task.on_death.append(self._on_death)  # until the program's connect returns
        try:
            self._enter_program(outcome)
        except OSError as exc:
            self._drop()
            if exc.errno != errno.ESRCH:
                raise

    def _enter_program(self, outcome: str) -> None:
        entry = own_socket_for(self.target)
        self.entry = entry
        entry.bind(sa_codec.python_address(loopback_for(self.target, 0), entry.family))
        entry.listen(8)
        entry.setblocking(False)
        private = loopback_for(self.target, entry.getsockname()[1])
        data = sa_codec.encode(private)

        def returned(info: pt.SyscallInfo, slot: int) -> None:
            if self._on_death in self.task.on_death:
                self.task.on_death.remove(self._on_death)
            result = int(info.rval)
            if result not in (0, -errno.EINPROGRESS):
                self._log(f"{outcome}, but the program's connect to the relay failed: "
                          f"{os.strerror(-result)}")
                self._drop()
                self.owner.tracer.resume(self.task)
                return
            self.owner.tracer.resume(self.task)
            self._accept_program(outcome)

        self.relay.run_with_private(self.task, data, lambda slot: {1: slot, 2: len(data)},
                                    returned)

    def _accept_program(self, outcome: str) -> None:
        assert self.entry is not None
        entry = self.entry
        timer: list[Timer] = []

        def take() -> None:
            try:
                conn, _ = entry.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._log(f"{outcome}, but the relay lost the program's connection: {exc}")
                self._drop()
                return
            # One connect, one connection: anything else queued is an intruder.
            intruders = 0
            while True:
                try:
                    extra, _ = entry.accept()
                except OSError:
                    break
                extra.close()
                intruders += 1
            self.loop.unwatch(entry)
            if timer:
                timer[0].cancel()
            entry.close()
            self.entry = None
            if intruders:
                conn.close()
                self._log(f"{outcome}, but {intruders} other connection(s) raced the program "
                          "to its private relay port; all closed")
                self._drop()
                return
            access = self.access_socket
            assert access is not None
            self.access_socket = None
            conn.setblocking(False)
            self.owner.redirected += 1
            self.relay.relayed += 1
            local = conn.getsockname()
            self._log(f"{outcome}, relayed through {_text(local)}")
            self.relay.pump.add(conn, access, self._pair_done)  # the program's side first

        def give_up() -> None:
            self.loop.unwatch(entry)
            self._log(f"{outcome}, but the program's connection never reached the relay")
            self._drop()

        self.loop.watch(entry, selectors.EVENT_READ, take)
        timer.append(self.loop.call_at(max(self.deadline, time.monotonic() + 1), give_up))
        take()

    def _pair_done(self, to_access: int, to_program: int, reset: bool) -> None:
        log.debug("relayed connection of process %d to %s ended: %d bytes out, %d in%s",
                  self.task.tgid, self.name, to_access, to_program, ", reset" if reset else "")

    def _drop(self) -> None:
        for sock in (self.entry, self.access_socket):
            if sock is not None:
                self.loop.unwatch(sock)
                sock.close()
        self.entry = self.access_socket = None

    def _on_death(self) -> None:
        super()._on_death()
        self._drop()

    def _log(self, outcome: str) -> None:
        log.debug("connect fd %d of process %d to %s (%s) -> initiator access point %s: "
                  "%s in %s", self.fd, self.task.tgid, self.name, self.target,
                  self.access_point, outcome, self.elapsed_ms())


class TunnelListener:
    """The supervisor's socket on the tunnel's listener address, in front of a private port."""

    def __init__(self, relay: Relay, local: SockAddr, owner_tgid: int) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.local = local
        self.key = self.key_of(local)
        self.owner_tgid = owner_tgid
        self.private: SockAddr | None = None
        sock = socket.socket(socket.AF_INET6 if local.family == socket.AF_INET6
                             else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sa_codec.python_address(local, sock.family))
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.loop.watch(sock, selectors.EVENT_READ, self._on_connection)

    @staticmethod
    def key_of(local: SockAddr) -> tuple[int, str, int]:
        """Its key in Relay.listeners: one listener per address the program binds."""
        return (local.family, local.host, local.port)

    def _on_connection(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("relay listener %s: out of file descriptors", self.local)
                return
            conn.setblocking(False)
            ListenerRelay(self, conn, peer).start()

    def close(self) -> None:
        self.loop.unwatch(self.sock)
        self.sock.close()


class ListenerRelay(Operation):
    """One connection from the access point: authenticate, connect the private port, pump."""

    def __init__(self, listener: TunnelListener, conn: socket.socket, peer: tuple) -> None:
        relay = listener.relay
        # No program thread waits on this one: a placeholder that nobody resumes.
        super().__init__(relay.owner, TracedCall(relay.tracer, Task(0, 0)), conn.fileno())
        self.listener = listener
        self.relay = relay
        self.sock = conn
        self.peer = _text(peer)
        self.inner: socket.socket | None = None
        self.inner_address: tuple[str, int] | None = None  # its source, while expected
        self.inner_timer: Timer | None = None
        self.accepted: str | None = None  # the handshake's outcome once it let the peer in

    def start(self) -> None:
        self.timer = self.loop.call_at(self.deadline, self._on_timeout)
        secret = self.owner.tunnel.secret
        if secret is None:
            self.handshake_done(True, "accepted (no LAN secret)")
            return
        remaining = max(self.deadline - time.monotonic(), 0.001)
        try:
            self._start_handshake(Acceptor(secret, self.owner.tunnel.tunnel_id,
                                           timeout=remaining))
        except OSError as exc:
            self.handshake_done(False, f"handshake failed: {exc.strerror or exc}")

    def handshake_done(self, ok: bool, outcome: str) -> None:
        if self.finished:
            return
        if not ok:
            self.finished = True
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._release()
            self.owner.refused += 1
            self._log(outcome + "; closed, the program never sees it")
            return
        if self.sock is not None:
            self.loop.unwatch(self.sock)
        self.accepted = outcome
        self._connect_inner(outcome)

    def _connect_inner(self, outcome: str) -> None:
        private = self.listener.private
        if private is None:
            self._fail(outcome + ", but the program has no private port")
            return
        inner = self.inner = own_socket_for(private)
        inner.setblocking(False)
        try:
            inner.bind(sa_codec.python_address(loopback_for(private, 0), inner.family))
            self.inner_address = sa_codec.address_key(inner.getsockname())
            self.relay.expected_peers.add(self.inner_address, self)
            error = inner.connect_ex(sa_codec.python_address(private, inner.family))
        except OSError as exc:
            self._drop_inner()
            self._fail(f"{outcome}, but the private port failed: {exc}")
            return
        # A loopback connect is settled by the time connect returns, though it says
        # EINPROGRESS: look now, and wait only when it really is still on its way.
        if error == errno.EINPROGRESS and _writable_now(inner):
            error = inner.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error == errno.EINPROGRESS:
            self.loop.watch(inner, selectors.EVENT_WRITE, lambda: self._inner_settled(
                outcome, inner.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
            return
        self._inner_settled(outcome, error)

    def _inner_settled(self, outcome: str, error: int) -> None:
        """The connect to the program's private port succeeded (0) or failed (errno)."""
        inner, local, private = self.inner, self.inner_address, self.listener.private
        assert inner is not None and local is not None
        self.loop.unwatch(inner)
        if error:
            self._drop_inner()
            if error != errno.ECONNREFUSED:
                self._fail(f"{outcome}, but the program's private port {private} failed: "
                           f"{os.strerror(error)}")
            elif not self.relay.still_held(self.listener):
                self._fail(f"{outcome}, but the program no longer listens on "
                           f"{self.listener.local}; the supervisor lets go of it too")
            elif time.monotonic() + PRIVATE_CONNECT_RETRY < self.deadline:
                # Bound but not listening yet: try again shortly.
                self.inner_timer = self.loop.call_at(time.monotonic() + PRIVATE_CONNECT_RETRY,
                                                     lambda: self._connect_inner(outcome))
            else:
                self._fail(f"{outcome}, but the program never listened on its private "
                           f"port {private}")
            return
        self.finished = True
        conn = self.sock
        self.sock = self.inner = None  # the pump's now
        self._release()
        assert conn is not None
        self.owner.redirected += 1
        self.relay.relayed += 1
        self._log(f"{outcome}, relayed to the program at {private} from {_text(local)}")
        self.relay.pump.add(inner, conn, self._pair_done)  # the program's side first

    def _drop_inner(self) -> None:
        """Give up the connection to the private port (it failed, or never came)."""
        if self.inner is not None:
            self.loop.unwatch(self.inner)
            self.inner.close()
            self.inner = None
        if self.inner_address is not None:
            self.relay.expected_peers.forget(self.inner_address, self)
        self.inner_address = None

    def _fail(self, outcome: str) -> None:
        self.finished = True
        self.owner.refused += 1
        if self.accepted is not None and self.sock is not None:
            # The far side passed the handshake: an orderly end would pass for a
            # complete, empty reply.
            self.loop.unwatch(self.sock)
            close_with_reset(self.sock)
            self.sock = None
        self._release()
        self._log(outcome)

    def timed_out(self) -> None:
        if self.inner_timer is not None:
            self.inner_timer.cancel()
            self.inner_timer = None
        self._drop_inner()
        if self.accepted is not None:
            # The handshake is done; the program's private port never took the connection.
            self._fail(f"{self.accepted}, but the connect to the program's private port "
                       f"{self.listener.private} timed out")
            return
        self.handshake_done(False, "handshake timed out")

    def _pair_done(self, to_access: int, to_program: int, reset: bool) -> None:
        # Not accepted by the program, it can never be now: forget its source address,
        # or a local process that bound it next would be let in unauthenticated.
        # (Only our own entry: a new connection may have the same source port by now.)
        if self.inner_address is not None:
            self.relay.expected_peers.forget(self.inner_address, self)
        log.debug("relayed connection from %s ended: %d bytes in, %d out%s", self.peer,
                  to_program, to_access, ", reset" if reset else "")

    def _log(self, outcome: str) -> None:
        log.debug("accept fd %d of the relay on %s from %s: %s in %s", self.fd,
                  self.listener.local, self.peer, outcome, self.elapsed_ms())


def _writable_now(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


def _text(address: tuple) -> str:
    host, port = sa_codec.address_key(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
