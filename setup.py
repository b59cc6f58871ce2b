"""Build glue: compile the native splice helper at install time.

Everything about the package lives in pyproject.toml; this file only adds the
``build_native`` step to ``build``, the way dumb-init ships its C program in a
wheel. It compiles ``native/streams-splice.c`` with the system C compiler ($CC,
else ``cc``) into ``streams_trace/relay/streams-splice``: inside the build tree
for ``pip install .``, in the source tree for ``pip install -e .``. Without a
working compiler the install still succeeds and streams_trace uses its
pure-Python pump; set STREAMS_TRACE_NO_NATIVE=1 to skip the helper on purpose.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from setuptools import Command, Distribution, setup
from setuptools.command.build import build

HERE = Path(__file__).resolve().parent
SOURCE = Path("native") / "streams-splice.c"
TARGET = Path("streams_trace") / "relay" / "streams-splice"  # native.py looks here
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]


class build_native(Command):
    description = "compile the native splice helper (optional: skipped without a compiler)"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False  # set by setuptools for `pip install -e`
        self._built: list[str] = []

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def run(self) -> None:
        if os.environ.get("STREAMS_TRACE_NO_NATIVE", "") not in ("", "0"):
            self._warn("STREAMS_TRACE_NO_NATIVE is set: not building the native helper")
            return
        assert self.build_lib is not None
        root = HERE if self.editable_mode else Path(self.build_lib)
        target = root / TARGET
        target.parent.mkdir(parents=True, exist_ok=True)
        compiler = shlex.split(os.environ.get("CC", "cc"))
        command = [
            *compiler,
            *CFLAGS,
            *shlex.split(os.environ.get("CFLAGS", "")),
            "-o",
            str(target),
            str(HERE / SOURCE),
            *shlex.split(os.environ.get("LDFLAGS", "")),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            self._warn(f"no C compiler ({compiler[0]}: {exc.strerror})")
            return
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            self._warn(
                f"`{shlex.join(command)}` failed with status {result.returncode}"
                + (f": {detail[-1]}" if detail else "")
            )
            target.unlink(missing_ok=True)
            return
        self._built = [str(target)]
        print(f"built the native splice helper: {target}", file=sys.stderr)

    def _warn(self, reason: str) -> None:
        print(
            f"streams-trace: native splice helper not built: {reason}; "
            "the pure-Python splice pump will carry the data",
            file=sys.stderr,
        )

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
