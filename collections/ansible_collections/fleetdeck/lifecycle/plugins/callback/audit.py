# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
name: audit
type: aggregate
short_description: Append JSON lines to an audit log when a mutating playbook run starts, locks and ends
version_added: 0.1.0
description:
  - Only plays that set the play variable C(fleetdeck_audit_action) (for example V(upgrade)) are audited.
  - Every line has C(event), C(run) (V(<controller>/<pid>/<process start ticks>) of the run's ansible-playbook,
    the same identity the instance lock records) and C(time) (UTC).
  - "V(start): written when an audited play starts, naming its instances (all batches) not named before in this
    run: C(operator) (env E(FLEETDECK_OPERATOR), else the login user), C(source) (env E(FLEETDECK_RUN_SOURCE),
    default V(cli)), C(playbook) (basename), C(action), C(instances), C(check_mode)."
  - "V(batch): written when a batch of an audited play starts whose instances are in release rings (canary_upgrade):
    C(action), C(ring) (the ring's name; several joined with V(+)) and C(instances)."
  - "V(locked): written as soon as a run holds an instance's lock: C(instance), C(version_from) (the release it
    runs then), C(took_over) (the lock of a dead run this run replaced, else V(null)) and C(ring)."
  - "V(end): one per instance when the run ends: C(operator), C(source), C(playbook), C(action) (several actions
    joined with V(+)), C(instance), C(version_from), C(version_to), C(result) (V(ok), V(changed), V(failed),
    V(unreachable), V(skipped), or V(interrupted) when ansible-playbook stopped before its recap),
    C(changed) (number of changed tasks), C(check_mode), C(held) (the C(rollout_hold_reason) of an instance held on
    its release by C(rollout_hold), else V(null)) and C(ring) (its release ring in this run, else V(null)); the
    result is V(held) for an instance that the hold check (roles/rollout tasks_from hold) left out.
    A run with a V(start) line and no V(end) line never ended (the controller was killed)."
  - "The summary printed at the end names every instance of the audited plays with its result (V(not started) for
    one no batch reached), its release and, for a held instance, the hold's reason; and the ring of each, when
    there are rings."
  - "The ring of an instance is its inventory group C(rollout_ring_<name>) (added by roles/rollout tasks_from rings).
    Controller-side tasks of a plan (argument checks, and C(run_once) tasks delegated elsewhere) do not count as
    reaching an instance."
  - "V(analysis): written when a canary analysis (fleetdeck.lifecycle.canary_analysis) ends: C(instance),
    C(version) (the canary's release), C(ring), C(baseline_version), C(decision), C(reason), C(baseline_instances)
    and C(intervals) (the numbers behind the decision)."
  - Versions are the instance's local fact C(ansible_local.app.current) (the release the app role recorded),
    C(version_from) when the lock was taken (else when the run ended), C(version_to) when the run ended;
    V(null) when unknown. Besides versions, no variable value but C(rollout_hold_reason) is ever written.
  - The log is opened with O_APPEND, created with mode 0600, and locked with flock while lines are written,
    so concurrent runs never interleave within a line, and a run's V(end) lines stay together.
requirements:
  - Enable it with C(callbacks_enabled = fleetdeck.lifecycle.audit) in ansible.cfg or
    E(ANSIBLE_CALLBACKS_ENABLED).
options:
  log_path:
    description: Audit log file; missing parent directories are created.
    type: path
    default: ~/.local/state/fleetdeck/audit.log
    env:
      - name: FLEETDECK_AUDIT_LOG
    ini:
      - section: fleetdeck_audit
        key: log_path
author:
  - fleetdeck maintainers (@fleetdeck)
"""

import atexit
import fcntl
import getpass
import json
import os
import socket
from datetime import UTC, datetime

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible.template import Templar
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.run_identity import process_started, run_id

ACTION_VAR = "fleetdeck_audit_action"
LOCK_ACTIONS = ("fleetdeck.lifecycle.instance_lock", "instance_lock")
HOLD_VAR = "rollout_hold"
HOLD_REASON_VAR = "rollout_hold_reason"
HELD_FACT = "_rollout_held"  # set by the hold check just before it leaves the instance out
RING_GROUP = "rollout_ring_"
ARGSPEC_ACTIONS = ("ansible.builtin.validate_argument_spec", "validate_argument_spec")
ANALYSIS_ACTIONS = ("fleetdeck.lifecycle.canary_analysis", "canary_analysis")
ANALYSIS_FIELDS = ("baseline_version", "decision", "reason", "baseline_instances", "intervals")


def _operator():
    if os.environ.get("FLEETDECK_OPERATOR"):
        return os.environ["FLEETDECK_OPERATOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _now():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _result(summary):
    if summary["unreachable"]:
        return "unreachable"
    if summary["failures"]:
        return "failed"
    if summary["changed"]:
        return "changed"
    return "ok" if summary["ok"] else "skipped"


def _planning(task):
    """A controller-side task of a plan (an argument check, a run_once task delegated elsewhere): it does not
    reach the instance it runs for."""
    return task.action in ARGSPEC_ACTIONS or bool(task.run_once and task.delegate_to)


def _true(value):
    return str(value).lower() in ("true", "yes", "1")


def _version(value):
    """Only plain scalars are written; anything else could carry more than a version."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleetdeck.lifecycle.audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pid = os.getpid()
        self._run = run_id(socket.gethostname(), pid, process_started(pid) or 0)
        self._playbook = None
        self._play = None
        self._action = None
        self._hosts = {}  # host name -> {"host", "play", "actions", "version_from"}
        self._inventory = None
        self._targeted = set()
        self._ended = False
        atexit.register(self._interrupted)

    def v2_playbook_on_start(self, playbook):
        self._playbook = os.path.basename(playbook._file_name)

    def _common(self):
        return {"operator": _operator(), "source": os.environ.get("FLEETDECK_RUN_SOURCE") or "cli",
                "playbook": self._playbook}

    def v2_playbook_on_play_start(self, play):
        # Called once per serial batch, each time with a fresh copy of the play.
        self._play = play
        raw = play.get_vars().get(ACTION_VAR)
        self._action = None
        if not raw:
            return
        variables = play.get_variable_manager().get_vars(play=play, include_hostvars=False)
        templar = Templar(loader=play.get_loader(), variables=variables)
        self._action = str(templar.template(raw))
        # The play's whole host list (every batch), so that the summary also names instances never reached.
        self._inventory = play.get_variable_manager()._inventory
        pattern = templar.template(play.hosts)
        targeted = {h.name for h in self._inventory.get_hosts(pattern, ignore_restrictions=True)}
        new = sorted(targeted - self._targeted)
        self._targeted |= targeted
        lines = []
        if new:
            lines.append(dict(self._line("start"), **self._common(), action=self._action, instances=new,
                              check_mode=self._check_mode()))
        batch = [h.name for h in self._inventory.get_hosts(pattern)]
        rings = list(dict.fromkeys(ring for ring in map(self._ring, batch) if ring))
        if rings:
            lines.append(dict(self._line("batch"), action=self._action, ring="+".join(rings), instances=batch))
        if lines:
            self._write(lines)

    def _ring(self, name):
        """The release ring of an instance in this run (its group rollout_ring_<name>), or None."""
        host = self._inventory.get_host(name) if self._inventory else None
        groups = [group.name for group in host.get_groups()] if host else []
        return next((group[len(RING_GROUP):] for group in groups if group.startswith(RING_GROUP)), None)

    def _line(self, event):
        return {"event": event, "run": self._run, "time": _now()}

    @staticmethod
    def _check_mode():
        return bool(context.CLIARGS.get("check", False))

    def _seen(self, host, task=None):
        if self._action is None or (task is not None and _planning(task)):
            return None
        entry = self._hosts.setdefault(host.name, {"host": host, "actions": [], "version_from": None})
        entry["play"] = self._play
        if self._action not in entry["actions"]:
            entry["actions"].append(self._action)
        return entry

    def v2_runner_on_start(self, host, task):
        self._seen(host, task)

    def v2_runner_on_ok(self, result):
        entry = self._seen(result.host, result.task)
        if entry and result.task.action in LOCK_ACTIONS and result.task.args.get("state", "acquired") == "acquired":
            self._locked(entry, result.result)
        if entry and result.task.action in ANALYSIS_ACTIONS and "decision" in result.result:
            self._write([dict(self._line("analysis"), instance=entry["host"].name,
                              version=self._running_version(entry), ring=self._ring(entry["host"].name),
                              **{key: result.result.get(key) for key in ANALYSIS_FIELDS})])

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._seen(result.host)

    def v2_runner_on_skipped(self, result):
        self._seen(result.host, result.task)

    def v2_runner_on_unreachable(self, result):
        self._seen(result.host)

    def _locked(self, entry, result):
        entry["version_from"] = self._running_version(entry)
        dead = result.get("took_over")
        self._write([dict(self._line("locked"), instance=entry["host"].name, version_from=entry["version_from"],
                          took_over=dict(dead, run=run_id(dead.get("controller"), dead.get("pid"),
                                                          dead.get("pid_started"))) if dead else None,
                          ring=self._ring(entry["host"].name))])

    def _host_var(self, entry, name):
        """A variable of the host as the run knows it now (None when undefined or unreadable)."""
        play = entry["play"]
        variables = play.get_variable_manager().get_vars(play=play, host=entry["host"], include_hostvars=False)
        if name not in variables:
            return None
        try:
            return Templar(loader=play.get_loader(), variables=variables).template(variables[name])
        except Exception as e:  # a broken template must not cost the audit line
            self._display.warning(f"fleetdeck audit: cannot read {name} of {entry['host'].name}: {e}")
            return None

    def _held(self, entry):
        """The reason an instance is held on its release (rollout_hold), or None when it is not held."""
        if not _true(self._host_var(entry, HOLD_VAR)):
            return None
        return _version(self._host_var(entry, HOLD_REASON_VAR)) or "no reason given"

    def _running_version(self, entry):
        """ansible_local.app.current of the host as the run knows it now."""
        play = entry["play"]
        variables = play.get_variable_manager().get_vars(play=play, host=entry["host"], include_hostvars=False)
        try:
            local = Templar(loader=play.get_loader(), variables=variables).template(variables.get("ansible_local"))
            return _version(local["app"]["current"])
        except (KeyError, TypeError):
            return None
        except Exception as e:  # a broken template must not cost the audit line
            self._display.warning(f"fleetdeck audit: cannot read the release of {entry['host'].name}: {e}")
            return None

    def v2_playbook_on_stats(self, stats):
        lines = self._end(stats)
        if lines:
            self._show_summary([line for line in lines if line["instance"]])

    def _interrupted(self):
        """At exit without a recap (interrupted, or a fatal error): the run still gets its end lines."""
        if not self._ended:
            self._end(None)

    def _end(self, stats):
        self._ended = True
        if not self._targeted:
            return []
        lines = []
        for name in sorted(self._hosts):
            entry = self._hosts[name]
            summary = stats.summarize(name) if stats else None
            version_to = self._running_version(entry)
            lines.append(dict(
                self._line("end"), **self._common(), action="+".join(entry["actions"]), instance=name,
                version_from=entry["version_from"] or version_to, version_to=version_to,
                result="held" if _true(self._host_var(entry, HELD_FACT)) else _result(summary) if summary
                else "interrupted",
                changed=summary["changed"] if summary else None, check_mode=self._check_mode(),
                held=self._held(entry), ring=self._ring(name)))
        if not lines:  # no audited play reached a host: still say that the run ended
            lines.append(dict(self._line("end"), **self._common(), action=None, instance=None, version_from=None,
                              version_to=None, result="skipped", changed=0, check_mode=self._check_mode()))
        self._write(lines)
        return lines

    def _show_summary(self, records):
        """Which instance is on which version now: the answer an operator needs after a stopped rollout."""
        rows = [(r["instance"], r["ring"], r["result"], r["version_from"] or "-",
                 (r["version_to"] or "-") + (f" (held: {r['held']})" if r["held"] else "")) for r in records]
        rows += [(name, self._ring(name), "not started", "-", "unchanged")
                 for name in sorted(self._targeted - set(self._hosts))]
        ringed = any(row[1] for row in rows)  # a RING column only for runs with release rings
        self._display.banner(f"FLEETDECK SUMMARY ({self._playbook})")
        for instance, ring, *columns in [("INSTANCE", "RING", "RESULT", "FROM", "NOW"), *rows]:
            ring = f"{ring or '-':<12} " if ringed else ""
            self._display.display(f"{instance:<20} {ring}{columns[0]:<12} {columns[1]:<12} {columns[2]}")

    def _write(self, records):
        path = self.get_option("log_path")
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # Held while these lines are written, so that they stay together; closing releases it.
                fcntl.flock(fd, fcntl.LOCK_EX)
                for record in records:
                    os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as e:
            self._display.warning(f"fleetdeck audit: could not append to {path}: {e}")
