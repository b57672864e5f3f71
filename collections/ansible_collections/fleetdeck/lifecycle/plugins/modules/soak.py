#!/usr/bin/python
# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Watch a freshly upgraded canary for a while before the rest of the fleet follows."""

from __future__ import annotations

DOCUMENTATION = r"""
module: soak
short_description: Keep checking a canary's health (and optionally its error rate) for a soak period
description:
  - Polls the health URL every O(interval) seconds for O(duration) seconds; every answer must be healthy as
    the health_check module defines it (HTTP 200, the expected status and version, database reachable when
    reported), otherwise the module fails at once naming the answer.
  - With O(metrics_url), compares the request counter O(requests_metric) at the start and the end of the soak and
    fails when the share of answers whose C(code) label matches O(error_code_prefix) exceeds O(max_error_ratio).
  - With O(prometheus_url) and O(promql), runs the instant query at the end and fails when its first value
    exceeds O(max_value).
version_added: "0.1.0"
author:
  - fleetdeck maintainers (@fleetdeck)
options:
  health_url: {description: Health endpoint of the canary., type: str, required: true}
  expected_version: {description: Version the canary must report., type: str, required: true}
  expected_status: {description: Value of the JSON C(status) field that means healthy., type: str, default: ok}
  duration: {description: Soak period in seconds., type: float, default: 60}
  interval: {description: Seconds between health checks., type: float, default: 5}
  timeout: {description: Seconds to wait for each answer., type: float, default: 5}
  metrics_url:
    description: Prometheus text endpoint of the app; empty skips the error-rate condition.
    type: str
    default: ""
  requests_metric: {description: Counter of answered requests with a C(code) label., type: str, default: ""}
  error_code_prefix: {description: Codes starting with this count as errors., type: str, default: "5"}
  max_error_ratio: {description: Highest acceptable share of errors during the soak., type: float, default: 0.05}
  prometheus_url:
    description: Base URL of a Prometheus-compatible API; empty skips the PromQL condition.
    type: str
    default: ""
  promql: {description: Instant query whose first value must not exceed O(max_value)., type: str, default: ""}
  max_value: {description: Highest acceptable value of O(promql)., type: float, default: 0}
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
- name: Soak the canary for two minutes
  fleetdeck.lifecycle.soak:
    health_url: http://127.0.0.1:8080/health
    expected_version: "1.1.0"
    duration: 120
    metrics_url: http://127.0.0.1:8080/metrics
    requests_metric: refapp_http_requests_total
"""

RETURN = r"""
checks: {description: Health checks made., returned: always, type: int}
error_ratio:
  description: Share of error answers during the soak (metrics condition only).
  returned: when metrics_url
  type: float
promql_value: {description: First value of the query., returned: when promql, type: float}
"""

import json
import re
import time
import urllib.parse

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.health import (
    describe_answer,
    is_healthy,
    parse_body,
    request,
)

SAMPLE_RE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _get(module, url, timeout):
    """The body of a 200 answer as text; anything else fails the module naming the URL."""
    code, raw, error = request(url, timeout)
    if code != 200:
        module.fail_json(msg=f"{url}: {error or f'HTTP {code}'}")
    return raw.decode("utf-8", "replace")


def request_counts(text, metric, error_prefix):
    """Total and error answers from the counter's samples in Prometheus text format."""
    total = errors = 0.0
    for line in text.splitlines():
        match = SAMPLE_RE.match(line)
        if not match or match["name"] != metric:
            continue
        value = float(match["value"])
        total += value
        if dict(LABEL_RE.findall(match["labels"] or "")).get("code", "").startswith(error_prefix):
            errors += value
    return total, errors


def check_health(params):
    """None when healthy, else the answer in words."""
    code, raw, error = request(params["health_url"], params["timeout"])
    if error:
        return f"no answer ({error})"
    body = parse_body(raw)
    if is_healthy(code, body, params["expected_version"], status=params["expected_status"]):
        return None
    return describe_answer(code, body, params["expected_version"])


def main():
    module = AnsibleModule(
        argument_spec={
            "health_url": {"type": "str", "required": True},
            "expected_version": {"type": "str", "required": True},
            "expected_status": {"type": "str", "default": "ok"},
            "duration": {"type": "float", "default": 60},
            "interval": {"type": "float", "default": 5},
            "timeout": {"type": "float", "default": 5},
            "metrics_url": {"type": "str", "default": ""},
            "requests_metric": {"type": "str", "default": ""},
            "error_code_prefix": {"type": "str", "default": "5"},
            "max_error_ratio": {"type": "float", "default": 0.05},
            "prometheus_url": {"type": "str", "default": ""},
            "promql": {"type": "str", "default": ""},
            "max_value": {"type": "float", "default": 0},
        },
        required_together=[("metrics_url", "requests_metric"), ("prometheus_url", "promql")],
    )
    p = module.params
    result = {"changed": False, "checks": 0}
    started = time.monotonic()
    if p["metrics_url"]:
        first = request_counts(_get(module, p["metrics_url"], p["timeout"]), p["requests_metric"],
                               p["error_code_prefix"])
    while True:
        problem = check_health(p)
        result["checks"] += 1
        elapsed = time.monotonic() - started
        if problem:
            module.fail_json(msg=f"canary unhealthy after {elapsed:.0f}s of soak: {problem}", **result)
        if elapsed >= p["duration"]:
            break
        time.sleep(min(p["interval"], max(p["duration"] - elapsed, 0.1)))
    if p["metrics_url"]:
        total, errors = request_counts(_get(module, p["metrics_url"], p["timeout"]), p["requests_metric"],
                                       p["error_code_prefix"])
        answered = total - first[0]
        result["error_ratio"] = (errors - first[1]) / answered if answered > 0 else 0.0
        if result["error_ratio"] > p["max_error_ratio"]:
            module.fail_json(msg=f"canary error rate {result['error_ratio']:.1%} during the soak exceeds "
                                 f"{p['max_error_ratio']:.1%}", **result)
    if p["promql"]:
        query = urllib.parse.urlencode({"query": p["promql"]})
        answer = json.loads(_get(module, f"{p['prometheus_url'].rstrip('/')}/api/v1/query?{query}", p["timeout"]))
        series = answer.get("data", {}).get("result", [])
        result["promql_value"] = float(series[0]["value"][1]) if series else 0.0
        if result["promql_value"] > p["max_value"]:
            module.fail_json(msg=f"canary query {p['promql']!r} = {result['promql_value']} exceeds {p['max_value']}",
                             **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
