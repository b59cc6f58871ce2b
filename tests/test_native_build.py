"""Installing streams-trace builds the native helper, and installs fine without a compiler.

Each test copies this checkout, installs the copy with pip into a fresh virtual
environment (system site-packages visible for the dependencies; the package
itself comes from the copy) and looks at what the install chose. pip builds in
its usual isolated build environment, so setuptools comes from PyPI or pip's cache.
The compiler-less install then runs the relay, native, gateway-data and whole
streams-run suites of the copy, so relay mode there runs on the Python pump.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams_trace import conf

from .conftest import NATIVE_CONNECTS_MISSING, NATIVE_MISSING, REPO, free_port, ptrace_problem

COPIED = ["setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "native",
          "streams_trace", "tests", "man"]

# The system's program directories; without_compiler() mirrors them minus the compilers.
SYSTEM_BIN = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
# C/C++ compilers and drivers (cc, gcc-12, x86_64-linux-gnu-gcc, musl-gcc, clang, c99, ...),
# the preprocessor, and Go: nothing that could build a program may be found.
COMPILER_NAME = re.compile(
    r"gcc|g\+\+|c\+\+|clang|tcc|cc$|^c89|^c99|(^|-)cpp(-[\d.]+)?$|^go$|^gofmt$")
COMPILERS = ["cc", "gcc", "c99", "clang", "tcc", "musl-gcc", "x86_64-linux-gnu-gcc", "go"]

# The only reasons a test may skip in the compiler-less install: a native helper is
# missing, or a test program cannot be built (tests/test_run.py, build_c and build_go).
NO_COMPILER_REASONS = {NATIVE_MISSING, NATIVE_CONNECTS_MISSING,
                       "gcc is not installed (Debian: gcc)",
                       "musl-gcc is not installed (Debian: musl-tools)",
                       "go is not installed (Debian: golang-go)", "gcc is not installed",
                       "ziglang is not installed (PyPI: ziglang)",
                       "dnspython is not installed (PyPI: dnspython)"}
# Programs the streams-run tests drive besides the ones they build.
RUN_TOOLS = ["sh", "bash", "curl", "env", "true"]

# Prints where streams_trace came from, the helper it found and the pump it picks.
PROBE = """
import json, streams_trace
from streams_trace.relay import best_pump
from streams_trace.relay.native import helper_path
from streams_trace.supervisor.fastconnect import LIBRARY_PATH
pump = best_pump()
print(json.dumps({"package": streams_trace.__file__, "helper": str(helper_path() or ""),
                  "pump": pump.name,
                  "connects": str(LIBRARY_PATH) if LIBRARY_PATH.exists() else ""}))
pump.close()
"""


def copy_checkout(target: Path) -> Path:
    target.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "streams-splice", "*.so", "*.egg-info",
                                    "build")
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


def without_compiler(venv: Path, tools: Path) -> dict[str, str]:
    """An environment in which no compiler can be found but every other program can:
    PATH holds the venv, then ``tools``, links to the system's programs minus compilers."""
    tools.mkdir()
    for directory in SYSTEM_BIN:
        if not os.path.isdir(directory):
            continue
        for entry in sorted(os.scandir(directory), key=lambda item: item.name):
            target = tools / entry.name
            # First directory wins, as in a PATH search; /bin is /usr/bin on merged-/usr.
            if COMPILER_NAME.search(entry.name) or os.path.lexists(target):
                continue
            if os.access(entry.path, os.X_OK) and not entry.is_dir():
                target.symlink_to(entry.path)
    env = {key: value for key, value in os.environ.items()
           if key not in ("CC", "CFLAGS", "STREAMS_TRACE_DATA_PATH")}
    env["PATH"] = f"{venv / 'bin'}:{tools}"
    for compiler in COMPILERS:
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    # Zig's C compiler comes as a Python package (ziglang): hidden behind one that
    # cannot be imported.
    shadow = tools.parent / "no-ziglang"
    (shadow / "ziglang").mkdir(parents=True)
    (shadow / "ziglang" / "__init__.py").write_text(
        "raise ImportError('no compiler in this environment')\n")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), env.get("PYTHONPATH")]))
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import ziglang"], env=env,
                           capture_output=True, timeout=60)
    assert check.returncode != 0, "ziglang can still be imported"
    return env


def static_busybox() -> bool:
    """True when /bin/busybox is static (Debian: busybox-static): it names no interpreter."""
    try:
        with open("/bin/busybox", "rb") as binary:
            head = binary.read(4096)
    except OSError:
        return False
    return b"/ld-linux" not in head and b"ld-musl" not in head


def streams_run_problem() -> str | None:
    """Why the streams-run suite cannot run here at all, or None."""
    problem = ptrace_problem()
    if problem is not None:
        return problem
    missing = [tool for tool in RUN_TOOLS if shutil.which(tool) is None]
    if not static_busybox():
        missing.append("a static /bin/busybox")
    if missing:
        return (f"the streams-run suite needs {', '.join(missing)} "
                "(bash tests/run.sh installs them as root)")
    return None


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
    if Path("/usr/include/openssl/hmac.h").exists():  # Debian: libssl-dev (tests/run.sh)
        assert "built the native connect path" in result.stdout + result.stderr
        assert Path(found["connects"]).is_relative_to(site)


