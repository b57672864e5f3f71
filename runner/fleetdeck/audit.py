"""Reading the controller's audit log (written by the fleetdeck.lifecycle.audit callback): runs that never ended.

A run writes a `start` line when an audited play starts, a `locked` line per instance as soon as it holds the
instance's lock, and `end` lines when it ends. A run with no `end` line is still running or was killed; the
instances it locked stay marked until a later run locks them (which takes over a dead run's lock).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fleetdeck.errors import Refused

DEFAULT_LOG = "~/.local/state/fleetdeck/audit.log"


def log_path() -> Path:
    """Where the callback writes: $FLEETDECK_AUDIT_LOG, else its default."""
    return Path(os.environ.get("FLEETDECK_AUDIT_LOG") or DEFAULT_LOG).expanduser()


@dataclass
class Run:
    run: str
    started: str
    operator: str
    source: str
    playbook: str
    action: str
    instances: list[str] = field(default_factory=list)  # targeted
    locked: list[str] = field(default_factory=list)  # locked by this run and by no later run


def read(path: Path) -> list[dict]:
    """The log's lines; a missing log is an empty one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError
        except ValueError:
            raise Refused(f"{path}:{number}: not an audit line written by fleetdeck.lifecycle.audit") from None
        records.append(record)
    return records


def unfinished(records: list[dict]) -> list[Run]:
    """Runs that started and never ended, oldest first, each with the instances it still holds locked."""
    runs: dict[str, Run] = {}
    ended: set[str] = set()
    last_lock: dict[str, str] = {}  # instance -> the run that locked it last
    for record in records:
        event, run = record.get("event"), record.get("run")  # lines of older versions have neither: ended runs
        if event == "start":
            entry = runs.setdefault(run, Run(run, record.get("time", "?"), record.get("operator", "?"),
                                             record.get("source", "?"), record.get("playbook", "?"),
                                             record.get("action", "?")))
            entry.instances += [i for i in record.get("instances", []) if i not in entry.instances]
        elif event == "locked":
            last_lock[record["instance"]] = run
        elif event == "end":
            ended.add(run)
    result = [run for key, run in runs.items() if key not in ended]
    for run in result:
        run.locked = sorted(instance for instance, holder in last_lock.items() if holder == run.run)
    return result
