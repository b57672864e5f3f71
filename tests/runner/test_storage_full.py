"""The store's filesystem fills up (a small tmpfs mounted as the data dir; needs root): new runs get 503,
and the end of a run that was running is recorded, its lease freed, once space returns — no restart."""

from __future__ import annotations

import subprocess

import pytest
from fleetdeck.service.processes import process_groups

from tests.runner.service import Server, free_port, make_local_env, wait_until

# SQLite's disk full; PostgreSQL's lost connection: test_replicas.py.
pytestmark = pytest.mark.stores("sqlite")


@pytest.fixture
def server(runner_store, tmp_path):
    env = make_local_env(tmp_path, runner_store)
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(data)], check=True)
    srv = Server(env, free_port())
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        subprocess.run(["umount", str(data)], check=True)


def fill(directory) -> None:
    with open(directory / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def test_disk_full_answers_503_and_a_runs_end_is_recorded_once_space_returns(server, tmp_path):
    data = tmp_path / "data"
    body = {"action": "sleep", "target": "local-1", "params": {"sleep_seconds": 5}}
    status, run = server.call("POST", "/v1/runs", body)
    assert status == 202, run
    wait_until(lambda: process_groups(run["id"]), timeout=60)
    pid = server.proc.pid

    fill(data)
    status, body = server.call("POST", "/v1/runs", {"action": "ping", "target": "local-2"})
    assert status == 503 and body["error"]["code"] == "store_unavailable", body
    assert "full" in body["error"]["message"]
    # The playbook ends while the disk is full: its end cannot be written yet, the lease is still held.
    wait_until(lambda: not process_groups(run["id"]), timeout=60)
    wait_until(lambda: f"of run {run['id']} yet, retrying" in server.log.read_text(), timeout=30)
    assert server.call("GET", f"/v1/runs/{run['id']}")[1]["status"] == "running"

    (data / "filler").unlink()
    assert finished(server, run["id"])["finished"]
    instances = server.call("GET", "/v1/instances")[1]["instances"]
    assert all(i["leased_by"] is None for i in instances)
    assert server.proc.pid == pid and server.proc.poll() is None, "recovered without a restart"
    status, again = server.call("POST", "/v1/runs", {"action": "ping", "target": "local-1"})
    assert status == 202, again
    assert finished(server, again["id"])["status"] == "successful"


def finished(server, run_id: str) -> dict:
    return wait_until(
        lambda: (lambda r: r if r["status"] not in ("queued", "waiting", "running") else None)(
            server.call("GET", f"/v1/runs/{run_id}")[1]
        ),
        timeout=60,
    )
