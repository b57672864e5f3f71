"""scripts/audit: runs that started and never ended, and the instances they still hold locked (no hosts)."""

from __future__ import annotations

import json
import os
import subprocess

from tests.playbook import REPO


def line(event, run, **fields):
    return json.dumps({"event": event, "run": run, "time": "2026-11-30T20:00:00Z", **fields})


def start(run, *instances):
    return line("start", run, operator="alice", source="cli", playbook="upgrade.yml", action="upgrade",
                instances=list(instances), check_mode=False)


def end(run, instance):
    return line("end", run, instance=instance, result="changed")


def audit(log, *args):
    return subprocess.run([str(REPO / "scripts" / "audit"), "unfinished", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "FLEETDECK_AUDIT_LOG": str(log)})


def test_lists_runs_without_an_end_and_the_locks_no_later_run_took(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text("\n".join([
        json.dumps({"time": "2026-11-29T10:00:00Z", "instance": "a", "result": "ok"}),  # an older version's line
        start("ops/1/10", "a", "b", "c"),
        line("locked", "ops/1/10", instance="a", version_from="1.0.0", took_over=None),
        line("locked", "ops/1/10", instance="b", version_from="1.0.0", took_over=None),
        start("ops/2/20", "b"),  # the rerun after ops/1 was killed: takes over b's lock and ends
        line("locked", "ops/2/20", instance="b", version_from="1.0.0", took_over={"run": "ops/1/10"}),
        end("ops/2/20", "b"),
        start("ops/3/30", "c"),  # finished normally
        end("ops/3/30", "c"),
    ]) + "\n")
    report = audit(log, "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert [(r["run"], r["instances"], r["locked"]) for r in data["runs"]] == [("ops/1/10", ["a", "b", "c"], ["a"])]
    assert data["instances"] == {"a": "ops/1/10"}

    table = audit(log)
    assert table.returncode == 0
    assert table.stdout.splitlines()[1].split() == ["ops/1/10", "2026-11-30T20:00:00Z", "alice", "cli",
                                                    "upgrade.yml", "a"]


def test_an_empty_or_missing_log_has_no_unfinished_runs(tmp_path):
    report = audit(tmp_path / "missing.log")
    assert report.returncode == 0 and report.stdout.startswith("no unfinished runs in ")


def test_a_line_that_is_not_an_audit_line_is_named(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text(start("ops/1/10", "a") + "\nnot json\n")
    report = audit(log)
    assert report.returncode == 2
    assert report.stderr.strip() == f"audit: {log}:2: not an audit line written by fleetdeck.lifecycle.audit"
