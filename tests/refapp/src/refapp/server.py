"""HTTP endpoints: /health, /metrics, /items, /whoami."""

import collections
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from refapp import db
from refapp.config import Config
from refapp.metrics import Metrics
from refapp.release import Release

log = logging.getLogger("refapp.http")
MAX_BODY = 64 * 1024
ITEM_PATH = re.compile(r"/items/(\d{1,9})")
# errors_under_load: once more than LOAD_THRESHOLD API requests arrived within the last LOAD_WINDOW
# seconds, every other API request fails with 500. /health and /metrics are never affected, so the release looks fine
# to a health check and only its error rate under traffic gives it away.
LOAD_THRESHOLD = 4
LOAD_WINDOW = 2.0


class Response(Exception):
    """Raised by handlers to answer early (errors) or returned as the answer."""

    def __init__(self, status: int, body: object, content_type: str = "application/json"):
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers: dict[str, str] = {}


class App:
    def __init__(self, cfg: Config, release: Release):
        self.cfg = cfg
        self.release = release
        self.items = db.Items(release.schema)
        self.metrics = Metrics(release.version, cfg.instance)
        self._recent: collections.deque[float] = collections.deque()
        self._fault_lock = threading.Lock()
        self._overloaded = 0

    def fails_under_load(self) -> bool:
        """True for every other API request while more than LOAD_THRESHOLD arrived within LOAD_WINDOW."""
        if "errors_under_load" not in self.release.faults:
            return False
        now = time.monotonic()
        with self._fault_lock:
            self._recent.append(now)
            while self._recent[0] < now - LOAD_WINDOW:
                self._recent.popleft()
            if len(self._recent) <= LOAD_THRESHOLD:
                return False
            self._overloaded += 1
            return self._overloaded % 2 == 0

    def token_kind(self, authorization: str) -> str | None:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        presented_bytes = presented.strip().encode()
        kind = None
        # Compare against every accepted token so timing does not reveal which one matched.
        for previous in self.cfg.previous_tokens:
            if hmac.compare_digest(presented_bytes, previous.encode()):
                kind = "previous"
        if hmac.compare_digest(presented_bytes, self.cfg.api_token.encode()):
            kind = "current"
        return kind

    def health(self) -> dict:
        report = {
            "status": "failing",
            "version": self.release.version,
            "instance": self.cfg.instance,
            "database": "unreachable",
            "schema": None,
            "expected_schema": self.release.schema,
            "features": list(self.cfg.features),
        }
        try:
            conn = db.connect(self.cfg)
        except (db.Error, OSError) as exc:
            report["reason"] = f"database: {db.describe(exc)}"
            return report
        report["database"] = "reachable"
        with closing(conn):
            try:
                level = report["schema"] = db.schema_level(conn)
                if level < self.release.schema:
                    report["reason"] = (
                        f"schema level {level} is behind {self.release.schema} required by this release"
                    )
                    return report
                # A newer schema (after a rollback) is fine as long as our columns are there.
                self.items.probe(conn)
            except db.Error as exc:
                report["reason"] = f"schema check: {db.describe(exc)}"
                return report
        report["status"] = "ok"
        return report

    def render_metrics(self) -> str:
        try:
            with closing(db.connect(self.cfg)) as conn:
                items = self.items.count(conn)
        except (db.Error, OSError):
            return self.metrics.render(items=None, database_up=False)
        return self.metrics.render(items=items, database_up=True)

    def create_item(self, name: str) -> dict:
        """Row and file are written together: the row is committed only once the file exists."""
        items_dir = Path(self.cfg.data_dir, "items")
        items_dir.mkdir(exist_ok=True)
        with closing(db.connect(self.cfg)) as conn:
            conn.run("START TRANSACTION")
            try:
                item = self.items.insert(conn, name)
                tmp = items_dir / f".{item['id']}.json.tmp"
                tmp.write_text(json.dumps(item, indent=2) + "\n")
                os.replace(tmp, items_dir / f"{item['id']}.json")
                conn.run("COMMIT")
            except BaseException:
                conn.run("ROLLBACK")
                raise
        return item


