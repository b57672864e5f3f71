#!/usr/bin/python
# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
module: health_check
short_description: Wait until an HTTP health endpoint reports healthy
version_added: 0.1.0
description:
  - Polls an HTTP(S) health URL from the managed host until the answer is healthy, the number of
    attempts is used up or the overall deadline passes.
  - An answer is healthy when the HTTP status code equals O(status_code), the body is a JSON object whose
    C(status) equals O(expected_status), whose C(database) (when the app reports one) is V(reachable) and,
    if O(expected_version) is set, whose C(version) equals it. The soak module judges answers the same way.
  - The module only reads, so it runs normally in check mode and never reports a change.
  - On failure the message names the URL, the attempts and time spent, and the last answer in words.
options:
  url:
    description: Health endpoint to poll, for example V(http://127.0.0.1:8080/health).
    type: str
    required: true
  expected_version:
    description:
      - Version the instance must report in the JSON C(version) field.
      - When unset, any version is accepted.
    type: str
  expected_status:
    description: Value the JSON C(status) field must have.
    type: str
    default: ok
  status_code:
    description: HTTP status code of a healthy answer.
    type: int
    default: 200
  retries:
    description: Maximum number of attempts (at least 1).
    type: int
    default: 30
  delay:
    description: Seconds to wait between attempts.
    type: float
    default: 1
  timeout:
    description: Seconds each request may take.
    type: float
    default: 5
  overall_timeout:
    description:
      - Hard deadline in seconds for the whole check, whatever O(retries) says.
      - Requests are shortened so they do not run past it.
    type: float
  validate_certs:
    description: Verify TLS certificates for V(https) URLs.
    type: bool
    default: true
  headers:
    description:
      - Extra request headers.
      - Like every option they show up in the task result's C(invocation); use C(no_log) on the task
        when they carry a token.
    type: dict
    default: {}
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - fleetdeck maintainers (@fleetdeck)
"""

EXAMPLES = r"""
- name: Wait until the new release answers healthy
  fleetdeck.lifecycle.health_check:
    url: "http://127.0.0.1:{{ app_port }}/health"
    expected_version: "{{ app_version }}"
    retries: 60
    delay: 2
    overall_timeout: 150

- name: Probe once, without failing the play
  fleetdeck.lifecycle.health_check:
    url: https://app.example.internal/health
    retries: 1
    headers:
      Authorization: "Bearer {{ health_token }}"
  register: probe
  ignore_errors: true
"""

RETURN = r"""
healthy:
  description: Whether the last answer was healthy.
  returned: always
  type: bool
  sample: true
attempts:
  description: Number of requests made.
  returned: always
  type: int
  sample: 3
elapsed:
  description: Seconds spent polling.
  returned: always
  type: float
  sample: 2.013
status_code:
  description: HTTP status code of the last answer, or -1 if there was none.
  returned: always
  type: int
  sample: 200
body:
  description: Last answer body, parsed JSON if possible, otherwise text trimmed to 2 KiB.
  returned: always
  type: raw
  sample: {"status": "ok", "version": "1.2.0"}
version:
  description: C(version) reported in the last answer, if any.
  returned: always
  type: str
  sample: 1.2.0
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.health import (
    describe_answer,
    is_healthy,
    parse_body,
    request,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            expected_version=dict(type="str"),
            expected_status=dict(type="str", default="ok"),
            status_code=dict(type="int", default=200),
            retries=dict(type="int", default=30),
            delay=dict(type="float", default=1.0),
            timeout=dict(type="float", default=5.0),
            overall_timeout=dict(type="float"),
            validate_certs=dict(type="bool", default=True),
            headers=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["retries"] < 1:
        module.fail_json(msg="retries must be at least 1")
    overall = p["overall_timeout"]
    if p["timeout"] <= 0 or p["delay"] < 0 or (overall is not None and overall <= 0):
        module.fail_json(msg="timeout and overall_timeout must be positive, delay must not be negative")

    start = time.monotonic()
    deadline = None if overall is None else start + overall
    attempts = 0
    while True:
        timeout = p["timeout"] if deadline is None else min(p["timeout"], deadline - time.monotonic())
        attempts += 1
        try:
            code, raw, error = request(p["url"], timeout, p["headers"], p["validate_certs"])
        except ValueError as e:
            module.fail_json(msg=f"health check of {p['url']}: invalid URL ({e})", healthy=False)
        body = None if error else parse_body(raw)
        healthy = not error and is_healthy(code, body, p["expected_version"], p["status_code"], p["expected_status"])
        if healthy or attempts >= p["retries"]:
            break
        # No point in pausing when the deadline would pass before the next request could start.
        if deadline is not None and deadline - time.monotonic() <= p["delay"]:
            break
        time.sleep(p["delay"])

    elapsed = time.monotonic() - start
    result = dict(
        changed=False,
        healthy=healthy,
        attempts=attempts,
        elapsed=round(elapsed, 3),
        status_code=code,
        body=body,
        version=str(body["version"]) if isinstance(body, dict) and "version" in body else None,
    )
    if healthy:
        module.exit_json(**result)
    last = f"last attempt {error}" if error else f"last answer {describe_answer(code, body, p['expected_version'])}"
    noun = "attempt" if attempts == 1 else "attempts"
    module.fail_json(
        msg=f"health check of {p['url']} failed after {attempts} {noun} in {elapsed:.1f}s: {last}", **result
    )


if __name__ == "__main__":
    main()
