"""`fleetdeck-runner` serves the API with gunicorn; `fleetdeck-runner hash-token` hashes a token (stdin)."""

from __future__ import annotations

import hashlib
import logging
import sys

from gunicorn.app.base import BaseApplication

from .config import ConfigError, Settings, check_secret, from_env
from .secret_rules import ASCII_WHITESPACE


class RunnerServer(BaseApplication):
    """One worker with threads: runs, leases and event streams live in one process (see docs/runner.md)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self):
        grace = int(self.settings.cancel_grace) + 10
        for key, value in {
            "bind": self.settings.bind,
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.settings.threads,
            "timeout": 60,
            "graceful_timeout": grace,
            "accesslog": "-",
            "errorlog": "-",
            "worker_exit": _worker_exit,
            "proc_name": "fleetdeck-runner",
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app  # in the worker: its threads must not be created before the fork

        return create_app(self.settings)


def _worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    if app is not None and "fleetdeck" in getattr(app, "extensions", {}):
        app.extensions["fleetdeck"].executor.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if argv == ["hash-token"]:
            token = sys.stdin.readline().strip(ASCII_WHITESPACE)
            print(hashlib.sha256(check_secret("token", token, bearer=True).encode()).hexdigest())
            return 0
        if argv:
            print("usage: fleetdeck-runner [hash-token]", file=sys.stderr)
            return 2
        settings = from_env()
    except (ConfigError, OSError) as exc:
        print(f"fleetdeck-runner: refusing to start: {exc}", file=sys.stderr)
        return 2
    RunnerServer(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
