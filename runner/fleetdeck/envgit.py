"""An environment that is a git repository of its own gets a commit for every change fleetdeck makes to it
(files.env_lock(env, change=...)): the inventory's history is the repository's. Only the environment's own
repository counts, not one that merely contains it (the fleetdeck clone ignores /inventory/*). A commit that
fails leaves the change in place, uncommitted, with a warning: the files were already written durably."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)
# Used only when git has no identity configured (a runner's service user often has none).
FALLBACK_IDENTITY = ("-c", "user.name=fleetdeck", "-c", "user.email=fleetdeck@localhost")


def _git(env: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(env), *args], capture_output=True, text=True, check=False)


def is_repository(env: Path) -> bool:
    try:
        top = _git(env, "rev-parse", "--show-toplevel")
    except FileNotFoundError:  # no git on this machine: nothing to commit to
        return False
    return top.returncode == 0 and Path(top.stdout.strip()).resolve() == env.resolve()


def commit(env: Path, message: str) -> str | None:
    """Commit everything that changed in `env` (new, changed and removed files; .gitignore applies) with
    `message`; the new commit's id, or None (not a repository of its own, nothing changed, or git failed)."""
    if not env.is_dir() or not is_repository(env):
        return None
    added = _git(env, "add", "--all", "--", ".")
    if added.returncode == 0 and _git(env, "diff", "--cached", "--quiet", "--", ".").returncode == 0:
        return None  # nothing to commit
    identity = () if _git(env, "config", "user.email").stdout.strip() else FALLBACK_IDENTITY
    done = added if added.returncode else _git(env, *identity, "commit", "--quiet", "-m", message, "--", ".")
    if done.returncode:
        log.warning("%s: the change is written but not committed (git: %s)", env, done.stderr.strip()[-300:])
        return None
    return _git(env, "rev-parse", "HEAD").stdout.strip()
