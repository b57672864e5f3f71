"""Idempotency keys and leases under concurrency: real threads against the real `fleetdeck-runner`
process (gunicorn). No test hosts: the runs are the `ping` playbook on `ansible_connection: local` hosts."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.runner.service import Server, free_port, make_local_env, wait_until

CONCURRENT = 12


@pytest.fixture(scope="module")
def server(runner_store, tmp_path_factory):
    srv = Server(make_local_env(tmp_path_factory.mktemp("runner"), runner_store), free_port())
    srv.start()
    yield srv
    srv.stop()


def post_at_once(server, bodies: list[dict], key: str | None, caller: str = "admin") -> list[tuple[int, dict]]:
    """POST every body from its own thread, all released together."""
    barrier = threading.Barrier(len(bodies))

    def post(body):
        barrier.wait()
        return server.call("POST", "/v1/runs", body, caller, headers={"Idempotency-Key": key} if key else {})

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def runs_with(server, note: str) -> list[dict]:
    return [r for r in server.call("GET", "/v1/runs?limit=500")[1]["runs"] if r["params"].get("note") == note]


def wait_finished(server, run_id: str) -> dict:
    return wait_until(
        lambda: (lambda r: r if r["status"] not in ("queued", "waiting", "running") else None)(
            server.call("GET", f"/v1/runs/{run_id}")[1]
        ),
        timeout=120,
    )


def test_concurrent_requests_with_one_key_and_body_answer_one_run(server):
    body = {"action": "ping", "target": "local-1", "params": {"note": "same"}}
    answers = post_at_once(server, [body] * CONCURRENT, "key-same")
    assert sorted(status for status, _ in answers) == [200] * (CONCURRENT - 1) + [202], answers
    assert len({run["id"] for _, run in answers}) == 1
    [run] = runs_with(server, "same")
    assert wait_finished(server, run["id"])["status"] == "successful"
    # A replay after the run ended still names it, and starts nothing.
    status, again = server.call("POST", "/v1/runs", body, headers={"Idempotency-Key": "key-same"})
    assert (status, again["id"], again["status"]) == (200, run["id"], "successful")
    assert len(runs_with(server, "same")) == 1


def test_one_key_with_two_bodies_makes_exactly_one_run_and_the_others_409(server):
    bodies = [
        {"action": "ping", "target": "local-2", "params": {"note": note}} for note in ("first", "second")
    ] * (CONCURRENT // 2)
    answers = post_at_once(server, bodies, "key-two")
    created = [run for status, run in answers if status == 202]
    assert len(created) == 1, answers
    winner = created[0]
    for body, (status, answer) in zip(bodies, answers, strict=True):
        if body["params"] == winner["params"]:
            assert status in (200, 202) and answer["id"] == winner["id"], answer
        else:
            assert status == 409, answer
            assert answer["error"]["code"] == "idempotency_conflict"
            assert answer["error"]["run_id"] == winner["id"]
    assert [r["id"] for r in runs_with(server, "first") + runs_with(server, "second")] == [winner["id"]]
    wait_finished(server, winner["id"])


def test_without_keys_the_leases_let_one_of_concurrent_runs_on_an_instance_start(server):
    body = {"action": "ping", "target": "local-3", "params": {"note": "leases"}}
    answers = post_at_once(server, [body] * CONCURRENT, None)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [202] + [409] * (CONCURRENT - 1), answers
    [started] = [run for status, run in answers if status == 202]
    assert all(
        run["error"]["code"] == "instance_busy" and run["error"]["holder"] == started["id"]
        for status, run in answers
        if status == 409
    )
    wait_finished(server, started["id"])


def test_keys_belong_to_their_token(server):
    body = {"action": "ping", "target": "local-3", "params": {"note": "per-token"}}
    status, mine = server.call("POST", "/v1/runs", body, "admin", headers={"Idempotency-Key": "shared-key"})
    assert status == 202
    wait_finished(server, mine["id"])
    status, theirs = server.call("POST", "/v1/runs", body, "operator", headers={"Idempotency-Key": "shared-key"})
    assert status == 202 and theirs["id"] != mine["id"]
    wait_finished(server, theirs["id"])


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_a_bad_key_is_400_and_starts_nothing(server, key):
    body = {"action": "ping", "target": "local-3", "params": {"note": "bad-key"}}
    status, answer = server.call("POST", "/v1/runs", body, headers={"Idempotency-Key": key})
    assert status == 400 and answer["error"]["code"] == "invalid_idempotency_key"
    assert runs_with(server, "bad-key") == []