def test_pip_install_with_a_failing_compiler_still_succeeds(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "src")
    python = make_venv(tmp_path / "venv")
    result = pip_install(python, source, {**os.environ, "CC": "/bin/false"}, editable=False)
    assert "native splice helper not built" in result.stdout + result.stderr
    assert "native connect path not built" in result.stdout + result.stderr
    found = probe(python, tmp_path)
    assert Path(found["package"]).is_relative_to(tmp_path / "venv" / "lib")
    assert found == {**found, "helper": "", "pump": "python-splice", "connects": ""}


def test_editable_install_without_any_compiler_passes_the_suite_on_the_python_pump(
    tmp_path: Path,
) -> None:
    problem = streams_run_problem()
    if problem is not None:
        pytest.skip(problem)
    source = copy_checkout(tmp_path / "src")
    venv = tmp_path / "venv"
    python = make_venv(venv)
    env = without_compiler(venv, tmp_path / "tools")
    result = pip_install(python, source, env, editable=True)
    assert "native splice helper not built: no C compiler" in result.stdout + result.stderr
    assert not (source / "streams_trace" / "relay" / "streams-splice").exists()
    found = probe(python, tmp_path)
    assert found == {"package": str(source / "streams_trace" / "__init__.py"), "helper": "",
                     "pump": "python-splice", "connects": ""}

    # The gateway says which pump runs and why (-d); one relayed connection through it
    # under streams-run --data-path relay, both sides, says the same.
    listener_port = free_port()
    gateway = subprocess.Popen(
        [str(python), "-m", "streams_trace", "-d", "gateway",
         "--listener-contact-string", f"127.0.0.1:{listener_port}",
         "--initiator-config-dir", str(tmp_path / "initiator"),
         "--listener-config-dir", str(tmp_path / "listener")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        assert gateway.stdout is not None
        tunnel_id = gateway.stdout.readline().strip()
        relay_errors = (relay_once(python, env, tmp_path, source, tunnel_id, listener_port)
                        if tunnel_id else ())
    finally:
        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=30)
    assert tunnel_id, err
    python_pump = "data pump: python-splice (the native helper was not built: " \
                  "no C compiler at install time)"
    assert python_pump in err
    for side_errors in relay_errors:
        assert "data path: relay" in side_errors and python_pump in side_errors, side_errors
        assert "relay: data pump python-splice carries relayed connections" in side_errors

    # The relay, native-helper and streams-run tests of the copy, and the gateway's data
    # tests, run by that install; streams-run's relay path runs on the Python pump.
    started = time.monotonic()
    suite = subprocess.run(
        [str(python), "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rs",
         "tests/test_relay.py", "tests/test_native.py", "tests/test_run.py",
         "tests/test_gateway.py", "-k",
         "not test_gateway or megabytes or connections_at_once or half_close or reset"],
        capture_output=True, text=True, cwd=source, env=env, timeout=900)
    elapsed = time.monotonic() - started
    assert suite.returncode == 0, suite.stdout[-5000:] + suite.stderr[-2000:]
    outcomes = dict(re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)",
                               suite.stdout, re.MULTILINE))
    # Only the native variants and the tests that build a program skip, saying why.
    reasons = set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", suite.stdout, re.MULTILINE))
    assert NATIVE_MISSING in reasons and reasons <= NO_COMPILER_REASONS, reasons
    assert set(outcomes.values()) == {"PASSED", "SKIPPED"}, outcomes
    # The streams-run suite passes the same tests in both data paths, and most of them.
    run_passed = {name for name, outcome in outcomes.items()
                  if name.startswith("tests/test_run.py::") and outcome == "PASSED"}
    by_path: dict[str, set[str]] = {}
    for name in run_passed:
        for path in ("direct-ptrace", "direct", "relay"):  # the longest id first
            pattern = rf"(?<=[\[-]){path}(?=[\]-])"
            if re.search(pattern, name):
                by_path.setdefault(path, set()).add(re.sub(pattern, "PATH", name, count=1))
                break
    relay_passed = by_path.get("relay", set())
    assert by_path.get("direct") == relay_passed == by_path.get("direct-ptrace")
    assert len(relay_passed) >= 20, sorted(run_passed)
    assert sum(1 for name, outcome in outcomes.items()
               if not name.startswith("tests/test_run.py::") and outcome == "PASSED") >= 13
    print(f"compiler-less install: {len(relay_passed)} streams-run tests passed per data "
          f"path, {len(outcomes)} tests in {elapsed:.0f}s; skipped for: {sorted(reasons)}")


def relay_once(python: Path, env: dict[str, str], tmp_path: Path, source: Path,
               tunnel_id: str, listener_port: int) -> tuple[str, ...]:
    """One echo through the tunnel, listener and initiator both under streams-run -d in
    relay mode; returns both sides' stderr."""
    run = [str(python), "-m", "streams_trace", "run", "-d", "--data-path", "relay"]
    programs = source / "tests" / "programs"
    server = subprocess.Popen(
        [*run, "--config-dir", str(tmp_path / "listener"), tunnel_id, str(python),
         str(programs / "echo_server.py"), str(listener_port), "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        assert server.stdout is not None
        assert "listening" in server.stdout.readline()
        fake_port = conf.load(tunnel_id, tmp_path / "initiator").fake_port
        client = subprocess.run(
            [*run, "--config-dir", str(tmp_path / "initiator"), tunnel_id, str(python),
             str(programs / "echo_client.py"), f"globus.{tunnel_id}", str(fake_port)],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert (client.returncode, client.stdout) == (0, "echo:hello python\n"), client.stderr
        out, server_errors = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert (server.returncode, out) == (0, "served 1\n"), server_errors
    return server_errors, client.stderr