def route_of(path: str) -> str:
    """The route label for metrics: never the raw URL, to keep label cardinality bounded."""
    if path in ("/health", "/metrics", "/items", "/whoami"):
        return path
    if ITEM_PATH.fullmatch(path):
        return "/items/{id}"
    return "other"


class Handler(BaseHTTPRequestHandler):
    server_version = "refapp"
    sys_version = ""
    app: App  # set by make_server

    def do_GET(self) -> None:
        self.handle_request("GET")

    def do_POST(self) -> None:
        self.handle_request("POST")

    def do_PUT(self) -> None:
        self.handle_request("PUT")

    def do_DELETE(self) -> None:
        self.handle_request("DELETE")

    def handle_request(self, method: str) -> None:
        started = time.monotonic()
        path = self.path.split("?", 1)[0]
        route = route_of(path)
        try:
            response = self.dispatch(method, path, route)
        except Response as early:
            response = early
        except (db.Error, OSError) as exc:
            log.warning("%s %s: database unavailable: %s", method, route, db.describe(exc))
            response = Response(503, {"error": "database unavailable"})
        except Exception:
            log.exception("%s %s failed", method, route)
            response = Response(500, {"error": "internal error"})
        self.send(response)
        self.app.metrics.observe(method, route, response.status, time.monotonic() - started)

    def dispatch(self, method: str, path: str, route: str) -> Response:
        allowed = {
            "/health": ("GET",),
            "/metrics": ("GET",),
            "/whoami": ("GET",),
            "/items": ("GET", "POST"),
            "/items/{id}": ("GET",),
        }.get(route)
        if allowed is None:
            raise Response(404, {"error": "not found"})
        if method not in allowed:
            error = Response(405, {"error": "method not allowed"})
            error.headers["Allow"] = ", ".join(allowed)
            raise error

        if route == "/health":
            report = self.app.health()
            return Response(200 if report["status"] == "ok" else 503, report)
        if route == "/metrics":
            return Response(200, self.app.render_metrics(), "text/plain; version=0.0.4; charset=utf-8")

        if self.app.fails_under_load():
            raise Response(500, {"error": "internal error"})
        kind = self.app.token_kind(self.headers.get("Authorization", ""))
        if kind is None:
            error = Response(401, {"error": "missing or invalid bearer token"})
            error.headers["WWW-Authenticate"] = 'Bearer realm="refapp"'
            raise error
        if route == "/whoami":
            return Response(200, {"token": kind})
        if route == "/items/{id}":
            with closing(db.connect(self.app.cfg)) as conn:
                item = self.app.items.get(conn, int(path.rsplit("/", 1)[1]))
            if item is None:
                raise Response(404, {"error": "no such item"})
            return Response(200, item)
        if method == "GET":
            with closing(db.connect(self.app.cfg)) as conn:
                return Response(200, {"items": self.app.items.all(conn)})
        return Response(201, self.app.create_item(self.read_name()))

    def read_name(self) -> str:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise Response(411, {"error": "Content-Length required"})
        if int(length) > MAX_BODY:
            raise Response(413, {"error": "body too large"})
        try:
            name = json.loads(self.rfile.read(int(length)))["name"]
        except (ValueError, TypeError, KeyError):
            raise Response(400, {"error": 'body must be JSON like {"name": "..."}'}) from None
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise Response(400, {"error": "name must be a non-empty string of at most 200 characters"})
        return name.strip()

    def send(self, response: Response) -> None:
        if isinstance(response.body, str):
            body = response.body.encode()
        else:
            body = (json.dumps(response.body) + "\n").encode()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)


def make_server(cfg: Config, release: Release) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": App(cfg, release)})
    server_class = ThreadingHTTPServer
    if ":" in cfg.listen_host:
        server_class = type(
            "ThreadingHTTPServerV6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6}
        )
    return server_class((cfg.listen_host, cfg.listen_port), handler)
