"""Prometheus metrics of one service instance (own registry, so app factories in tests do not clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "fleetdeck_runner_runs",
            "Finished runs by action and final status",
            ["action", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "fleetdeck_runner_run_duration_seconds",
            "Run wall time, start to finish",
            ["action"],
            registry=self.registry,
            buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
        )
        self.queue_depth = Gauge(
            "fleetdeck_runner_queue_depth", "Runs queued or waiting for a lease", registry=self.registry
        )
        self.running = Gauge("fleetdeck_runner_running", "Runs executing now", registry=self.registry)
        self.leases = Gauge(
            "fleetdeck_runner_active_leases", "Instances leased by a run", registry=self.registry
        )
        self.missing_playbooks = Gauge(
            "fleetdeck_runner_missing_playbooks",
            "Catalog actions hidden because their playbook is missing",
            registry=self.registry,
        )

    def finished(self, run: dict) -> None:
        self.runs.labels(run["action"], run["status"]).inc()
        if run.get("started") and run.get("finished"):
            self.duration.labels(run["action"]).observe(run["finished"] - run["started"])
