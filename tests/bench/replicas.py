"""Benchmark: runs per minute and POST /v1/runs latency of the runner on SQLite (1 replica) and on PostgreSQL
(1 and 3 replicas sharing one database), with a no-op action on local targets.

Each configuration starts its replicas as real `fleetdeck-runner` processes over a local environment
(tests/runner/service.py: hosts with `ansible_connection: local`, the test catalog, whose `ping` runs
`hostname`), then CLIENTS closed-loop clients for SECONDS: each POSTs a `ping` of its own host (runs take a
lease on their instance) to the next replica in turn (round-robin), polls that replica until the run ends, and
posts the next.
Runs per minute counts the runs that ended `successful` within the window; CPU per run is the CPU time the
replicas' process trees (runner, ansible-playbook and its workers) used over the window, divided by those runs
(PostgreSQL's own is not included), a figure that depends less on what else loads the machine. The
configurations differ only in the runners' environment: FLEETDECK_DATABASE_URL (unset: SQLite in
FLEETDECK_RUNNER_DATA_DIR) and FLEETDECK_REPLICA_ID. PostgreSQL is the runner tests' throwaway server from
Debian's binaries (tests/postgres.py, which comes with the PostgreSQL store), a fresh database per configuration.

    .venv/bin/python -m tests.bench.replicas [--seconds 60] [--clients 8] [--only sqlite-1 postgresql-3 ...]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from fleetdeck.service.store import ACTIVE

from tests.runner.service import RunnerEnv, Server, env_over, free_port

CONFIGURATIONS = {"sqlite-1": ("sqlite", 1), "postgresql-1": ("postgresql", 1), "postgresql-3": ("postgresql", 3)}


@dataclasses.dataclass
class Result:
    name: str
    replicas: int
    seconds: float
    runs: int = 0  # ended successful within the window
    cpu: float = 0.0  # seconds of CPU of the replicas' process trees (playbooks included) over the window
    executed_by: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # replica id -> runs
    post_latencies: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def local_env(base: Path, hosts: tuple[str, ...]) -> RunnerEnv:
    """As tests/runner/service.py's make_local_env (group `testfleet`, `ansible_connection: local`), with one
    host per client."""
    password_file = base / "vault-pass"
    password_file.write_text(secrets.token_hex(24))
    password_file.chmod(0o600)
    inventory = base / "env"
    inventory.mkdir()
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    tree = {"all": {"children": {"testfleet": {"hosts": dict.fromkeys(hosts, local)}}}}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return env_over(base, inventory, password_file, {"FLEETDECK_VAULT_PASSWORD_FILE": str(password_file)})


def store_env(store: str, pg) -> dict[str, str]:
    """The runners' store settings: a fresh database on `pg` for postgresql, nothing (SQLite) otherwise."""
    return {"FLEETDECK_DATABASE_URL": pg.create_database()} if store == "postgresql" else {}


def tables_in(pg, url: str) -> int:
    sql = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    return pg.admin(sql, url.rsplit("/", 1)[1])[0][0]


@contextmanager
def replicas(env: RunnerEnv, count: int, store: dict[str, str]) -> Iterator[list[Server]]:
    """`count` runner processes with the same settings and store, each its own port, data dir and replica id."""
    servers = []
    try:
        for i in range(count):
            home = env.dir / f"replica-{i}"
            home.mkdir()
            settings = {**env.env, **store, "FLEETDECK_REPLICA_ID": f"bench-{i}",
                        "FLEETDECK_RUNNER_DATA_DIR": str(home / "data"), "FLEETDECK_AUDIT_LOG": str(home / "audit.log")}
            server = Server(dataclasses.replace(env, dir=home, env=settings), free_port())
            servers.append(server)
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def run_to_end(server: Server, target: str, result: Result | None) -> dict:
    start = time.perf_counter()
    status, run = server.call("POST", "/v1/runs", {"action": "ping", "target": target, "wait": True})
    if result is not None:
        with result.lock:
            result.post_latencies.append(time.perf_counter() - start)
    if status != 202:
        raise RuntimeError(f"POST /v1/runs answered {status}: {run}")
    while run["status"] in ACTIVE:
        time.sleep(0.05)
        status, run = server.call("GET", f"/v1/runs/{run['id']}")
        if status != 200:
            raise RuntimeError(f"GET /v1/runs/{run} answered {status}")
    return run


