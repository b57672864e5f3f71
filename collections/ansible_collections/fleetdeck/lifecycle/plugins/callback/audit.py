# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
name: audit
type: aggregate
short_description: Append one JSON line per host to an audit log for mutating playbooks
version_added: 0.1.0
description:
  - At the end of each playbook run, appends one JSON line per audited host to an append-only log on
    the controller.
  - Only plays that set the play variable C(fleetdeck_audit_action) (for example V(upgrade)) are audited;
    a host gets a line when it ran a task in such a play. Its C(result) and C(changed) count cover the
    whole playbook run of that host, as in the play recap.
  - "Line fields: C(time) (UTC, end of run), C(operator) (env E(FLEETDECK_OPERATOR), else the login user),
    C(source) (env E(FLEETDECK_RUN_SOURCE), default V(cli)), C(playbook) (basename), C(action) (several
    actions joined with V(+)), C(instance), C(version_from), C(version_to), C(result) (V(ok), V(changed),
    V(failed), V(unreachable) or V(skipped)), C(changed) (number of changed tasks), C(check_mode)."
  - C(version_from) and C(version_to) come from the host variables C(fleetdeck_audit_version_from) and
    C(fleetdeck_audit_version_to), typically set by roles with M(ansible.builtin.set_fact); V(null) when
    unset. No other variable value is ever written.
  - The log is opened with O_APPEND, created with mode 0600, and locked with flock while a run's lines are
    written, so concurrent runs never interleave.
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

import fcntl
import getpass
import json
import os
from datetime import UTC, datetime

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible.template import Templar

ACTION_VAR = "fleetdeck_audit_action"
VERSION_VARS = ("fleetdeck_audit_version_from", "fleetdeck_audit_version_to")


def _operator():
    if os.environ.get("FLEETDECK_OPERATOR"):
        return os.environ["FLEETDECK_OPERATOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _result(summary):
    if summary["unreachable"]:
        return "unreachable"
    if summary["failures"]:
        return "failed"
    if summary["changed"]:
        return "changed"
    return "ok" if summary["ok"] else "skipped"


def _version(value):
    """Only plain scalars are written; anything else could carry more than a version."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    return None


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleetdeck.lifecycle.audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._start_playbook(None)

    def _start_playbook(self, name):
        self._playbook = name
        self._play = None
        self._action = None
        self._hosts = {}  # host name -> {"host", "play", "actions"}
        self._targeted = set()

    def v2_playbook_on_start(self, playbook):
        self._start_playbook(os.path.basename(playbook._file_name))

    def v2_playbook_on_play_start(self, play):
        # Called once per serial batch, each time with a fresh copy of the play.
        self._play = play
        raw = play.get_vars().get(ACTION_VAR)
        if raw:
            variables = play.get_variable_manager().get_vars(play=play, include_hostvars=False)
            templar = Templar(loader=play.get_loader(), variables=variables)
            raw = templar.template(raw)
            # The play's whole host list, so that the summary also names instances never reached.
            inventory = play.get_variable_manager()._inventory
            self._targeted.update(h.name for h in inventory.get_hosts(templar.template(play.hosts)))
        self._action = str(raw) if raw else None

    def _seen(self, host):
        if self._action is None:
            return
        entry = self._hosts.setdefault(host.name, {"host": host, "actions": []})
        entry["play"] = self._play
        if self._action not in entry["actions"]:
            entry["actions"].append(self._action)

    def v2_runner_on_start(self, host, task):
        self._seen(host)

    def v2_runner_on_ok(self, result):
        self._seen(result.host)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._seen(result.host)

    def v2_runner_on_skipped(self, result):
        self._seen(result.host)

    def v2_runner_on_unreachable(self, result):
        self._seen(result.host)

    def _versions(self, entry):
        play = entry["play"]
        variables = play.get_variable_manager().get_vars(
            play=play, host=entry["host"], include_hostvars=False
        )
        templar = Templar(loader=play.get_loader(), variables=variables)
        versions = []
        for name in VERSION_VARS:
            try:
                versions.append(_version(templar.template(variables.get(name))))
            except Exception as e:  # a broken template must not cost the audit line
                self._display.warning(f"fleetdeck audit: cannot read {name} of {entry['host'].name}: {e}")
                versions.append(None)
        return versions

    def v2_playbook_on_stats(self, stats):
        if not self._hosts:
            return
        common = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "operator": _operator(),
            "source": os.environ.get("FLEETDECK_RUN_SOURCE") or "cli",
            "playbook": self._playbook,
        }
        check_mode = bool(context.CLIARGS.get("check", False))
        lines = []
        for name in sorted(self._hosts):
            entry = self._hosts[name]
            summary = stats.summarize(name)
            version_from, version_to = self._versions(entry)
            record = dict(
                common,
                action="+".join(entry["actions"]),
                instance=name,
                version_from=version_from,
                version_to=version_to,
                result=_result(summary),
                changed=summary["changed"],
                check_mode=check_mode,
            )
            lines.append(json.dumps(record) + "\n")
        self._append(lines)
        self._show_summary([json.loads(line) for line in lines])

    def _show_summary(self, records):
        """Which instance is on which version now: the answer an operator needs after a stopped rollout."""
        rows = [(r["instance"], r["result"], r["version_from"] or "-", r["version_to"] or "-") for r in records]
        rows += [(name, "not started", "-", "unchanged") for name in sorted(self._targeted - set(self._hosts))]
        self._display.banner(f"FLEETDECK SUMMARY ({self._playbook})")
        self._display.display(f"{'INSTANCE':<20} {'RESULT':<12} {'FROM':<12} NOW")
        for row in rows:
            self._display.display(f"{row[0]:<20} {row[1]:<12} {row[2]:<12} {row[3]}")

    def _append(self, lines):
        path = self.get_option("log_path")
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # Hold the lock for the whole run so its lines stay together; closing releases it.
                fcntl.flock(fd, fcntl.LOCK_EX)
                for line in lines:
                    os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as e:
            self._display.warning(f"fleetdeck audit: could not append to {path}: {e}")
