"""What a run on an execution node writes on "the controller" (tasks delegated to localhost run on the node)
comes back with the worker's artifacts and is applied here, so that a node run leaves the controller's
inventory, audit log and backup store as a local run would.

On the node the run's inventory, FLEETDECK_AUDIT_LOG and FLEETDECK_BACKUP_STORE live under RETURNED
(nodes.py), inside the worker's artifact dir: the only part of its private dir the worker streams back at
the end. The executor applies it only when that stream arrived whole and the run was not stopped:
- inventory files the run created or changed replace the controller's, under the environment's lock (and
  committed when the environment is a git repository of its own); a file the controller changed during
  the run is kept as it is and reported as a conflict; files the run deleted stay;
- the run's audit lines are appended to the controller's audit log (locked as the audit callback does);
- new backup files are copied into the store; an existing one is never overwritten.
Only regular files inside their directory count (no symlink, no `.git`, never the vault password file).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from fleetdeck import envgit, files

INVENTORY, AUDIT_LOG, BACKUPS = "inventory", "audit.log", "backups"


@dataclass
class Applied:
    inventory: list[str] = field(default_factory=list)
    audit_lines: int = 0
    backups: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # what was not applied, and why


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _files(top: Path, applied: Applied) -> dict[str, Path]:
    """The regular files under `top` by relative path; symlinks and `.git` are refused (a conflict)."""
    found = {}
    for directory, dirs, names in os.walk(top):
        for name in [*dirs, *names]:
            path = Path(directory, name)
            relative = path.relative_to(top).as_posix()
            if path.is_symlink() or name == ".git":
                applied.conflicts.append(f"{top.name}/{relative}: refused (a symlink or .git)")
                if name in dirs:
                    dirs.remove(name)
            elif path.is_file():
                found[relative] = path
    return found


def snapshot(returned: Path) -> dict[str, str]:
    """Digests of the staged inventory: what the run started from."""
    return {rel: _digest(path) for rel, path in _files(returned / INVENTORY, Applied()).items()}


def _inside(top: Path, relative: str) -> Path | None:
    """`top`/`relative`, unless a symlink of the controller's tree leads it elsewhere."""
    target = top / relative
    return target if target.resolve().is_relative_to(top.resolve()) and not target.is_symlink() else None


def apply(returned: Path, staged: dict[str, str], inventory: Path, password_file: Path | None, audit_log: Path,
          backup_store: Path, change: str) -> Applied:
    applied = Applied()
    secret = password_file.resolve() if password_file else None
    with files.env_lock(inventory):
        for relative, path in sorted(_files(returned / INVENTORY, applied).items()):
            new = _digest(path)
            if new == staged.get(relative):
                continue
            target = _inside(inventory, relative)
            if target is None or target.resolve() == secret:
                why = "outside the inventory" if target is None else "the vault password file"
                applied.conflicts.append(f"inventory/{relative}: refused ({why})")
                continue
            current = _digest(target)
            if current == new:
                continue
            if current != staged.get(relative):
                applied.conflicts.append(f"inventory/{relative}: changed on the controller during the run, kept")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = target.stat().st_mode if current else path.stat().st_mode
            files.replace(target, path.read_bytes(), mode & 0o777)
            applied.inventory.append(relative)
        if applied.inventory:
            envgit.commit(inventory, change)  # as files.env_lock(change=...) would, had anything changed
    lines = (returned / AUDIT_LOG).read_bytes() if (returned / AUDIT_LOG).is_file() else b""
    if lines.strip():
        audit_log.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        fd = os.open(audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # as the audit callback writes: the run's lines stay together
            os.write(fd, lines if lines.endswith(b"\n") else lines + b"\n")
        finally:
            os.close(fd)
        applied.audit_lines = len(lines.strip().splitlines())
    for relative, path in sorted(_files(returned / BACKUPS, applied).items()):
        target = _inside(backup_store, relative)
        if target is None or target.exists():
            if target is None or _digest(target) != _digest(path):
                applied.conflicts.append(f"backups/{relative}: already in the store or outside it, kept")
            continue
        target.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        files.write_new(target, path.read_bytes(), path.stat().st_mode & 0o777)
        applied.backups.append(relative)
    return applied
