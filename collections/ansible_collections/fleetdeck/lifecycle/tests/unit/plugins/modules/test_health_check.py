"""Runs the health_check module for real against a local HTTP server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import cli_env, run_module

BIN = Path(sys.executable).parent


def fast(**args):
    return {"retries": 5, "delay": 0.05, "timeout": 2, **args}


FAILING = {"status": "failing", "version": "1.2.0", "checks": {"database": "unreachable"}}


def test_recovers_after_503(server):
    server.script = [(503, FAILING, 0), (503, FAILING, 0), (200, {"status": "ok", "version": "1.2.0"}, 0)]
    rc, result = run_module("health_check", **fast(url=server.url, expected_version="1.2.0", delay=0.3))
    assert rc == 0, result
    assert result["healthy"] is True
    assert result["changed"] is False
    assert result["attempts"] == 3
    assert result["status_code"] == 200
    assert result["version"] == "1.2.0"
    assert result["body"] == {"status": "ok", "version": "1.2.0"}
    assert result["elapsed"] >= 0.6  # two pauses of 0.3s


def test_failure_message_describes_last_answer(server):
    server.script = [(503, FAILING, 0)]
    rc, result = run_module("health_check", **fast(url=server.url, retries=3, expected_version="1.2.0"))
    assert rc == 1
    assert result["healthy"] is False
    assert result["attempts"] == 3 == len(server.requests)
    assert re.fullmatch(
        re.escape(f"health check of {server.url} failed after 3 attempts in ") + r"\d+\.\ds"
        + re.escape(": last answer HTTP 503, status=failing, version=1.2.0 (expected 1.2.0), "
                    "database=unreachable"),
        result["msg"],
    ), result["msg"]
    assert result["body"] == FAILING


def test_wrong_version_is_not_healthy(server):
    server.script = [(200, {"status": "ok", "version": "1.1.0"}, 0)]
    rc, result = run_module("health_check", **fast(url=server.url, retries=2, expected_version="1.2.0"))
    assert rc == 1
    assert result["version"] == "1.1.0"
    assert result["msg"].endswith("last answer HTTP 200, status=ok, version=1.1.0 (expected 1.2.0)")


def test_without_expected_version_any_version_is_fine(server):
    server.script = [(200, {"status": "ok", "version": "9.9.9"}, 0)]
    rc, result = run_module("health_check", **fast(url=server.url))
    assert rc == 0 and result["attempts"] == 1


def test_custom_status_and_code(server):
    server.script = [(200, {"status": "ok"}, 0), (202, {"status": "pass"}, 0)]
    rc, result = run_module("health_check", **fast(url=server.url, expected_status="pass", status_code=202))
    assert rc == 0, result
    assert result["attempts"] == 2
    assert result["version"] is None


def test_invalid_json_body_is_returned_as_text(server):
    server.script = [(200, "<html>maintenance</html>", 0)]
    rc, result = run_module("health_check", **fast(url=server.url, retries=2))
    assert rc == 1
    assert result["body"] == "<html>maintenance</html>"
    assert result["msg"].endswith(
        "last answer HTTP 200, body is not a JSON object: '<html>maintenance</html>'"
    )


def test_long_text_body_is_trimmed_to_2_kib(server):
    server.script = [(500, "x" * 10000, 0)]
    rc, result = run_module("health_check", **fast(url=server.url, retries=1))
    assert rc == 1
    assert result["body"] == "x" * 2048
    assert "failed after 1 attempt in" in result["msg"]


def test_closed_port_reports_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/health"
    rc, result = run_module("health_check", **fast(url=url, retries=3))
    assert rc == 1
    assert result["status_code"] == -1
    assert result["attempts"] == 3
    assert re.fullmatch(
        re.escape(f"health check of {url} failed after 3 attempts in ")
        + r"\d+\.\ds: last attempt connection refused",
        result["msg"],
    ), result["msg"]


def test_slow_answer_times_out_then_recovers(server):
    server.script = [(200, {"status": "ok"}, 1.5), (200, {"status": "ok"}, 0)]
    rc, result = run_module("health_check", **fast(url=server.url, timeout=0.3))
    assert rc == 0, result
    assert result["attempts"] == 2


def test_slow_answers_report_timeout(server):
    server.script = [(200, {"status": "ok"}, 1.5)]
    rc, result = run_module("health_check", **fast(url=server.url, retries=2, timeout=0.3))
    assert rc == 1
    assert result["msg"].endswith("last attempt no answer within 0.3s")


def test_overall_timeout_is_a_hard_deadline(server):
    server.script = [(200, {"status": "ok"}, 0.4)]
    rc, result = run_module("health_check", url=server.url, expected_status="never", retries=1000, delay=0.1, timeout=5,
                            overall_timeout=1.0)
    assert rc == 1
    assert 2 <= result["attempts"] < 10
    assert result["elapsed"] <= 1.5  # the deadline plus overhead on a busy machine


def test_headers_are_sent(server):
    rc, result = run_module("health_check", **fast(url=server.url, headers={"X-Health-Token": "t0ken"}))
    assert rc == 0, result
    assert server.requests[0]["X-Health-Token"] == "t0ken"


def test_invalid_url_fails_at_once():
    rc, result = run_module("health_check", **fast(url="not-a-url"))
    assert rc == 1
    assert result["msg"].startswith("health check of not-a-url: invalid URL")


def test_runs_in_check_mode_through_ansible(server, tmp_path):
    """Loads the module from the collection and runs it with --check, as a playbook would."""
    server.script = [(503, FAILING, 0), (200, {"status": "ok", "version": "1.2.0"}, 0)]
    env = cli_env(
        ANSIBLE_CONFIG=str(tmp_path / "none.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
    )
    args = json.dumps({"url": server.url, "expected_version": "1.2.0", "delay": 0.05})
    proc = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-c", "local", "--check",
         "-e", f"ansible_python_interpreter={sys.executable}",
         "-m", "fleetdeck.lifecycle.health_check", "-a", args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("=>", 1)[1])
    assert result["healthy"] is True
    assert result["attempts"] == 2
    assert result["changed"] is False
