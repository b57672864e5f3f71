"""Outbound run-completion callbacks to the hub: HMAC-signed, timestamped, retried with exponential
backoff, every delivery and attempt recorded in the store (pending ones resume after a restart)."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid

from .store import Store

log = logging.getLogger("fleetdeck.runner.hub")
RUN_FIELDS = (
    "id",
    "action",
    "target",
    "check",
    "status",
    "rc",
    "reason",
    "hosts",
    "created",
    "started",
    "finished",
)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """sha256=HEX(HMAC-SHA256(secret, "<timestamp>." + body)): the timestamp is covered by the signature."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class HubNotifier:
    def __init__(self, store: Store, url: str, secret: str, attempts: int, backoff: float):
        self.store, self.url, self.secret = store, url, secret
        self.attempts, self.backoff = attempts, backoff
        self._due: list[tuple[float, str]] = []
        self._wake = threading.Condition()
        for pending in store.callbacks(state="pending"):
            self._schedule(pending["id"], 0)
        threading.Thread(target=self._loop, name="hub-callbacks", daemon=True).start()

    def run_finished(self, run: dict) -> None:
        body = json.dumps({"event": "run.finished", "run": {k: run[k] for k in RUN_FIELDS}}, sort_keys=True)
        callback_id = str(uuid.uuid4())
        self.store.add_callback(callback_id, run["id"], self.url, body)
        self._schedule(callback_id, 0)

    def _schedule(self, callback_id: str, delay: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + delay, callback_id))
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, callback_id = heapq.heappop(self._due)
            self._attempt(callback_id)

    def _attempt(self, callback_id: str) -> None:
        [callback] = [c for c in self.store.callbacks(state="pending") if c["id"] == callback_id] or [None]
        if callback is None:
            return
        attempt = callback["attempts"] + 1
        body = callback["body"].encode()
        timestamp = str(int(time.time()))
        request = urllib.request.Request(  # noqa: S310 - the hub URL is operator configuration
            callback["url"],
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "fleetdeck-runner",
                "X-Fleetdeck-Event": "run.finished",
                "X-Fleetdeck-Delivery": callback_id,
                "X-Fleetdeck-Timestamp": timestamp,
                "X-Fleetdeck-Signature": sign(self.secret, timestamp, body),
            },
        )
        status, error = None, None
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - URL from operator config
                status = response.status
        except urllib.error.HTTPError as exc:
            status, error = exc.code, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            error = str(getattr(exc, "reason", exc))
        if status is not None and 200 <= status < 300:
            self.store.update_callback(callback_id, "delivered", attempt, status, None)
        elif attempt >= self.attempts:
            log.warning(
                "callback %s for run %s failed after %d attempts: %s",
                callback_id,
                callback["run_id"],
                attempt,
                error,
            )
            self.store.update_callback(callback_id, "failed", attempt, status, error)
        else:
            self.store.update_callback(callback_id, "pending", attempt, status, error)
            self._schedule(callback_id, self.backoff * 2 ** (attempt - 1))
