"""Helpers for the unit tests: a scripted local HTTP server, a way to run a module file for real, the
environment for running the ansible CLIs on this collection, and the task workers a killed run left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COLLECTION = Path(__file__).resolve().parents[2]
COLLECTIONS_PATH = COLLECTION.parents[2]


class ScriptedServer:
    """Answers with the scripted (code, body, delay) tuples in order; the last one repeats.

    `routes` maps a path to a function returning (code, body) for answers that are not scripted.
    """

    def __init__(self):
        self.script = [(200, {"status": "ok", "version": "1.2.0"}, 0)]
        self.routes = {}
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                route = server.routes.get(self.path.split("?")[0])
                if route:
                    code, body, delay = (*route(self.path), 0)
                else:
                    index = len(server.requests)
                    server.requests.append(dict(self.headers))
                    code, body, delay = server.script[min(index, len(server.script) - 1)]
                time.sleep(delay)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/health"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def run_module(name, **args):
    """Execute a module file the way ansible-core's debug entry point allows; return (rc, result).

    The collection's parent directory goes on PYTHONPATH so that the module's module_utils imports resolve.
    """
    path = os.pathsep.join(filter(None, [str(COLLECTIONS_PATH), os.environ.get("PYTHONPATH")]))
    module = COLLECTION / "plugins" / "modules" / f"{name}.py"
    proc = subprocess.run(
        [sys.executable, str(module), json.dumps({"ANSIBLE_MODULE_ARGS": args})],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=path), check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


def cli_env(**extra):
    """os.environ with this collection on the collections path, plus `extra`.

    Without PYTHONPATH: ansible-test units puts a modules-only copy of ansible there, which the CLIs cannot run from.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH), **extra)


def leftover_workers(command: bytes) -> list[str]:
    """Processes with a killed ansible-playbook's command line: its task workers, until their task ends."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == command:
                found.append(proc.name)
        except OSError:
            pass
    return found
