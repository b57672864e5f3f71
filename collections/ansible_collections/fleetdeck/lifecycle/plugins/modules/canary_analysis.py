#!/usr/bin/python
# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Judge a soaking canary against its peers from a Prometheus-compatible API (PromQL)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: canary_analysis
short_description: Judge a canary against the instances still on the old release, interval by interval
description:
  - Splits the analysis into O(intervals) intervals of O(interval) seconds from the moment the module starts. After
    each interval (plus O(delay) seconds for the samples to arrive) it queries O(prometheus_url) at the
    interval's end for the answered requests, 5xx answers, latency histogram and process start time of every
    instance, and judges the canary's interval against the baseline, the instances reporting
    O(baseline_version) (other than the canary), with the conditions in docs/canary-analysis.md.
  - Without O(baseline_version), or when no instance reports it, only the absolute thresholds apply.
  - Never fails on a decision; returns C(decision) (V(pass), V(fail) or V(inconclusive)) and the numbers behind
    it. Fails only when the metrics API cannot be queried.
version_added: "0.2.0"
author:
  - fleetdeck maintainers (@fleetdeck)
options:
  prometheus_url: {description: Base URL of the Prometheus-compatible API., type: str, required: true}
  canary: {description: The canary's C(instance) label., type: str, required: true}
  baseline_version: {description: Release the baseline instances report; empty means no baseline., type: str,
                     default: ""}
  interval: {description: Seconds per interval (also the rate window)., type: float, default: 60}
  intervals: {description: Number of intervals., type: int, default: 5}
  delay: {description: Seconds to wait after an interval ends before querying it (ingestion lag)., type: float,
          default: 0}
  query_params:
    description: Extra query string parameters, e.g. C(nocache=1) so that VictoriaMetrics serves the newest samples.
    type: dict
    default: {}
  timeout: {description: Seconds to wait for each query., type: float, default: 10}
  requests_metric: {description: Request counter with C(instance) and C(code) labels., type: str,
                    default: refapp_http_requests_total}
  duration_metric: {description: Latency histogram (without C(_bucket))., type: str,
                    default: refapp_http_request_duration_seconds}
  start_time_metric: {description: Process start time gauge (restarts)., type: str, default: refapp_start_time_seconds}
  version_metric: {description: Gauge with C(instance) and C(version) labels., type: str, default: refapp_build_info}
  traffic_selector:
    description: Label matchers that select real traffic (not health checks or scrapes).
    type: str
    default: path!~"/health|/metrics"
  min_requests: {description: Fewest requests an interval needs to be judged., type: int, default: 20}
  max_error_rate: {description: Highest acceptable 5xx share of the canary., type: float, default: 0.05}
  error_rate_ratio: {description: Highest acceptable canary/baseline error rate ratio., type: float, default: 2}
  error_rate_floor: {description: Baseline error rate assumed at least (a ratio near 0 means little)., type: float,
                     default: 0.01}
  latency_quantile: {description: Latency quantile judged., type: float, default: 0.95}
  max_latency: {description: Highest acceptable latency quantile of the canary in seconds., type: float, default: 1}
  latency_ratio: {description: Highest acceptable canary/baseline latency ratio., type: float, default: 2}
  latency_floor: {description: 'Baseline latency assumed at least, in seconds.', type: float, default: 0.05}
  max_restarts: {description: Most restarts of the canary accepted., type: int, default: 0}
  failure_limit: {description: Failed intervals that fail the analysis (it stops there)., type: int, default: 2}
  min_passed: {description: Passed intervals needed to pass; fewer is inconclusive., type: int, default: 2}
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: none
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Judge inst1 on 1.1.0 against the instances still on 1.0.0
  fleetdeck.lifecycle.canary_analysis:
    prometheus_url: http://127.0.0.1:8428
    query_params: {nocache: "1"}
    canary: inst1
    baseline_version: "1.0.0"
    interval: 60
    intervals: 5
    delay: 15
"""

RETURN = r"""
decision: {description: 'V(pass), V(fail) or V(inconclusive).', returned: success, type: str}
reason: {description: The decision in words., returned: success, type: str}
baseline_version: {description: O(baseline_version)., returned: success, type: str}
baseline_instances: {description: Instances compared with (last interval)., returned: success, type: list,
                     elements: str}
report: {description: 'The decision and a row per interval, as shown to the operator.', returned: success, type: list,
         elements: str}
intervals:
  description: Per interval C(result), C(reasons) and the C(canary) and C(baseline) numbers (requests, error_rate,
    latency, restarts).
  returned: success
  type: list
  elements: dict
"""

import json
import time
import urllib.parse

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.canary_judge import (
    judge_interval,
    report_lines,
    summarize,
    verdict,
)
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.health import request

CONDITIONS = {
    "min_requests": {"type": "int", "default": 20},
    "max_error_rate": {"type": "float", "default": 0.05},
    "error_rate_ratio": {"type": "float", "default": 2},
    "error_rate_floor": {"type": "float", "default": 0.01},
    "latency_quantile": {"type": "float", "default": 0.95},
    "max_latency": {"type": "float", "default": 1},
    "latency_ratio": {"type": "float", "default": 2},
    "latency_floor": {"type": "float", "default": 0.05},
    "max_restarts": {"type": "int", "default": 0},
    "failure_limit": {"type": "int", "default": 2},
    "min_passed": {"type": "int", "default": 2, "no_log": False},  # a count, not a password
}


class Source:
    """Instant queries at a given time against one Prometheus-compatible API."""

    def __init__(self, module):
        self.module = module
        self.p = module.params

    def query(self, promql, at):
        params = {**self.p["query_params"], "query": promql, "time": f"{at:.3f}"}
        url = f"{self.p['prometheus_url'].rstrip('/')}/api/v1/query?{urllib.parse.urlencode(params)}"
        code, raw, error = request(url, self.p["timeout"])
        if code != 200:
            self.module.fail_json(msg=f"canary analysis: {url}: {error or f'HTTP {code}'}")
        return json.loads(raw)["data"]["result"]

    def by_instance(self, promql, at):
        return {s["metric"].get("instance", ""): float(s["value"][1]) for s in self.query(promql, at)}

    def interval(self, end):
        """Per instance: requests, errors, latency buckets and start time, over the interval ending at `end`."""
        p = self.p
        window = f"[{max(int(p['interval'] * 1000), 1)}ms]"
        traffic = p["traffic_selector"]
        requests = self.by_instance(f"sum by (instance) (increase({p['requests_metric']}{{{traffic}}}{window}))", end)
        errors = self.by_instance(
            f'sum by (instance) (increase({p["requests_metric"]}{{{traffic},code=~"5.."}}{window}))', end)
        buckets = {}
        for s in self.query(f"sum by (instance, le) (increase({p['duration_metric']}_bucket{{{traffic}}}{window}))",
                            end):
            bound = float(s["metric"]["le"])
            buckets.setdefault(s["metric"].get("instance", ""), {})[bound] = float(s["value"][1])
        started = self.by_instance(f"max by (instance) ({p['start_time_metric']})", end)
        baseline = set()
        if p["baseline_version"]:
            version = p["baseline_version"].replace("\\", "\\\\").replace('"', '\\"')
            baseline = set(self.by_instance(f'max by (instance) ({p["version_metric"]}{{version="{version}"}})', end))
        return requests, errors, buckets, started, baseline - {p["canary"]}


def side(instances, requests, errors, buckets, restarts):
    """The summed numbers of a set of instances (the canary alone, or the baseline)."""
    merged = {}
    for name in instances:
        for bound, count in buckets.get(name, {}).items():
            merged[bound] = merged.get(bound, 0.0) + count
    return {"requests": sum(requests.get(n, 0.0) for n in instances),
            "errors": sum(errors.get(n, 0.0) for n in instances), "buckets": merged,
            "restarts": max((len(restarts.get(n, ())) for n in instances), default=0)}


def main():
    module = AnsibleModule(
        argument_spec={
            "prometheus_url": {"type": "str", "required": True},
            "canary": {"type": "str", "required": True},
            "baseline_version": {"type": "str", "default": ""},
            "interval": {"type": "float", "default": 60},
            "intervals": {"type": "int", "default": 5},
            "delay": {"type": "float", "default": 0},
            "query_params": {"type": "dict", "default": {}},
            "timeout": {"type": "float", "default": 10},
            "requests_metric": {"type": "str", "default": "refapp_http_requests_total"},
            "duration_metric": {"type": "str", "default": "refapp_http_request_duration_seconds"},
            "start_time_metric": {"type": "str", "default": "refapp_start_time_seconds"},
            "version_metric": {"type": "str", "default": "refapp_build_info"},
            "traffic_selector": {"type": "str", "default": 'path!~"/health|/metrics"'},
            **CONDITIONS,
        },
    )
    p = module.params
    if p["interval"] <= 0 or p["intervals"] < 1 or p["min_passed"] > p["intervals"] or p["failure_limit"] < 1:
        module.fail_json(msg="canary analysis: need interval > 0, intervals >= 1, failure_limit >= 1 and "
                             f"min_passed <= intervals (got {p['interval']}, {p['intervals']}, "
                             f"{p['failure_limit']}, {p['min_passed']})")
    source = Source(module)
    started = time.time()
    restarts = {}  # instance -> process start times seen after the analysis began
    results, report, baseline_names = [], [], []
    decision = None
    for index in range(1, p["intervals"] + 1):
        end = started + index * p["interval"]
        time.sleep(max(end + p["delay"] - time.time(), 0))
        requests, errors, buckets, start_times, baseline_set = source.interval(end)
        for name, value in start_times.items():
            if value > started:
                restarts.setdefault(name, set()).add(value)
        baseline_names = sorted(baseline_set)
        canary = summarize(side([p["canary"]], requests, errors, buckets, restarts), p["latency_quantile"])
        baseline = (summarize(side(baseline_names, requests, errors, buckets, restarts), p["latency_quantile"])
                    if baseline_names else None)
        result, reasons = judge_interval(canary, baseline, p)
        results.append(result)
        report.append({"interval": index, "result": result, "reasons": reasons, "canary": canary,
                       "baseline": baseline})
        decision, reason = verdict(results, p["intervals"], p)
        if decision:
            break
    module.exit_json(changed=False, decision=decision, reason=reason, intervals=report,
                     baseline_version=p["baseline_version"], baseline_instances=baseline_names,
                     report=report_lines(report, decision, reason, p["latency_quantile"]))


if __name__ == "__main__":
    main()
