"""In-process request metrics rendered in the Prometheus text exposition format."""

import threading
import time
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in labels.items()) + "}"


class Metrics:
    def __init__(self, version: str, instance: str):
        self.version = version
        self.instance = instance
        self.start_time = time.time()
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        # per route: cumulative bucket counts (one per BUCKETS entry, then +Inf), sum
        self._durations: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, str(code))] += 1
            buckets, total = self._durations.setdefault(route, ([0] * (len(BUCKETS) + 1), [0.0]))
            for i, bound in enumerate((*BUCKETS, float("inf"))):
                if seconds <= bound:
                    buckets[i] += 1
            total[0] += seconds

    def render(self, items: int | None, database_up: bool) -> str:
        out = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("refapp_build_info", "gauge", "Version and instance of this refapp process.")
        out.append(f"refapp_build_info{_labels(version=self.version, instance=self.instance)} 1")
        family("refapp_start_time_seconds", "gauge", "Start time of the process since the Unix epoch.")
        out.append(f"refapp_start_time_seconds {self.start_time!r}")
        family("refapp_database_up", "gauge", "Whether the last database check succeeded.")
        out.append(f"refapp_database_up {int(database_up)}")
        family("refapp_items", "gauge", "Rows in the items table.")
        if items is not None:
            out.append(f"refapp_items {items}")

        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted((route, (list(b), t[0])) for route, (b, t) in self._durations.items())

        family("refapp_http_requests_total", "counter", "HTTP requests by method, route and status code.")
        for (method, route, code), count in requests:
            out.append(f"refapp_http_requests_total{_labels(method=method, path=route, code=code)} {count}")
        family("refapp_http_request_duration_seconds", "histogram", "HTTP request latency by route.")
        for route, (buckets, total) in durations:
            for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=True):
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"refapp_http_request_duration_seconds_bucket{_labels(path=route, le=le)} {count}")
            out.append(f"refapp_http_request_duration_seconds_sum{_labels(path=route)} {total!r}")
            out.append(f"refapp_http_request_duration_seconds_count{_labels(path=route)} {buckets[-1]}")
        return "\n".join(out) + "\n"
