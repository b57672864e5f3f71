"""Durable file updates: a reader sees the old content or the new, never a torn file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fleetdeck import envgit


@contextlib.contextmanager
def _aside(path: Path, data: bytes, mode: int) -> Iterator[str]:
    """A new hidden file beside `path` holding `data`, flushed to disk; removed after the block unless it was
    renamed away."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # hidden: Ansible skips dotfiles
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # independent of the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create `path` (FileExistsError if it exists) with `data`, flushed to disk. Written whole beside it, then
    linked into place: a reader, or a run after a crash, finds no file or all of it, never an empty one."""
    with _aside(path, data, mode) as tmp:
        crash_point("write_new:written")
        os.link(tmp, path)


def replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace (or create) `path` with `data`."""
    with _aside(path, data, mode) as tmp:
        os.replace(tmp, path)
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
