"""The audit callback, exercised through real ansible-playbook runs against local hosts."""

from __future__ import annotations

import fcntl
import json
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import cli_env, leftover_workers

PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
FIELDS = ["event", "run", "time", "operator", "source", "playbook", "action", "instance", "version_from",
          "version_to", "result", "changed", "check_mode", "held", "ring"]

UPGRADE = """
- hosts: app
  gather_facts: false
  vars:
    fleetdeck_audit_action: upgrade
    db_password: hunter2
  tasks:
    - ansible.builtin.set_fact:
        ansible_local: {app: {current: "1.1.0"}}
    - fleetdeck.lifecycle.instance_lock:
        path: "{{ playbook_dir }}/locks/{{ inventory_hostname }}.json"
        token: "{{ inventory_hostname }}-token"
    - ansible.builtin.set_fact:
        ansible_local: {app: {current: "{{ target_version }}"}}
    - ansible.builtin.command: "true"
    - ansible.builtin.command: "true"
      when: inventory_hostname == 'web1'
    - ansible.builtin.fail:
        msg: "migration failed for {{ db_password }}"
      when: inventory_hostname == 'web2'
"""


def write_inventory(tmp_path, *names, extra=""):
    lines = ["[app]", *names, "[all:vars]", "ansible_connection=local",
             f"ansible_python_interpreter={sys.executable}", "target_version=1.2.0", extra]
    (tmp_path / "inventory").write_text("\n".join(lines) + "\n")


def run_playbook(tmp_path, text, *args, name="upgrade.yml", env=None, wait=True):
    (tmp_path / name).write_text(text)
    full_env = cli_env(
        ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
        ANSIBLE_CALLBACKS_ENABLED="fleetdeck.lifecycle.audit",
        FLEETDECK_AUDIT_LOG=str(tmp_path / "state" / "fleetdeck" / "audit.log"),
        FLEETDECK_OPERATOR="alice",
    )
    full_env.pop("FLEETDECK_RUN_SOURCE", None)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    # The inventory's absolute path makes the command line this test's own: the lock recognises a holder's task
    # workers by its command line, and tests in parallel workers would otherwise share one.
    cmd = [str(PLAYBOOK_BIN), "-i", str(tmp_path / "inventory"), name, *args]
    if not wait:
        return subprocess.Popen(cmd, env=full_env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)


def read_log(path, event="end"):
    return [line for line in map(json.loads, path.read_text().splitlines()) if line["event"] == event]


def test_one_line_per_host_with_all_fields(tmp_path):
    write_inventory(tmp_path, "web1", "web2", "web3")
    started = datetime.now(UTC).replace(microsecond=0)
    proc = run_playbook(tmp_path, UPGRADE)
    assert proc.returncode == 2, proc.stdout  # web2 fails

    log = tmp_path / "state" / "fleetdeck" / "audit.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    lines = read_log(log)
    assert [line["instance"] for line in lines] == ["web1", "web2", "web3"]
    for line in lines:
        assert list(line) == FIELDS
        assert line["operator"] == "alice"
        assert line["source"] == "cli"
        assert line["playbook"] == "upgrade.yml"
        assert line["action"] == "upgrade"
        assert line["version_from"] == "1.1.0"
        assert line["version_to"] == "1.2.0"
        assert line["check_mode"] is False
        when = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert started <= when <= datetime.now(UTC) + timedelta(seconds=1)
    by_host = {line["instance"]: line for line in lines}
    assert (by_host["web1"]["result"], by_host["web1"]["changed"]) == ("changed", 3)
    assert (by_host["web2"]["result"], by_host["web2"]["changed"]) == ("failed", 2)
    assert (by_host["web3"]["result"], by_host["web3"]["changed"]) == ("changed", 2)
    (start,) = read_log(log, "start")
    assert start["instances"] == ["web1", "web2", "web3"] and start["action"] == "upgrade"
    assert (start["operator"], start["playbook"], start["check_mode"]) == ("alice", "upgrade.yml", False)
    assert {line["run"] for line in read_log(log, "start") + lines} == {start["run"]}
    locked = read_log(log, "locked")
    assert sorted((line["instance"], line["version_from"], line["took_over"]) for line in locked) == [
        ("web1", "1.1.0", None), ("web2", "1.1.0", None), ("web3", "1.1.0", None)]
    assert "hunter2" not in log.read_text()
    summary = proc.stdout.split("FLEETDECK SUMMARY (upgrade.yml)", 1)[1]
    assert "web2                 failed       1.1.0        1.2.0" in summary


