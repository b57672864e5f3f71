"""`fleetdeck-runner` serves the API and the console (see serving.py); `fleetdeck-runner hash-token` hashes a
token, `fleetdeck-runner hash-password` a console password (both read stdin)."""

from __future__ import annotations

import hashlib
import logging
import sys

from werkzeug.security import generate_password_hash

from .config import ConfigError, check_secret, from_env
from .secret_rules import ASCII_WHITESPACE
from .serving import RunnerServer
from .store import StoreUnavailable, open_store


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if argv == ["hash-token"]:
            token = sys.stdin.readline().strip(ASCII_WHITESPACE)
            print(hashlib.sha256(check_secret("token", token, bearer=True).encode()).hexdigest())
            return 0
        if argv == ["hash-password"]:
            password = sys.stdin.readline().strip(ASCII_WHITESPACE)
            print(generate_password_hash(check_secret("password", password), method="scrypt"))
            return 0
        if argv:
            print("usage: fleetdeck-runner [hash-token | hash-password]", file=sys.stderr)
            return 2
        settings = from_env()
        open_store(settings).close()  # here, not in the worker: a clear exit 2 (and migrated before it)
    except (ConfigError, OSError, StoreUnavailable) as exc:
        print(f"fleetdeck-runner: refusing to start: {exc}", file=sys.stderr)
        return 2
    RunnerServer(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
