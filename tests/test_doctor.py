"""`streams-trace doctor` as a user runs it: text and --json, against the real local gateway."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from streams_trace import conf as confmod
from streams_trace.contact import parse_contact
from streams_trace.trace import probes

from .conftest import Gateway, free_port, streams_trace_command


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(streams_trace_command("doctor", *args), capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_json_report_matches_the_probes_and_the_data_path_choice() -> None:
    result = doctor("--json")
    report = json.loads(result.stdout)
    assert report["kernel"]["release"] == probes.kernel_release()
    for key in ("ptrace", "seccomp_filters", "user_notification", "pidfd_getfd",
                "yama_ptrace_scope"):
        assert set(report["features"][key]) == {"ok", "detail"}
    # The same probe as streams-run --data-path auto.
    chosen, _ = probes.choose_data_path("auto")
    assert report["data_path"]["auto"] == chosen
    assert report["data_path"]["auto"] == ("direct" if report["features"]["pidfd_getfd"]["ok"]
                                           else "relay")
    assert result.returncode == (0 if report["features"]["ptrace"]["ok"] else 1), result.stderr


def test_pump_follows_the_environment_and_the_build() -> None:
    from streams_trace.relay.native import helper_path
    from streams_trace.supervisor import fastconnect

    report = json.loads(doctor("--json").stdout)
    assert report["native_helper"]["built"] == (helper_path() is not None)
    assert report["native_connects"]["usable"] == (fastconnect.problem() is None)
    assert report["native_connects"]["usable"] == fastconnect.LIBRARY_PATH.exists()
    assert report["pump"]["runs"] == ("native-splice" if helper_path() else "python-splice")
    forced = json.loads(doctor("--json", env={"STREAMS_TRACE_PUMP": "python"}).stdout)
    assert forced["pump"]["runs"] == "python-splice" and "STREAMS_TRACE_PUMP" in \
        forced["pump"]["why"]


def test_text_report_with_a_tunnel_whose_access_point_answers(gateway: Gateway) -> None:
    result = doctor("--config-dir", str(gateway.initiator_dir), gateway.tunnel_id)
    secret = confmod.load(gateway.tunnel_id, gateway.initiator_dir).lankey
    assert secret and secret not in result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    for label in ("kernel", "ptrace", "seccomp filters", "user notification", "pidfd_getfd",
                  "Yama ptrace_scope",
                  "data path (auto)", "native helper", "relay pump"):
        assert label in text
    assert f"tunnel {gateway.tunnel_id}" in text and "lankey" in text and "********" in text
    assert "TCP connect" in text and "authenticated in" in text


def test_json_with_a_wrong_secret_and_with_a_dead_access_point(gateway: Gateway,
                                                               tmp_path: Path) -> None:
    tunnel = confmod.load(gateway.tunnel_id, gateway.initiator_dir)
    wrong = tmp_path / "wrong"
    confmod.save(dataclasses.replace(tunnel, lankey="not-the-secret"), wrong)
    result = doctor("--json", "--config-dir", str(wrong), gateway.tunnel_id)
    access = json.loads(result.stdout)["tunnel"]["access_point"]
    assert access["tcp"]["ok"] and not access["handshake"]["ok"]
    assert result.returncode == 6 and "not-the-secret" not in result.stdout

    # TCP alone passes with --no-handshake.
    result = doctor("--json", "--no-handshake", "--config-dir", str(wrong), gateway.tunnel_id)
    assert result.returncode == 0 and json.loads(result.stdout)["tunnel"]["access_point"][
        "handshake"] is None

    dead = tmp_path / "dead"
    confmod.save(dataclasses.replace(
        tunnel, connector_contact_string=parse_contact(f"127.0.0.1:{free_port()}")), dead)
    result = doctor("--json", "--config-dir", str(dead), gateway.tunnel_id)
    access = json.loads(result.stdout)["tunnel"]["access_point"]
    assert not access["tcp"]["ok"] and "refused" in access["tcp"]["detail"].lower()
    assert result.returncode == 6


def test_an_expired_tunnel_is_exit_3_as_streams_run_refuses_it(gateway: Gateway,
                                                                tmp_path: Path) -> None:
    tunnel = confmod.load(gateway.tunnel_id, gateway.initiator_dir)
    confmod.save(dataclasses.replace(tunnel, tunnel_expiration_time=1000.0), tmp_path)
    result = doctor("--config-dir", str(tmp_path), gateway.tunnel_id)
    assert result.returncode == 3 and "EXPIRED" in result.stdout, result.stdout


def test_listener_side_conf_has_no_access_point_to_probe(gateway: Gateway) -> None:
    result = doctor("--config-dir", str(gateway.listener_dir), gateway.tunnel_id)
    assert result.returncode == 0, result.stderr
    assert "listener-side conf" in result.stdout and "listener_contact_string" in result.stdout


def test_unknown_tunnel_and_bad_id_are_one_line(tmp_path: Path) -> None:
    result = doctor("--config-dir", str(tmp_path), "0b8f3c1e-0000-4000-8000-000000000000")
    assert result.returncode == 3 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    result = doctor("not-a-tunnel")
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--json", "--config-dir", "--no-handshake", "--timeout"])
def test_every_doctor_option_is_in_the_man_page(option: str) -> None:
    page = (Path(__file__).resolve().parent.parent / "man" / "streams-trace.1").read_text()
    assert option in page.replace("\\-", "-")
