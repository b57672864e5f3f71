"""Durable file updates: a reader sees the old content or the new, never a torn file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from fleetdeck import envgit


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create `path` (it must not exist) with `data`, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # independent of the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace (or create) `path` with `data`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # hidden: Ansible skips dotfiles
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        write_new(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    sync_dir(path.parent)


def sync_dir(path: Path) -> None:
    """Make renames and creations in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def env_lock(env: Path, change: str | None = None) -> Iterator[None]:
    """Serialise fleetdeck commands that change one environment (held next to it, so also for new ones).
    With `change` (what the block does, in words), an environment that is a git repository of its own gets
    a commit of what the block changed, still under the lock (fleetdeck.envgit)."""
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f".{env.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        if change:
            envgit.commit(env, change)


CRASH_HOOK = "FLEETDECK_TEST_CRASH_AT"


def crash_point(step: str) -> None:
    """Test hook: FLEETDECK_TEST_CRASH_AT=<step> kills the process here, as a power cut would."""
    if os.environ.get(CRASH_HOOK) == step:
        os.kill(os.getpid(), signal.SIGKILL)
