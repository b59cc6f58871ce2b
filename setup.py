"""Build glue: compile the native helpers at install time.

Everything about the package lives in pyproject.toml; this file only adds the
``build_native`` step to ``build``, the way dumb-init ships its C program in a
wheel. It compiles, with the system C compiler ($CC, else ``cc``), inside the
build tree for ``pip install .`` and in the source tree for ``pip install -e .``:

- ``native/streams-splice.c`` into ``streams_trace/relay/streams-splice``, the
  relay's data pump;
- ``native/fastconnect.c`` into ``streams_trace/supervisor/libfastconnect.so``,
  streams-run's native connect path (needs OpenSSL's libcrypto and its headers).

Each is optional: where one does not build, the install still succeeds and
streams_trace uses its pure-Python counterpart. Set STREAMS_TRACE_NO_NATIVE=1
to skip both on purpose.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import ClassVar, NamedTuple

from setuptools import Command, Distribution, setup
from setuptools.command.build import build

HERE = Path(__file__).resolve().parent
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]


class Helper(NamedTuple):
    what: str  # for messages
    source: Path
    target: Path  # where the package looks for it
    flags: list[str]  # before the source
    libraries: list[str]  # after it
    fallback: str  # what is used without it


HELPERS = [
    Helper("native splice helper", Path("native") / "streams-splice.c",
           Path("streams_trace") / "relay" / "streams-splice", [], [],
           "the pure-Python splice pump will carry the data"),
    Helper("native connect path", Path("native") / "fastconnect.c",
           Path("streams_trace") / "supervisor" / "libfastconnect.so",
           ["-shared", "-fPIC", "-pthread"], ["-lcrypto"],
           "streams-run will redirect connects in Python"),
]


class build_native(Command):
    description = "compile the native helpers (optional: skipped without a compiler)"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False  # set by setuptools for `pip install -e`
        self._built: list[str] = []

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def run(self) -> None:
        if os.environ.get("STREAMS_TRACE_NO_NATIVE", "") not in ("", "0"):
            for helper in HELPERS:
                self._warn(helper, "STREAMS_TRACE_NO_NATIVE is set")
            return
        assert self.build_lib is not None
        root = HERE if self.editable_mode else Path(self.build_lib)
        for helper in HELPERS:
            self._build(helper, root / helper.target)

    def _build(self, helper: Helper, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        compiler = shlex.split(os.environ.get("CC", "cc"))
        command = [
            *compiler,
            *CFLAGS,
            *shlex.split(os.environ.get("CFLAGS", "")),
            *helper.flags,
            "-o",
            str(target),
            str(HERE / helper.source),
            *shlex.split(os.environ.get("LDFLAGS", "")),
            *helper.libraries,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            self._warn(helper, f"no C compiler ({compiler[0]}: {exc.strerror})")
            return
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            self._warn(
                helper,
                f"`{shlex.join(command)}` failed with status {result.returncode}"
                + (f": {detail[-1]}" if detail else ""),
            )
            target.unlink(missing_ok=True)
            return
        self._built.append(str(target))
        print(f"built the {helper.what}: {target}", file=sys.stderr)

    def _warn(self, helper: Helper, reason: str) -> None:
        print(f"streams-trace: {helper.what} not built: {reason}; {helper.fallback}",
              file=sys.stderr)

    def get_outputs(self) -> list[str]:
        return list(self._built)

    def get_output_mapping(self) -> dict[str, str]:
        # Editable installs build in place, so nothing needs mapping.
        return {}


class build_with_native(build):
    sub_commands: ClassVar = [*build.sub_commands, ("build_native", None)]


class BinaryDistribution(Distribution):
    """The wheel carries a compiled program, so it is tagged for this platform."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    cmdclass={"build": build_with_native, "build_native": build_native},
    distclass=BinaryDistribution,
)