# As roles/rollout tasks_from hold does it: the hold check leaves a held instance out (rollout_hold).
HOLD_CHECK = """
    - ansible.builtin.set_fact:
        _rollout_held: true
      when: rollout_hold | default(false) | bool and skip_held | default(true)
    - ansible.builtin.meta: end_host
      when: rollout_hold | default(false) | bool and skip_held | default(true)
"""


def test_held_instances_are_named_with_their_reason(tmp_path):
    write_inventory(tmp_path, "web1", "web2 rollout_hold=true rollout_hold_reason='customer freeze'", "web3")
    first_task = "    - ansible.builtin.set_fact:\n        ansible_local: {app: {current: \"1.1.0\"}}\n"
    playbook = UPGRADE.replace(first_task, first_task + HOLD_CHECK).replace(
        "when: inventory_hostname == 'web2'", "when: false")
    proc = run_playbook(tmp_path, playbook)
    assert proc.returncode == 0, proc.stdout
    lines = {line["instance"]: line for line in read_log(tmp_path / "state" / "fleetdeck" / "audit.log")}
    assert {name: (line["result"], line["held"]) for name, line in lines.items()} == {
        "web1": ("changed", None), "web2": ("held", "customer freeze"), "web3": ("changed", None)}
    summary = proc.stdout.split("FLEETDECK SUMMARY (upgrade.yml)", 1)[1]
    assert "web2                 held         1.1.0        1.1.0 (held: customer freeze)" in summary
    assert "web1                 changed      1.1.0        1.2.0\n" in summary

    # A run the hold does not apply to (a restart) still names the hold, with what the run did.
    proc = run_playbook(tmp_path, playbook, "-e", '{"skip_held": false}')
    assert proc.returncode == 0, proc.stdout
    summary = proc.stdout.split("FLEETDECK SUMMARY (upgrade.yml)", 1)[1]
    assert "web2                 changed      1.1.0        1.2.0 (held: customer freeze)" in summary


RINGS = """
- hosts: app
  gather_facts: false
  vars:
    fleetdeck_audit_action: canary_upgrade
  tasks:
    - ansible.builtin.add_host:
        name: "{{ item.0 }}"
        groups: "rollout_ring_{{ item.1 }}"
      loop: [[web3, canary], [web1, early], [web2, rest]]
      delegate_to: localhost
      run_once: true

- hosts: web3,web1,web2
  gather_facts: false
  serial: 1
  max_fail_percentage: 0
"""


def test_rings_are_named_per_batch_and_a_stopped_rollout_shows_the_rings_never_started(tmp_path):
    write_inventory(tmp_path, "web1", "web2", "web3")
    playbook = RINGS + UPGRADE.split("  gather_facts: false\n", 1)[1].replace("'web2'", "'web1'")
    proc = run_playbook(tmp_path, playbook, name="canary_upgrade.yml")
    assert proc.returncode == 2, proc.stdout  # web1, ring early, fails
    log = tmp_path / "state" / "fleetdeck" / "audit.log"
    (start,) = read_log(log, "start")
    assert start["instances"] == ["web1", "web2", "web3"]  # every targeted instance, from the plan
    assert [(b["ring"], b["instances"]) for b in read_log(log, "batch")] == [("canary", ["web3"]), ("early", ["web1"])]
    locked = [(line["instance"], line["ring"]) for line in read_log(log, "locked")]
    assert locked == [("web3", "canary"), ("web1", "early")]
    ends = {line["instance"]: (line["ring"], line["result"]) for line in read_log(log)}
    assert ends == {"web1": ("early", "failed"), "web3": ("canary", "changed")}  # web2 never reached
    summary = proc.stdout.split("FLEETDECK SUMMARY (canary_upgrade.yml)", 1)[1]
    assert "INSTANCE             RING         RESULT       FROM         NOW" in summary
    assert "web1                 early        failed       1.1.0        1.2.0" in summary
    assert "web2                 rest         not started  -            unchanged" in summary
    assert "web3                 canary       changed      1.1.0        1.2.0" in summary


def test_runs_append_and_record_check_mode_and_source(tmp_path):
    write_inventory(tmp_path, "web1")
    assert run_playbook(tmp_path, UPGRADE).returncode == 0
    proc = run_playbook(tmp_path, UPGRADE, "--check", env={"FLEETDECK_RUN_SOURCE": "runner:42"})
    assert proc.returncode == 0, proc.stdout
    first, second = read_log(tmp_path / "state" / "fleetdeck" / "audit.log")
    assert (first["check_mode"], first["source"]) == (False, "cli")
    assert (second["check_mode"], second["source"]) == (True, "runner:42")


