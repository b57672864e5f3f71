"""The soak module against a local app double serving /health."""

from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import run_module

HEALTHY = {"status": "ok", "version": "1.1.0"}


def soak(server, **args):
    args = {"duration": 0.6, "interval": 0.2, **args}
    return run_module("soak", health_url=server.url, expected_version="1.1.0", **args)


def test_healthy_canary_passes_after_several_checks(server):
    server.script = [(200, HEALTHY, 0)]
    rc, result = soak(server, duration=1.5, interval=0.1)  # room for slow first requests on a busy machine
    assert rc == 0, result
    assert result["checks"] >= 3 and result["changed"] is False
    assert len(server.requests) == result["checks"]


def test_canary_failing_during_the_soak_fails_at_once(server):
    server.script = [(200, HEALTHY, 0), (503, {"status": "failing", "version": "1.1.0"}, 0)]
    rc, result = soak(server, duration=30)
    assert rc == 1
    assert result["checks"] == 2
    assert "canary unhealthy after" in result["msg"] and "HTTP 503, status=failing" in result["msg"]


def test_wrong_version_is_unhealthy(server):
    server.script = [(200, {"status": "ok", "version": "1.0.0"}, 0)]
    rc, result = soak(server)
    assert rc == 1 and "version=1.0.0" in result["msg"]


def test_unreachable_database_is_unhealthy_as_for_health_check(server):
    server.script = [(200, {**HEALTHY, "database": "unreachable"}, 0)]
    rc, result = soak(server)
    assert rc == 1 and result["checks"] == 1
    assert "database=unreachable" in result["msg"]
