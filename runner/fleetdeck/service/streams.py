"""Open Server-Sent Event streams per token: capped, so one caller cannot hold every connection."""

from __future__ import annotations

import threading
from collections import Counter


class StreamSlots:
    def __init__(self, per_token: int):
        self.per_token = per_token
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, token: str) -> bool:
        with self._lock:
            if self._open[token] >= self.per_token:
                return False
            self._open[token] += 1
            return True

    def release(self, token: str) -> None:
        with self._lock:
            self._open[token] -= 1
