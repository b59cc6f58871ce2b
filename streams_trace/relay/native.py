"""The native data pump: drives the ``streams-splice`` helper built from ``native/``.

The helper is a small C program with one epoll loop that carries bytes for
every pair with splice(2), as :class:`~streams_trace.relay.pump.SplicePump`
does in Python. Pairs reach it over an AF_UNIX SOCK_SEQPACKET control socket:
one message per pair, a 16-byte header (op, reserved, id) with both sockets
attached as SCM_RIGHTS; a header alone with the op OP_END_WHEN_SENT asks for
``end_when_sent``. When a pair ends the helper answers with 32 bytes (id,
bytes a->b, bytes b->a, reset). The helper ends when its control socket closes,
so it never outlives this process.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path

from .pump import DoneCallback, close_with_reset, take_for_pump

log = logging.getLogger(__name__)

HELPER_NAME = "streams-splice"
# Where the package build puts the helper (setup.py's build_native command).
HELPER_PATH = Path(__file__).with_name(HELPER_NAME)

# Wire format, native byte order; must match struct add_msg / done_msg in native/.
OP_ADD = 1
OP_END_WHEN_SENT = 2
ADD_MESSAGE = struct.Struct("=IIQ")
DONE_MESSAGE = struct.Struct("=QQQII")
STOP_TIMEOUT = 10.0


class HelperMissing(RuntimeError):
    """The native helper was not built (no C compiler at install time)."""


def helper_path() -> Path | None:
    """The built helper, or None when the install had no C compiler."""
    return HELPER_PATH if os.access(HELPER_PATH, os.X_OK) else None


class NativePump:
    """Carries bytes both ways for many socket pairs in the native helper process."""

    name = "native-splice"

    def __init__(self, helper: Path | None = None, debug: bool = False) -> None:
        helper = helper or helper_path()
        if helper is None:
            raise HelperMissing(f"{HELPER_PATH} is not built")
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [str(helper)]
        # PR_SET_PDEATHSIG fires when the *thread* that started the helper ends,
        # so ask for it only from the main thread, which lives as long as we do.
        if threading.current_thread() is threading.main_thread():
            command.append("--die-with-parent")
        if debug:
            command.append("-d")
        command.append(str(theirs.fileno()))
        try:
            # A session of its own: Ctrl-C on the terminal, or a kill of our process
            # group, is for us (or the traced program), not a reason to drop streams.
            self.process = subprocess.Popen(
                command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            self._control.close()
            raise
        finally:
            theirs.close()
        self._lock = threading.Lock()
        self._callbacks: dict[int, DoneCallback | None] = {}
        self._next_id = 1
        self._closed = False
        self._reader = threading.Thread(
            target=self._read_reports, name="splice-helper", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def active(self) -> int:
        """Pairs still carrying data."""
        with self._lock:
            return len(self._callbacks)

    def add(self, a: socket.socket, b: socket.socket, on_done: DoneCallback | None = None) -> None:
        """Hand two connected sockets to the helper; our copies are closed."""
        with self._lock:
            pair_id = self._next_id
            self._next_id += 1
            self._callbacks[pair_id] = on_done
        header = ADD_MESSAGE.pack(OP_ADD, 0, pair_id)
        take_for_pump(a)
        take_for_pump(b)
        fds = array.array("i", [a.fileno(), b.fileno()])
        try:
            self._control.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as exc:
            # The helper is gone: nobody can carry this pair, so reset both ends.
            log.error("native pump: cannot hand over a connection: %s", exc)
            with self._lock:
                self._callbacks.pop(pair_id, None)
            close_with_reset(a)
            close_with_reset(b)
            if on_done is not None:
                on_done(0, 0, True)
            return
        a.close()
        b.close()

    def end_when_sent(self) -> None:
        """From now on the helper closes each pair once its ``a`` side has finished
        sending (see SplicePump.end_when_sent)."""
        try:
            self._control.send(ADD_MESSAGE.pack(OP_END_WHEN_SENT, 0, 0))
        except OSError as exc:  # the helper is gone: its pairs were reported as lost
            log.debug("native pump: cannot ask the helper to end pairs: %s", exc)

    def close(self) -> None:
        """Stop the helper; it closes every pair it still holds and reports each."""
        if self._closed:
            return
        self._closed = True
        try:
            # Half close: the helper sees end of file but can still report.
            self._control.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._reader.join(STOP_TIMEOUT)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("native pump: helper %d did not stop; killing it", self.process.pid)
            self.process.kill()
            self.process.wait()
        self._control.close()
        if self.process.returncode:
            log.warning("native pump: helper exited with status %d", self.process.returncode)

    def _read_reports(self) -> None:
        while True:
            try:
                data = self._control.recv(DONE_MESSAGE.size)
            except OSError:
                data = b""
            if not data:
                break
            if len(data) != DONE_MESSAGE.size:
                log.warning("native pump: bad report of %d bytes from the helper", len(data))
                continue
            pair_id, forward, backward, reset, _ = DONE_MESSAGE.unpack(data)
            with self._lock:
                on_done = self._callbacks.pop(pair_id, None)
            if on_done is not None:
                try:
                    on_done(forward, backward, bool(reset))
                except Exception:
                    log.exception("native pump: callback for pair %d failed", pair_id)
        # The helper has gone: pairs it never reported ended with it.
        with self._lock:
            lost = list(self._callbacks.values())
            self._callbacks.clear()
        if lost and not self._closed:
            log.error("native pump: helper ended with %d connections open", len(lost))
        for on_done in lost:
            if on_done is not None:
                on_done(0, 0, True)
