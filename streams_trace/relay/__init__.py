"""Data paths: the pumps that carry bytes between two connected sockets.

Two pumps with one interface (``add(a, b, on_done)``, ``end_when_sent()``,
``close()``, ``active``, ``name``): the native helper built from ``native/``
(:mod:`.native`) and the pure-Python splice pump (:mod:`.pump`) that stands in
where no C compiler was present at install time. :func:`best_pump` picks one.
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

    def end_when_sent(self) -> None: ...

    def close(self) -> None: ...


def pump_choice(choice: str | None = None) -> tuple[str, str]:
    """Which pump ``best_pump`` would start, and why; UsageError for an impossible choice.

    ``choice`` is auto, native or python (else $STREAMS_TRACE_PUMP, else auto).
    Cheap: it starts nothing, so callers can check before they commit to a pump.
    """
    from ..errors import UsageError
    from .native import helper_path

    choice = (choice or os.environ.get(PUMP_ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise UsageError(f"{PUMP_ENV} must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "python":
        return SplicePump.name, f"asked for by {PUMP_ENV}=python"
    helper = helper_path()
    if helper is None:
        if choice == "native":
            raise UsageError(
                f"{PUMP_ENV}=native but the native helper is not built "
                "(reinstall streams-trace where a C compiler is present)"
            )
        return SplicePump.name, "the native helper was not built: no C compiler at install time"
    return "native-splice", f"helper {helper}"


def best_pump(choice: str | None = None) -> Pump:
    """The native pump when its helper is built, else the Python splice pump.

    ``choice`` (else $STREAMS_TRACE_PUMP, else "auto") forces one; the debug
    log says which pump runs and why.
    """
    from ..errors import UsageError
    from .native import HelperMissing, NativePump, helper_path

    name, why = pump_choice(choice)
    if name == SplicePump.name:
        log.debug("data pump: %s (%s)", name, why)
        return SplicePump()
    helper = helper_path()
    assert helper is not None
    choice = (choice or os.environ.get(PUMP_ENV) or "auto").strip().lower()
    try:
        pump = NativePump(helper)
    except (OSError, HelperMissing) as exc:
        if choice == "native":
            raise UsageError(f"cannot start the native helper {helper}: {exc}") from None
        log.debug("data pump: python-splice (the native helper %s did not start: %s)", helper, exc)
        return SplicePump()
    log.debug("data pump: native-splice (helper %s, pid %d)", helper, pump.pid)
    return pump
