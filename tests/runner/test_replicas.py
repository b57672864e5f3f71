"""Two real runner services (gunicorn) on one PostgreSQL database, local targets, no fleet: runs claimed
by either replica, leases held across them, cancel across them, and a SIGKILLed replica's run ended by
its peer once its heartbeat is older than the replica timeout."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

import pytest
from fleetdeck.service.processes import process_groups, stop_run
from fleetdeck.service.store_postgres import PostgresStore

from tests.runner.service import Server, free_port, make_local_env, wait_until

pytestmark = pytest.mark.stores("postgres")
TIMEOUT = 3  # FLEETDECK_REPLICA_TIMEOUT of these replicas


@pytest.fixture
def replicas(runner_store, tmp_path):
    """Replicas `a` and `b`: one database, one inventory and tokens, a data dir each; at most one run each."""
    env = make_local_env(tmp_path, runner_store)
    servers = []
    for name in ("a", "b"):
        settings = {"FLEETDECK_REPLICA_ID": f"replica-{name}", "FLEETDECK_REPLICA_TIMEOUT": str(TIMEOUT),
                    "FLEETDECK_RUNNER_DATA_DIR": str(tmp_path / f"data-{name}"),
                    "FLEETDECK_RUNNER_MAX_CONCURRENT": "1"}
        replica = Server(dataclasses.replace(env, env={**env.env, **settings}), free_port())
        replica.log = tmp_path / f"server-{name}.log"
        servers.append(replica)
    for replica in servers:
        replica.start()
    yield servers
    for replica in servers:
        replica.stop()


def post(server, action, target, **fields):
    status, run = server.call("POST", "/v1/runs", {"action": action, "target": target, **fields})
    assert status == 202, run
    return run


def ended(server, run_id, timeout=90):
    return wait_until(
        lambda: (lambda r: r if r["status"] not in ("queued", "waiting", "running") else None)(
            server.call("GET", f"/v1/runs/{run_id}")[1]
        ),
        timeout,
    )


def running(server, run_id) -> dict:
    return wait_until(lambda: (lambda r: r if r["status"] == "running" else None)(
        server.call("GET", f"/v1/runs/{run_id}")[1]))


def test_a_sigkilled_replicas_run_is_interrupted_by_its_peer_and_the_instance_freed(replicas, tmp_path):
    a, _ = replicas
    run = post(a, "sleep", "local-1", params={"sleep_seconds": 120})
    owner_id = running(a, run["id"])["replica"]
    owner, peer = (a, replicas[1]) if owner_id == "replica-a" else (replicas[1], a)
    wait_until(lambda: process_groups(run["id"]))
    owner.kill()
    try:
        busy = peer.call("POST", "/v1/runs", {"action": "sleep", "target": "local-1", "params": {"sleep_seconds": 1}})
        assert busy[0] == 409 and busy[1]["error"]["holder"] == run["id"], busy

        killed_at = time.monotonic()
        after = ended(peer, run["id"], timeout=TIMEOUT + 30)
        assert time.monotonic() - killed_at >= TIMEOUT - 1  # not before its heartbeat expired
        assert after["status"] == "interrupted" and after["replica"] == owner_id, after
        assert after["reason"] == f"replica {owner_id} presumed dead: no heartbeat for {TIMEOUT}s", after
        instances = peer.call("GET", "/v1/instances")[1]["instances"]
        assert all(i["leased_by"] is None for i in instances), instances
        store = PostgresStore(peer.env.env["FLEETDECK_DATABASE_URL"])
        try:
            trail = store.audit_trail(run["id"])
        finally:
            store.close()
        assert [(t["what"], t["detail"].get("replica")) for t in trail][-1] == ("run.interrupted", owner_id), trail

        again = post(peer, "sleep", "local-1", params={"sleep_seconds": 1})
        done = ended(peer, again["id"])
        assert done["status"] == "successful" and done["replica"] == peer.env.env["FLEETDECK_REPLICA_ID"], done
    finally:
        stop_run(run["id"], 0)  # the dead replica's orphaned ansible-playbook (on another host, its own host's)


def test_concurrent_requests_across_replicas_never_run_one_instance_twice(replicas):
    """Leases are the database's: of many POSTs at once through both replicas, one wins; waiting runs over
    one instance then run one after the other, on whichever replica claims them."""
    results = []

    def attempt(server):
        results.append(server.call("POST", "/v1/runs",
                                   {"action": "sleep", "target": "local-2", "params": {"sleep_seconds": 2}}))

    threads = [threading.Thread(target=attempt, args=(replicas[i % 2],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    accepted = [body for status, body in results if status == 202]
    assert len(accepted) == 1 and len(results) == 12, results
    assert {body["error"]["code"] for status, body in results if status != 202} == {"instance_busy"}
    assert ended(replicas[0], accepted[0]["id"])["status"] == "successful"

    waiting = [post(replicas[i % 2], "sleep", "local-2", params={"sleep_seconds": 1}, wait=True) for i in range(3)]
    done = [ended(replicas[0], run["id"], timeout=120) for run in waiting]
    assert all(run["status"] == "successful" for run in done), done
    spans = sorted((run["started"], run["finished"]) for run in done)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), spans


def test_a_run_created_on_a_busy_replica_runs_on_its_peer_and_cancels_across_them(replicas):
    a, b = replicas
    first = post(a, "sleep", "local-1", params={"sleep_seconds": 120})
    holder_id = running(a, first["id"])["replica"]
    holder, other = (a, b) if holder_id == "replica-a" else (b, a)
    # The holder is at its limit (one run): a run posted to it is claimed by the other.
    second = post(holder, "ping", "local-2")
    done = ended(holder, second["id"])
    assert done["status"] == "successful" and done["replica"] == other.env.env["FLEETDECK_REPLICA_ID"], done

    # Cancel through the replica that does not run it.
    status, body = other.call("POST", f"/v1/runs/{first['id']}/cancel")
    assert status == 202, body
    canceled = ended(other, first["id"], timeout=60)
    assert canceled["status"] == "canceled" and canceled["replica"] == holder_id, canceled
    assert not process_groups(first["id"])
    status, body = other.call("POST", f"/v1/runs/{first['id']}/cancel")
    assert status == 409 and body["error"]["code"] == "not_active", body
