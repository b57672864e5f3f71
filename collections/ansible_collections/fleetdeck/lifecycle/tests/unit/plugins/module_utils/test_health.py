"""The one definition of a healthy answer, as health_check and soak apply it."""

from __future__ import annotations

import pytest
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.health import describe_answer, is_healthy

OK = {"status": "ok", "version": "1.2.0", "database": "reachable"}


@pytest.mark.parametrize(
    ("code", "body", "expected_version", "healthy"),
    [
        (200, OK, "1.2.0", True),
        (200, OK, None, True),
        (200, {"status": "ok", "version": "1.2.0"}, "1.2.0", True),  # an app without a database
        (503, OK, "1.2.0", False),
        (200, dict(OK, status="failing"), "1.2.0", False),
        (200, OK, "1.3.0", False),
        (200, dict(OK, database="unreachable"), "1.2.0", False),
        (200, "ok", None, False),
        (200, ["ok"], None, False),
    ],
)
def test_healthy_means_code_status_version_and_database(code, body, expected_version, healthy):
    assert is_healthy(code, body, expected_version) is healthy


def test_expected_code_and_status_can_be_changed():
    assert is_healthy(202, {"status": "pass"}, status_code=202, status="pass")
    assert not is_healthy(200, {"status": "ok"}, status_code=202)


def test_answer_in_words_names_the_fields_that_matter():
    body = {"status": "failing", "version": "1.2.0", "database": "unreachable", "schema": 2}
    assert describe_answer(503, body, "1.2.0") == (
        "HTTP 503, status=failing, version=1.2.0 (expected 1.2.0), database=unreachable, schema=2"
    )
    assert describe_answer(200, "", None) == "HTTP 200, empty body"
