#!/usr/bin/python
# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Watch a freshly upgraded canary for a while before the rest of the fleet follows."""

from __future__ import annotations

DOCUMENTATION = r"""
module: soak
short_description: Keep checking a canary's health for a soak period
description:
  - Polls the health URL every O(interval) seconds for O(duration) seconds; every answer must be healthy as
    the health_check module defines it (HTTP 200, the expected status and version, database reachable when
    reported), otherwise the module fails at once naming the answer.
  - Error rates, latency and restarts are judged by M(fleetdeck.lifecycle.canary_analysis), against the canary's
    peers.
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
"""

RETURN = r"""
checks: {description: Health checks made., returned: always, type: int}
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.health import (
    describe_answer,
    is_healthy,
    parse_body,
    request,
)


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
        },
    )
    p = module.params
    result = {"changed": False, "checks": 0}
    started = time.monotonic()
    while True:
        problem = check_health(p)
        result["checks"] += 1
        elapsed = time.monotonic() - started
        if problem:
            module.fail_json(msg=f"canary unhealthy after {elapsed:.0f}s of soak: {problem}", **result)
        if elapsed >= p["duration"]:
            break
        time.sleep(min(p["interval"], max(p["duration"] - elapsed, 0.1)))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
