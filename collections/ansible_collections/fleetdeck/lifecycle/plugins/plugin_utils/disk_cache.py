# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Where the strategy's caches keep their entries, and how: one file per entry in a directory only its owner
can read, written whole or not at all. The disk is best effort: an unreadable or unwritable cache only
means doing the work again."""

from __future__ import annotations

import contextlib
import os
import tempfile


def directory(name: str) -> str:
    """$XDG_CACHE_HOME/fleetdeck/NAME, by default ~/.cache/fleetdeck/NAME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fleetdeck", name)


def read(folder: str, key: str) -> bytes | None:
    try:
        with open(os.path.join(folder, key), "rb") as entry:
            return entry.read()
    except OSError:
        return None


def write(folder: str, key: str, data: bytes) -> None:
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=folder, prefix=".partial-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as entry:
            entry.write(data)
        os.replace(partial, os.path.join(folder, key))
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(partial)
