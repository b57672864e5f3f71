"""The real `fleetdeck-runner` process (gunicorn) over HTTP: a run, SSE, crash recovery (start-up refusals:
test_startup)."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request

import pytest
from fleetdeck.service.processes import process_groups

from tests.runner.service import Server, free_port, make_env, wait_until

FLEET_SIZE = 2
pytestmark = pytest.mark.fleet
# The runs' cancel grace (3 s in these tests) and a margin: the service must be gone by then.
GRACE = 3 + 10


@pytest.fixture(scope="module")
def env(runner_store, fleet, tmp_path_factory):
    return make_env(fleet, tmp_path_factory.mktemp("runner"), runner_store)


@pytest.fixture(scope="module")
def server(env):
    srv = Server(env, free_port())
    srv.start()
    yield srv
    srv.stop()


def wait_run(server, run_id, timeout=90):
    return wait_until(
        lambda: (lambda r: r if r["status"] not in ("queued", "waiting", "running") else None)(
            server.call("GET", f"/v1/runs/{run_id}")[1]
        ),
        timeout,
    )


def test_a_run_over_http_with_sse(server, fleet):
    status, run = server.call("POST", "/v1/runs", {"action": "ping", "target": "testfleet"})
    assert status == 202, run
    status, stream = server.call(
        "GET", f"/v1/runs/{run['id']}/events", headers={"Accept": "text/event-stream"}
    )
    assert status == 200 and "event: end" in stream
    done = wait_run(server, run["id"])
    assert done["status"] == "successful" and set(done["hosts"]) == {h.name for h in fleet.hosts}
    assert server.call("GET", "/v1/runs")[0] == 200
    assert server.call("GET", "/v1/runs", caller=None)[0] == 401
    assert server.call("GET", "/readyz", caller=None)[0] == 200


def test_sigkilled_runner_restarts_with_the_run_interrupted_and_its_lease_free(server, fleet):
    host = fleet.hosts[0].name
    status, run = server.call("POST", "/v1/runs", {"action": "sleep", "target": host})
    assert status == 202
    wait_until(lambda: server.call("GET", f"/v1/runs/{run['id']}")[1]["status"] == "running")
    wait_until(lambda: process_groups(run["id"]))
    server.kill()
    server.start()
    after = server.call("GET", f"/v1/runs/{run['id']}")[1]
    assert after["status"] == "interrupted" and after["reason"] == "runner restarted"
    assert not process_groups(run["id"]), "the orphaned ansible-playbook must be stopped on restart"
    instances = server.call("GET", "/v1/instances")[1]["instances"]
    assert all(i["leased_by"] is None for i in instances)
    status, again = server.call("POST", "/v1/runs", {"action": "ping", "target": host})
    assert status == 202
    done = wait_run(server, again["id"])
    assert done["status"] == "successful", (done, server.call("GET", f"/v1/runs/{again['id']}/events")[1])


def test_sigterm_with_an_sse_client_interrupts_the_run_within_the_grace(server, fleet):
    host = fleet.hosts[0].name
    status, run = server.call("POST", "/v1/runs", {"action": "sleep", "target": host})
    assert status == 202
    wait_until(lambda: server.call("GET", f"/v1/runs/{run['id']}")[1]["status"] == "running")
    wait_until(lambda: process_groups(run["id"]))
    request = urllib.request.Request(  # noqa: S310 - a local test server
        f"{server.base}/v1/runs/{run['id']}/events",
        headers={**server.env.auth("reader"), "Accept": "text/event-stream"},
    )
    stream = urllib.request.urlopen(request, timeout=60)  # noqa: S310
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in stream))
    reader.start()

    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=GRACE)
    assert time.monotonic() - started < GRACE
    reader.join(10)
    assert "event: end\n" in lines and any('"status": "interrupted"' in line for line in lines), lines
    assert not process_groups(run["id"]), "ansible-playbook and its ssh children are gone"

    server.start()
    after = server.call("GET", f"/v1/runs/{run['id']}")[1]
    assert after["status"] == "interrupted" and after["reason"] == "interrupted", after
    instances = server.call("GET", "/v1/instances")[1]["instances"]
    assert all(i["leased_by"] is None for i in instances)
