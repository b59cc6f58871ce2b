"""Installing streams-trace builds the native helper, and installs fine without a compiler.

Each test copies this checkout, installs the copy with pip into a fresh virtual
environment (system site-packages visible for the dependencies; the package
itself comes from the copy) and looks at what the install chose. pip builds in
its usual isolated build environment, so setuptools comes from PyPI or pip's cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, free_port

COPIED = ["setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "native",
          "streams_trace", "tests"]

# Prints where streams_trace came from, the helper it found and the pump it picks.
PROBE = """
import json, streams_trace
from streams_trace.relay import best_pump
from streams_trace.relay.native import helper_path
pump = best_pump()
print(json.dumps({"package": streams_trace.__file__, "helper": str(helper_path() or ""),
                  "pump": pump.name}))
pump.close()
"""


def copy_checkout(target: Path) -> Path:
    target.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "streams-splice", "*.egg-info", "build")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)
    return target


def make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)],
                   check=True, timeout=120)
    return path / "bin" / "python"


def pip_install(python: Path, source: Path, env: dict[str, str], editable: bool
                ) -> subprocess.CompletedProcess[str]:
    command = [str(python), "-m", "pip", "install", "-v", "--no-deps",
               "--disable-pip-version-check", *(["-e"] if editable else []), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                            cwd=source.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def probe(python: Path, cwd: Path) -> dict[str, str]:
    result = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True,
                            cwd=cwd, timeout=60, check=True)
    return dict(json.loads(result.stdout))


def without_compiler(venv: Path) -> dict[str, str]:
    """An environment in which no C compiler can be found: PATH holds only the venv."""
    env = {key: value for key, value in os.environ.items() if key not in ("CC", "CFLAGS")}
    env["PATH"] = str(venv / "bin")
    assert shutil.which("cc", path=env["PATH"]) is None
    assert shutil.which("gcc", path=env["PATH"]) is None
    return env


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on this machine")
def test_pip_install_builds_the_helper_into_the_package(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "src")
    python = make_venv(tmp_path / "venv")
    result = pip_install(python, source, dict(os.environ), editable=False)
    assert "built the native splice helper" in result.stdout + result.stderr
    found = probe(python, tmp_path)
    site = tmp_path / "venv" / "lib"
    assert Path(found["package"]).is_relative_to(site)
    assert Path(found["helper"]).is_relative_to(site) and os.access(found["helper"], os.X_OK)
    assert found["pump"] == "native-splice"


def test_pip_install_with_a_failing_compiler_still_succeeds(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "src")
    python = make_venv(tmp_path / "venv")
    result = pip_install(python, source, {**os.environ, "CC": "/bin/false"}, editable=False)
    assert "native splice helper not built" in result.stdout + result.stderr
    found = probe(python, tmp_path)
    assert Path(found["package"]).is_relative_to(tmp_path / "venv" / "lib")
    assert found == {**found, "helper": "", "pump": "python-splice"}


def test_editable_install_without_any_compiler_passes_the_suite_on_the_python_pump(
    tmp_path: Path,
) -> None:
    source = copy_checkout(tmp_path / "src")
    venv = tmp_path / "venv"
    python = make_venv(venv)
    env = without_compiler(venv)
    result = pip_install(python, source, env, editable=True)
    assert "native splice helper not built: no C compiler" in result.stdout + result.stderr
    assert not (source / "streams_trace" / "relay" / "streams-splice").exists()
    found = probe(python, tmp_path)
    assert found == {"package": str(source / "streams_trace" / "__init__.py"), "helper": "",
                     "pump": "python-splice"}

    # The gateway says which pump runs and why (-d).
    listener_port = free_port()
    gateway = subprocess.Popen(
        [str(python), "-m", "streams_trace", "-d", "gateway",
         "--listener-contact-string", f"127.0.0.1:{listener_port}",
         "--initiator-config-dir", str(tmp_path / "initiator"),
         "--listener-config-dir", str(tmp_path / "listener")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    assert gateway.stdout is not None
    tunnel_id = gateway.stdout.readline().strip()
    gateway.send_signal(signal.SIGTERM)
    _, err = gateway.communicate(timeout=30)
    assert tunnel_id, err
    assert ("data pump: python-splice (the native helper was not built: "
            "no C compiler at install time)") in err

    # The relay and native-helper tests of the copy, and the gateway's data tests, run
    # by that install.
    suite = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/test_relay.py", "tests/test_native.py", "tests/test_gateway.py", "-k",
         "not test_gateway or megabytes or connections_at_once or half_close or reset"],
        capture_output=True, text=True, cwd=source, env=env, timeout=900)
    assert suite.returncode == 0, suite.stdout[-5000:] + suite.stderr[-2000:]
    counts = {word: int(number) for number, word in
              re.findall(r"(\d+) (passed|skipped|failed|error)", suite.stdout)}
    # Only the native variants skip, saying why; every Python-pump and gateway test runs.
    skip_lines = [line for line in suite.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skip_lines and all("the native helper is not built" in line for line in skip_lines)
    assert counts.get("passed", 0) >= 13 and "failed" not in counts, counts
