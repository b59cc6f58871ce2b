"""Data paths: the pumps that carry bytes between two connected sockets.

Two pumps with one interface (``add(a, b, on_done)``, ``close()``, ``active``,
``name``): the native helper built from ``native/`` (:mod:`.native`) and the
pure-Python splice pump (:mod:`.pump`) that stands in where no C compiler was
present at install time. :func:`best_pump` picks one.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Protocol

from .pump import DoneCallback, SplicePump

log = logging.getLogger(__name__)

# auto (default): the native helper when built; native: it or an error; python: never it.
PUMP_ENV = "STREAMS_TRACE_PUMP"
CHOICES = ("auto", "native", "python")


class Pump(Protocol):
    name: str

    @property
    def active(self) -> int: ...

    def add(
        self, a: socket.socket, b: socket.socket, on_done: DoneCallback | None = None
    ) -> None: ...

    def close(self) -> None: ...


def best_pump(choice: str | None = None) -> Pump:
    """The native pump when its helper is built, else the Python splice pump.

    ``choice`` (else $STREAMS_TRACE_PUMP, else "auto") forces one; the debug
    log says which pump runs and why.
    """
    from ..errors import UsageError
    from .native import HelperMissing, NativePump, helper_path

    choice = (choice or os.environ.get(PUMP_ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise UsageError(f"{PUMP_ENV} must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "python":
        log.debug("data pump: python-splice (asked for by %s=python)", PUMP_ENV)
        return SplicePump()
    helper = helper_path()
    if helper is None:
        if choice == "native":
            raise UsageError(
                f"{PUMP_ENV}=native but the native helper is not built "
                "(reinstall streams-trace where a C compiler is present)"
            )
        log.debug(
            "data pump: python-splice (the native helper was not built: "
            "no C compiler at install time)"
        )
        return SplicePump()
    try:
        pump = NativePump(helper)
    except (OSError, HelperMissing) as exc:
        if choice == "native":
            raise UsageError(f"cannot start the native helper {helper}: {exc}") from None
        log.debug("data pump: python-splice (the native helper %s did not start: %s)", helper, exc)
        return SplicePump()
    log.debug("data pump: native-splice (helper %s, pid %d)", helper, pump.pid)
    return pump