def test_play_without_action_writes_nothing(tmp_path):
    write_inventory(tmp_path, "web1")
    proc = run_playbook(tmp_path, "- hosts: app\n  gather_facts: false\n  tasks:\n"
                                  "    - ansible.builtin.command: 'true'\n")
    assert proc.returncode == 0, proc.stdout
    assert not (tmp_path / "state").exists()


def test_only_hosts_of_audited_plays_and_unset_versions(tmp_path):
    write_inventory(tmp_path, "web1", extra="[db]\ndb1")
    text = """
- hosts: db
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"

- hosts: app
  gather_facts: false
  vars:
    fleetdeck_audit_action: "{{ 'rest' + 'art' }}"
  tasks:
    - ansible.builtin.debug:
        msg: hello
    - ansible.builtin.command: "true"
      when: false
"""
    assert run_playbook(tmp_path, text, name="restart.yml").returncode == 0
    (line,) = read_log(tmp_path / "state" / "fleetdeck" / "audit.log")
    assert line["instance"] == "web1"
    assert line["action"] == "restart"
    assert line["playbook"] == "restart.yml"
    assert (line["result"], line["changed"]) == ("ok", 0)
    assert line["version_from"] is None and line["version_to"] is None


def test_skipped_and_unreachable_hosts(tmp_path):
    write_inventory(tmp_path, "web1", "web2 ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=1")
    text = """
- hosts: app
  gather_facts: false
  vars:
    fleetdeck_audit_action: backup
  tasks:
    - ansible.builtin.command: "true"
      when: false
    - ansible.builtin.ping:
      when: inventory_hostname == 'web2'
"""
    proc = run_playbook(tmp_path, text, env={"ANSIBLE_HOST_KEY_CHECKING": "false"})
    assert proc.returncode == 4, proc.stdout  # some host unreachable
    lines = read_log(tmp_path / "state" / "fleetdeck" / "audit.log")
    assert [(line["instance"], line["result"]) for line in lines] == [
        ("web1", "skipped"), ("web2", "unreachable"),
    ]


def test_log_path_from_ini(tmp_path):
    write_inventory(tmp_path, "web1")
    (tmp_path / "ansible.cfg").write_text(f"[fleetdeck_audit]\nlog_path = {tmp_path}/ini/audit.log\n")
    proc = run_playbook(tmp_path, UPGRADE, env={"FLEETDECK_AUDIT_LOG": None})
    assert proc.returncode == 0, proc.stdout
    assert len(read_log(tmp_path / "ini" / "audit.log")) == 1


# The runs wait here for the test's lock, then end together: their end lines are written at the same moment.
MEET = """
    - ansible.builtin.shell: mktemp -p . ready.XXXXXX && flock --shared meet true
      args:
        chdir: "{{ playbook_dir }}"
      run_once: true
"""


def test_concurrent_runs_write_whole_lines_per_run(tmp_path):
    hosts = [f"web{i:02d}" for i in range(6)]
    write_inventory(tmp_path, *hosts)
    with open(tmp_path / "meet", "w") as meet:
        fcntl.flock(meet, fcntl.LOCK_EX)
        procs = [run_playbook(tmp_path, UPGRADE + MEET, "-f", "6", env={"FLEETDECK_RUN_SOURCE": f"runner:{n}"},
                              wait=False)
                 for n in range(4)]
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready.*"))) < len(procs):
            assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs), "a run never met"
            time.sleep(0.1)
    # Closing the file gave the lock back: the runs went on at once.
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    lines = read_log(tmp_path / "state" / "fleetdeck" / "audit.log")  # every line is whole JSON
    assert len(lines) == 4 * len(hosts)
    sources = [line["source"] for line in lines]
    # Each run's end lines are written under one lock, so they form one contiguous block.
    blocks = [source for i, source in enumerate(sources) if i == 0 or sources[i - 1] != source]
    assert sorted(blocks) == [f"runner:{n}" for n in range(4)]
    for n in range(4):
        assert sorted(line["instance"] for line in lines if line["source"] == f"runner:{n}") == hosts