def client(servers: list[Server], host: str, turns: Iterator[int], deadline: float, result: Result) -> None:
    while time.monotonic() < deadline:
        try:
            run = run_to_end(servers[next(turns) % len(servers)], host, result)
        except (RuntimeError, OSError) as exc:
            with result.lock:
                result.failures.append(str(exc)[:200])
            time.sleep(0.5)
            continue
        with result.lock:
            if run["status"] != "successful":
                result.failures.append(f"run {run['id']} ended {run['status']}")
            elif time.monotonic() <= deadline:
                result.runs += 1
                result.executed_by[run.get("replica") or "?"] += 1


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds used so far by the processes under `roots` (themselves included): each live process's own
    time plus that of the children it has waited for (finished playbooks)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))  # ppid, u+s+cu+cs
    children = collections.defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    todo, ticks = [r for r in roots if r in stats], 0
    while todo:
        pid = todo.pop()
        ticks += stats[pid][1]
        todo.extend(children[pid])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(name: str, pg, seconds: float, clients: int) -> Result:
    store, count = CONFIGURATIONS[name]
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        hosts = tuple(f"bench-{i}" for i in range(clients))
        env = local_env(Path(tmp), hosts)
        settings = store_env(store, pg)
        with replicas(env, count, settings) as servers:
            if store == "postgresql" and not tables_in(pg, settings["FLEETDECK_DATABASE_URL"]):
                raise SystemExit("the runner made no table in the PostgreSQL database: it does not use "
                                 "FLEETDECK_DATABASE_URL (is the PostgreSQL store in this checkout?)")
            for server in servers:  # warm-up, not counted: the first ansible-playbook of each replica
                run_to_end(server, hosts[0], None)
            result = Result(name, count, seconds)
            roots = [s.proc.pid for s in servers]
            cpu_start = tree_cpu(roots)
            turns, deadline = itertools.count(), time.monotonic() + seconds
            threads = [threading.Thread(target=client, args=(servers, host, turns, deadline, result)) for host in hosts]
            for thread in threads:
                thread.start()
            time.sleep(max(0.0, deadline - time.monotonic()))
            result.cpu = tree_cpu(roots) - cpu_start
            for thread in threads:
                thread.join()
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[int(p * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per configuration")
    parser.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients")
    parser.add_argument("--only", nargs="+", choices=CONFIGURATIONS, default=list(CONFIGURATIONS))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = []
    with contextlib.ExitStack() as stack:
        pg = None
        if any(CONFIGURATIONS[name][0] == "postgresql" for name in args.only):
            from tests.postgres import PostgresServer  # the runner tests' server, part of the PostgreSQL store

            pg = PostgresServer().start()
            stack.callback(pg.stop)
        for name in args.only:
            results.append(measure(name, pg, args.seconds, args.clients))
    print(f"ping of one local host per run, {args.clients} clients, {args.seconds:.0f} s per configuration, "
          f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"{'store':<14}{'replicas':>9}{'runs':>7}{'runs/min':>10}{'POST p50 ms':>13}{'POST p95 ms':>13}"
          f"{'CPU s/run':>11}{'failed':>8}")
    for r in results:
        lat = r.post_latencies
        print(f"{r.name.split('-')[0]:<14}{r.replicas:>9}{r.runs:>7}{r.runs * 60 / r.seconds:>10.1f}"
              f"{statistics.median(lat) * 1000:>13.1f}{percentile(lat, 0.95) * 1000:>13.1f}"
              f"{r.cpu / max(r.runs, 1):>11.2f}{len(r.failures):>8}")
        print(f"  {r.name}: runs executed by " + ", ".join(f"{k} {v}" for k, v in sorted(r.executed_by.items())))
        for failure in sorted(set(r.failures))[:5]:
            print(f"  {r.name}: {failure}")


if __name__ == "__main__":
    main()
