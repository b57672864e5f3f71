"""Benchmark: fleetdeck's real playbooks with stock Ansible settings versus fleetdeck's ansible.cfg.

Run as root from the repository root (outside the test suite):

    .venv/bin/python -m tests.bench.playbooks                # 1, 5 and 20 hosts
    .venv/bin/python -m tests.bench.playbooks --hosts 1 5    # a quicker run
    .venv/bin/python -m tests.bench.playbooks --hosts 20 --settings fleetdeck   # one side only, no ratio

For each fleet size, two fleets of bare test hosts start side by side, one per settings, each with one
canary instance per the scaffolding scripts. The steps then run on both, alternating which goes first:
a cold deploy.yml, an idempotent deploy.yml (it must report changed=0), smoke_check.yml and a canary upgrade
to the next release (3 s soak). Per step and settings: wall seconds, host-tasks (recap ok + skipped +
failed + unreachable over every host), host-tasks per second, and controller CPU (user + system of
ansible-playbook and every child process it waited for) per host-task; the ratio is stock / fleetdeck.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.bench.ansible_settings import PROJECT, write_stock_config
from tests.deployment import Deployment
from tests.fleet import Fleet

# Bare hosts have no metrics to judge a canary by: the analysis is off (as for bare fleets in production).
UPGRADE = ("-e", "app_version=1.1.0", "-e", "rollout_soak_seconds=3", "-e", "rollout_soak_interval=1",
           "-e", "rollout_analysis=false")
STEPS = (
    ("cold deploy", "deploy.yml", ()),
    ("idempotent deploy", "deploy.yml", ()),
    ("smoke", "smoke_check.yml", ()),
    ("canary upgrade", "canary_upgrade.yml", UPGRADE),
)
SETTINGS = ("stock", "fleetdeck")


@dataclass
class Measure:
    seconds: float
    host_tasks: int
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.host_tasks / self.seconds

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000 * self.cpu_seconds / self.host_tasks


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(deployment: Deployment, step: str, playbook: str, args: tuple[str, ...], config: Path) -> Measure:
    cpu, started = children_cpu(), time.monotonic()
    try:
        result = deployment.playbook(playbook, *args, env={"ANSIBLE_CONFIG": str(config)})
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"{step} ({config.name}) did not end within {exc.timeout:.0f} s: stopped") from None
    seconds, cpu = time.monotonic() - started, children_cpu() - cpu
    if result.rc or not result.recap:
        failures = [line for line in result.output.splitlines() if line.startswith(("fatal:", "failed:"))]
        raise SystemExit(f"{step} ({config.name}) failed (rc {result.rc}):\n" + "\n".join(failures[:20])
                         + f"\n...\n{result.output[-4000:]}")
    if step == "idempotent deploy" and any(result.changed().values()):
        raise SystemExit(f"{step} ({config.name}) changed something: {result.changed()}\n{result.output[-4000:]}")
    tasks = sum(c["ok"] + c["skipped"] + c["failed"] + c["unreachable"] for c in result.recap.values())
    return Measure(seconds, tasks, cpu)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, {platform.platform()}"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def bench_size(size: int, configs: dict[str, Path], workdir: Path) -> list[tuple[str, dict[str, Measure]]]:
    fleets = {name: Fleet(f"b{name[:4]}") for name in configs}
    try:
        deployments = {}
        for name, fleet in fleets.items():
            fleet.up(size)
            deployments[name] = Deployment.create(fleet, workdir / f"{name}-{size}", canary=1)
        rows = []
        for index, (step, playbook, args) in enumerate(STEPS):
            order = list(configs) if index % 2 == 0 else list(configs)[::-1]  # neither always runs first
            rows.append((step, {name: measure(deployments[name], step, playbook, args, configs[name])
                                for name in order}))
            print(f"  {size} hosts, {step}: " + ", ".join(f"{n} {m.seconds:.1f} s" for n, m in rows[-1][1].items()),
                  flush=True)
        return rows
    finally:
        for fleet in fleets.values():
            fleet.down()


def table(results: dict[int, list[tuple[str, dict[str, Measure]]]], settings: list[str]) -> str:
    header = ["hosts", "step", "host-tasks", *(f"{n} {what}" for what in ("s", "t/s", "CPU ms/t") for n in settings)]
    if len(settings) == 2:
        header.append("speed-up")
    lines = ["| " + " | ".join(header) + " |", "| ---: | --- |" + " ---: |" * (len(header) - 2)]
    for size, rows in results.items():
        for step, m in rows:
            cells = [str(size), step, "/".join(str(m[n].host_tasks) for n in settings),
                     *(f"{m[n].seconds:.1f}" for n in settings), *(f"{m[n].rate:.1f}" for n in settings),
                     *(f"{m[n].cpu_ms_per_task:.0f}" for n in settings)]
            if len(settings) == 2:
                cells.append(f"{m['stock'].seconds / m['fleetdeck'].seconds:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 5, 20], help="fleet sizes (default 1 5 20)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS),
                        help="which settings to run (default both, interleaved)")
    args = parser.parse_args()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {machine()}; load {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"stock": write_stock_config(Path(tmp) / "stock.cfg"), "fleetdeck": PROJECT}
        configs = {name: paths[name] for name in SETTINGS if name in args.settings}
        results = {size: bench_size(size, configs, Path(tmp)) for size in args.hosts}
    print(f"load at the end {load()}")
    print(table(results, list(configs)))


if __name__ == "__main__":
    main()
