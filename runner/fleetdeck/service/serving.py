"""How the API is served: gunicorn with ONE gevent worker (see docs/runner.md, "Serving").

Every connection is a greenlet, so open event streams and clients that send their request slowly cost a
little memory each instead of a thread; the runs, leases and the executor stay in that one process. The
worker also answers the server's own errors (bad request line, headers too large ...) in the API's JSON
error shape, and on SIGTERM stops the runs before it waits for connections.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

import gevent
import psycopg.waiting
from gevent import monkey, socket
from gunicorn.app.base import BaseApplication
from gunicorn.http import errors as http
from gunicorn.workers.ggevent import GeventWorker

from .config import Settings

log = logging.getLogger("fleetdeck.runner")
# Requests already being answered when the runs have stopped get this long before connections are closed.
DRAIN_SECONDS = 2.0
LINGER_SECONDS = 2.0
STATUS = {
    http.LimitRequestLine: (414, "uri_too_long"),
    http.LimitRequestHeaders: (431, "request_header_fields_too_large"),
    http.ExpectationFailed: (417, "expectation_failed"),
    http.UnsupportedTransferCoding: (501, "not_implemented"),
    http.ForbiddenProxyRequest: (403, "forbidden"),
}
REASONS = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long", 417: "Expectation Failed"}
REASONS |= {431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented"}


def error_response(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying the API's error shape (see errors.py)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class RunnerWorker(GeventWorker):
    def patch(self):
        # Not `os` (nor `signal` and `subprocess`, which rely on it): gevent's fork makes pexpect's pty
        # spawn, how ansible-runner starts ansible-playbook, wait forever for the child's exec. pexpect
        # needs only select() on the pty to cooperate, and that is patched. subprocess serves only the short
        # git calls of an inventory change (fleetdeck.envgit), which hold the worker for milliseconds.
        monkey.patch_all(os=False, signal=False, subprocess=False)
        # psycopg picked its C wait (it blocks the worker) when the master imported it before the patch; its
        # select() wait yields to other greenlets now that select is gevent's.
        psycopg.waiting.wait = psycopg.waiting.wait_select
        self.sockets = [
            socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets
        ]

    def handle_exit(self, sig, frame):
        if self.alive:
            super().handle_exit(sig, frame)  # stops accepting; the run loop then waits for connections
            gevent.spawn(self._stop_runs)  # not in the signal handler: this blocks

    def _stop_runs(self):
        """Runs end `interrupted` and leases are freed within the cancel grace, then event streams get
        their final event and end; connections still open after a short drain (slow clients) are closed."""
        self.wsgi.extensions["fleetdeck"].executor.shutdown()
        gevent.sleep(DRAIN_SECONDS)
        self.cfg.set("graceful_timeout", 0)

    def handle_error(self, req, client, addr, exc):
        internal = not isinstance(exc, http.ParseException) or isinstance(
            exc, http.InvalidResponseHeader | http.InvalidResponseHeaderName | http.ConfigurationProblem
        )
        if internal:
            log.error("error handling a request", exc_info=exc)
            status, code, message = 500, "internal_error", "the runner failed to answer this request"
        else:
            status, code = next((v for k, v in STATUS.items() if isinstance(exc, k)), (400, "bad_request"))
            message = f"{type(exc).__name__}: {exc}"
            log.warning("invalid request from %s: %s", (addr or ("",))[0], message)
        with contextlib.suppress(OSError):  # the client may be gone already
            client.sendall(error_response(status, code, message))
            _linger(client)


def _linger(client) -> None:
    """Read what the client still sends (briefly): closing with unread input resets the connection,
    and the client could lose the answer."""
    client.shutdown(socket.SHUT_WR)
    client.settimeout(0.5)
    deadline = time.monotonic() + LINGER_SECONDS
    while time.monotonic() < deadline and client.recv(65536):
        pass


class RunnerServer(BaseApplication):
    """One worker: runs, leases and event streams live in one process (see docs/runner.md)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self):
        for key, value in {
            "bind": self.settings.bind,
            "workers": 1,
            "worker_class": f"{__name__}.RunnerWorker",
            "worker_connections": self.settings.connections,
            "timeout": 60,
            # The worker stops its runs first (cancel grace), then drains: the arbiter waits for both.
            "graceful_timeout": int(self.settings.cancel_grace) + 15,
            "accesslog": "-",
            "errorlog": "-",
            "worker_exit": _worker_exit,
            "proc_name": "fleetdeck-runner",
            "control_socket_disable": True,  # unused, and its default path in ~ is shared by every instance
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app  # in the worker, after gevent has patched the standard library

        return create_app(self.settings)


def _worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    if app is not None and "fleetdeck" in getattr(app, "extensions", {}):
        app.extensions["fleetdeck"].executor.shutdown()
