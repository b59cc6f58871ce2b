"""streams_trace: put any Linux program on a Globus Streams tunnel without LD_PRELOAD.

The in-process client API (``connect`` and ``listen``) is the untraced way for a
Python program to use a tunnel, as the official preload library would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Listener", "__version__", "connect", "listen"]

if TYPE_CHECKING:
    from .client import Listener, connect, listen


def __getattr__(name: str) -> Any:
    # The client API is loaded on first use so that `streams-trace --help` stays light.
    if name in ("connect", "listen", "Listener"):
        from . import client

        return getattr(client, name)
    raise AttributeError(name)
