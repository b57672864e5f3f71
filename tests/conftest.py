"""Shared fixtures: one real test fleet per test module, torn down even when tests fail.

Set FLEETDECK_TEST_FLEET to give concurrent test runs on one machine distinct fleets
(name and subnet); the default is "ci", plus the pytest-xdist worker number.
"""

import hashlib
import hmac
import json
import os
import resource
import secrets
import threading
from collections import defaultdict
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


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which `-p no:xdist` leaves out
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than the cores this run may use, because each worker spends part of its time
    waiting on its hosts (3 on 2 cores)."""
    return len(os.sched_getaffinity(0)) + 1


# pytest-xdist hands out whole modules in collection order (with --no-loadscope-reorder): the slowest start
# first, so that no long module starts last while the other workers idle. The rest keep their order.
SLOWEST_FIRST = (
    "tests/test_monitoring.py", "tests/test_backup.py",
    "tests/runner/test_console_browser.py", "tests/runner/test_lifecycle_via_api.py", "tests/runner/test_api.py",
    "tests/test_rollout.py", "tests/test_deploy.py", "tests/test_takeover.py", "tests/test_rotation.py",
    "tests/test_locks.py", "tests/test_dns.py", "tests/test_collection.py",
)


def pytest_collection_modifyitems(items):
    rank = {module: index for index, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


CPU_AT = pytest.StashKey[float]()


def _cpu_seconds() -> float:
    """CPU of this process and of every process it waited for: playbook runs, the runner, and the test
    hosts, whose launchers it reaps when a fleet goes down."""
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each report carries the CPU used since the previous one ended, so a module's fleet counts for it."""
    report = yield
    now = _cpu_seconds()
    report.user_properties.append(("cpu_seconds", now - item.config.stash.get(CPU_AT, now)))
    item.config.stash[CPU_AT] = now
    return report


def pytest_terminal_summary(terminalreporter):
    """Seconds and CPU-seconds per module (setup, calls and teardown: its fleet included), to keep
    SLOWEST_FIRST true and to see where the suite's CPU goes."""
    seconds, cpu = defaultdict(float), defaultdict(float)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                module = report.nodeid.partition("::")[0]
                seconds[module] += report.duration
                cpu[module] += sum(value for name, value in report.user_properties if name == "cpu_seconds")
    if seconds:
        terminalreporter.write_sep("=", "seconds and CPU-seconds per module")
        for module, total in sorted(seconds.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{total:8.1f} {cpu[module]:8.1f}  {module}")
        terminalreporter.write_line(f"{sum(seconds.values()):8.1f} {sum(cpu.values()):8.1f}  all modules")
