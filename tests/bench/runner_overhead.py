"""Benchmark: the runner's overhead over a direct `ansible-playbook` for the same action on the same fleet.

Runs smoke_check (playbooks/smoke_check.yml) on a 5-host test fleet, alternately with `ansible-playbook` and
through the real `fleetdeck-runner` process (POST /v1/runs, then poll until finished), and prints the
median wall time of each and their ratio; then the latency of POST /v1/runs itself.

    sudo .venv/bin/python -m tests.bench.runner_overhead
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from tests.fleet import Fleet
from tests.playbook import ansible_playbook
from tests.runner.service import Server, free_port, make_env, wait_until

HOSTS = 5
REPEATS = 3
POSTS = 20


def run_via_api(server: Server) -> float:
    start = time.perf_counter()
    status, run = server.call("POST", "/v1/runs", {"action": "smoke_check", "target": "all"})
    assert status == 202, run
    done = wait_until(lambda: (lambda r: r if r["status"] not in ("queued", "waiting", "running") else None)(
        server.call("GET", f"/v1/runs/{run['id']}")[1]), timeout=300, interval=0.05)
    assert done["status"] == "successful", done
    return time.perf_counter() - start


def run_direct(env) -> float:
    start = time.perf_counter()
    result = ansible_playbook("smoke_check.yml", env.inventory, env={**env.env})
    assert result.rc == 0, result.output[-2000:]
    return time.perf_counter() - start


def post_latency(server: Server) -> list[float]:
    """POST /v1/runs alone (a queued ping with wait: true); the runs then drain in the background."""
    latencies, ids = [], []
    for _ in range(POSTS):
        start = time.perf_counter()
        status, run = server.call("POST", "/v1/runs", {"action": "ping", "target": "testfleet", "wait": True})
        latencies.append(time.perf_counter() - start)
        assert status == 202, run
        ids.append(run["id"])
    wait_until(lambda: all(server.call("GET", f"/v1/runs/{i}")[1]["status"] == "successful" for i in ids),
               timeout=600, interval=0.5)
    return latencies


def main() -> None:
    fleet = Fleet("rbnch")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fleet.up(HOSTS)
            env = make_env(fleet, Path(tmp))
            server = Server(env, free_port())
            server.start()
            try:
                run_direct(env)  # warm-up: ControlPersist masters and caches, not counted
                direct, api = [], []
                for _ in range(REPEATS):
                    direct.append(run_direct(env))
                    api.append(run_via_api(server))
                latencies = post_latency(server)
            finally:
                server.stop()
        finally:
            fleet.down()
    d, a = statistics.median(direct), statistics.median(api)
    print(f"smoke_check on {HOSTS} hosts, median of {REPEATS} (seconds)")
    print(f"{'path':<28}{'median':>8}{'runs':>30}")
    print(f"{'ansible-playbook':<28}{d:>8.2f}{'  '.join(f'{x:.2f}' for x in direct):>30}")
    print(f"{'runner API (gunicorn)':<28}{a:>8.2f}{'  '.join(f'{x:.2f}' for x in api):>30}")
    print(f"{'overhead ratio':<28}{a / d:>8.2f}")
    lat = sorted(latencies)
    print(f"POST /v1/runs latency over {POSTS}: median {statistics.median(lat) * 1000:.1f} ms, "
          f"p95 {lat[int(0.95 * (len(lat) - 1))] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
