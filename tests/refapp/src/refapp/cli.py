"""Command line: `refapp serve | migrate | migrate-down | version`."""

import argparse
import logging
import os
import signal
import sys
import threading
from contextlib import closing

from refapp import db, release
from refapp.config import DB_REQUIRED, SERVE_REQUIRED, ConfigError, load
from refapp.server import make_server


def serve() -> int:
    cfg = load(os.environ, SERVE_REQUIRED)
    if not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"REFAPP_DATA_DIR is not a directory: {cfg.data_dir}")
    logging.basicConfig(level=cfg.log_level, format="%(levelname)s %(name)s: %(message)s")

    current = release.current()
    server = make_server(cfg, current)

    # shutdown() waits for serve_forever() to return, so it must not run in the
    # main thread, which is the one serve_forever() and the signal handler use.
    def stop(signum: int, _frame: object) -> None:
        logging.getLogger("refapp").info("received %s, stopping", signal.Signals(signum).name)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("refapp").info(
        "refapp %s (instance %s, schema %d) listening on %s:%d",
        current.version,
        cfg.instance,
        current.schema,
        cfg.listen_host,
        cfg.listen_port,
    )
    with server:
        server.serve_forever()
    return 0


def migrate(down: bool = False) -> int:
    cfg = load(os.environ, DB_REQUIRED)
    current = release.current()
    try:
        applied = (db.migrate_down if down else db.migrate)(cfg, report=print)
        with closing(db.connect(cfg)) as conn:
            level = db.schema_level(conn)
    except db.MigrationError as exc:
        print(f"refapp migrate: {exc}", file=sys.stderr)
        return 1
    except (db.Error, OSError) as exc:
        print(
            f"refapp migrate: cannot reach database {cfg.db_name!r} at {cfg.db_host}:{cfg.db_port}: "
            f"{db.describe(exc)}",
            file=sys.stderr,
        )
        return 1
    if not applied:
        print(f"nothing to {'revert' if down else 'apply'}; schema level {level}")
    elif down:
        print(f"schema level {level}")
    if not down and level < current.schema:
        # Not fatal here: the release still starts and /health reports the gap.
        print(
            f"warning: release {current.version} requires schema {current.schema} "
            f"but ships migrations only up to {level}",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refapp", description="fleetdeck reference application")
    parser.add_argument("command", choices=("serve", "migrate", "migrate-down", "version"))
    args = parser.parse_args(argv)
    if args.command == "version":
        print(release.current().version)
        return 0
    try:
        return serve() if args.command == "serve" else migrate(down=args.command == "migrate-down")
    except ConfigError as exc:
        print(f"refapp {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
