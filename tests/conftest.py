"""Shared fixtures: one real test fleet per test module, torn down even when tests fail.

Set FLEETDECK_TEST_FLEET to give concurrent test runs on one machine distinct fleets
(name and subnet); the default is "ci", plus the pytest-xdist worker number.
"""

import hashlib
import hmac
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from tests.fleet import Fleet
from tests.playbook import REPO


@pytest.fixture(scope="module")
def fleet(request):
    """A fleet of `FLEET_SIZE` (module global, default 3) systemd hosts reachable over SSH."""
    if os.geteuid() != 0:
        pytest.fail("fleet tests need root: they create namespaces, a bridge and mounts")
    # pytest-xdist workers (gw0, gw1, ...) each get their own fleet name.
    name = os.environ.get("FLEETDECK_TEST_FLEET", "ci") + os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
    test_fleet = Fleet(name)
    try:
        test_fleet.up(getattr(request.module, "FLEET_SIZE", 3))
        yield test_fleet
    finally:
        test_fleet.down()


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture
def alerts():
    """A receiver of the rollout's signed alerts (rollout_alert_url): url, secret, and received, a list of
    {valid (the signature checks out), body} in arrival order."""
    secret = secrets.token_hex(16)
    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            signed = f"{self.headers['X-Fleetdeck-Timestamp']}.{body.decode()}".encode()
            expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
            received.append({"valid": hmac.compare_digest(expected, self.headers["X-Fleetdeck-Signature"]),
                             "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/alerts", secret=secret, received=received,
                          args=("-e", f"rollout_alert_url=http://127.0.0.1:{server.server_port}/alerts",
                                "-e", f"rollout_alert_secret={secret}"))
    server.shutdown()