def test_waits_for_the_log_lock(tmp_path):
    write_inventory(tmp_path, "web1")
    log = tmp_path / "state" / "fleetdeck" / "audit.log"
    log.parent.mkdir(parents=True)
    with open(log, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run_playbook(tmp_path, UPGRADE, wait=False)
        time.sleep(8)  # a run takes about 2s; it must still be waiting for the lock
        assert proc.poll() is None
        assert log.read_text() == ""
        fcntl.flock(held, fcntl.LOCK_UN)
        assert proc.wait(timeout=60) == 0
    assert [line["instance"] for line in read_log(log)] == ["web1"]


LOCKED_WORK = """
- hosts: app
  gather_facts: false
  vars:
    fleetdeck_audit_action: upgrade
  tasks:
    - fleetdeck.lifecycle.instance_lock:
        path: "{{ playbook_dir }}/locks/{{ inventory_hostname }}.json"
        holder: "{{ lookup('ansible.builtin.env', 'HOLDER') }}"
        token: "{{ lookup('ansible.builtin.env', 'HOLDER') }}"
    - ansible.builtin.command: sleep {{ lookup('ansible.builtin.env', 'SLEEP') }}
"""


def start_locked_run(tmp_path, holder, sleep):
    """A run that holds web1's lock while it sleeps; returns once the lock is taken."""
    proc = run_playbook(tmp_path, LOCKED_WORK, env={"HOLDER": holder, "SLEEP": str(sleep)}, wait=False)
    log = tmp_path / "state" / "fleetdeck" / "audit.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and read_log(log, "locked")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert read_log(log, "locked"), "the run never took the lock"
    return proc


def test_a_live_holder_is_refused_and_a_killed_one_taken_over(tmp_path):
    write_inventory(tmp_path, "web1")
    log = tmp_path / "state" / "fleetdeck" / "audit.log"
    first = start_locked_run(tmp_path, "first", 15)

    refused = run_playbook(tmp_path, LOCKED_WORK, env={"HOLDER": "second", "SLEEP": "0"})
    assert refused.returncode == 2
    assert f"instance is locked by first (pid {first.pid} on " in refused.stdout

    command = Path(f"/proc/{first.pid}/cmdline").read_bytes()
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    (killed, refused_start) = read_log(log, "start")
    assert [line["run"] for line in read_log(log)] == [refused_start["run"]]  # the killed run never ended

    # The worker running the sleep outlives its killed parent: until it ends, the holder is not dead.
    assert leftover_workers(command)
    early = run_playbook(tmp_path, LOCKED_WORK, env={"HOLDER": "early", "SLEEP": "0"})
    assert early.returncode == 2 and "instance is locked by first" in early.stdout
    deadline = time.monotonic() + 60
    while leftover_workers(command) and time.monotonic() < deadline:
        time.sleep(0.5)

    third = run_playbook(tmp_path, LOCKED_WORK, env={"HOLDER": "third", "SLEEP": "0"})
    assert third.returncode == 0, third.stdout
    assert f"web1: took over the lock of first (pid {first.pid} on " in third.stderr
    took_over = [line for line in read_log(log, "locked") if line["took_over"]]
    assert [(line["instance"], line["took_over"]["holder"], line["took_over"]["run"]) for line in took_over] == [
        ("web1", "first", killed["run"])]
    assert json.loads((tmp_path / "locks" / "web1.json").read_text())["holder"] == "third"


def runs_below(pid, argv):
    """Whether a descendant of process PID runs the command line ARGV."""
    parents, commands = {}, {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                parents[proc.name] = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                commands[proc.name] = (proc / "cmdline").read_bytes()
        except OSError:
            pass
    wanted = b"\0".join(arg.encode() for arg in argv) + b"\0"
    for child in (name for name, command in commands.items() if command == wanted):
        while child in parents and child != str(pid):
            child = parents[child]
        if child == str(pid):
            return True
    return False


def test_an_interrupted_run_still_ends(tmp_path):
    write_inventory(tmp_path, "web1")
    run = start_locked_run(tmp_path, "first", 30)
    # Ctrl-C during the work, as an operator presses it. Sent the moment the lock line was written (ansible-core
    # still queuing the next task), the interrupt was lost in 1 of 156 runs (6 at a time on 2 cores) and the
    # run went on to its recap.
    deadline = time.monotonic() + 60
    while not runs_below(run.pid, ["sleep", "30"]):
        assert time.monotonic() < deadline and run.poll() is None, "the work never started"
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    run.wait(timeout=60)
    (end,) = read_log(tmp_path / "state" / "fleetdeck" / "audit.log")
    assert (end["instance"], end["result"]) == ("web1", "interrupted")
