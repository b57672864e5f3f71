"""The soak module against a local app double serving /health, /metrics and a Prometheus query API."""

import json

from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import run_module

HEALTHY = {"status": "ok", "version": "1.1.0"}


def metrics(total_ok, total_5xx):
    def answer(_path):
        return 200, (
            "# TYPE refapp_http_requests_total counter\n"
            f'refapp_http_requests_total{{method="GET",path="/items",code="200"}} {total_ok.pop(0)}\n'
            f'refapp_http_requests_total{{method="GET",path="/items",code="503"}} {total_5xx.pop(0)}\n'
            'refapp_http_request_duration_seconds_count{path="/items"} 99\n'
        )
    return answer


def soak(server, **args):
    base = server.url.rsplit("/", 1)[0]
    args = {"duration": 0.6, "interval": 0.2, **args}
    return run_module("soak", health_url=server.url, expected_version="1.1.0",
                      **{k: v.replace("BASE", base) if isinstance(v, str) else v for k, v in args.items()})


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


def test_error_rate_over_the_window_is_judged(server):
    server.script = [(200, HEALTHY, 0)]
    server.routes["/metrics"] = metrics([100, 140], [5, 15])  # 10 errors of 50 answers in the window
    rc, result = soak(server, metrics_url="BASE/metrics", requests_metric="refapp_http_requests_total",
                      max_error_ratio=0.1)
    assert rc == 1
    assert result["error_ratio"] == 0.2
    assert "error rate 20.0% during the soak exceeds 10.0%" in result["msg"]

    server.routes["/metrics"] = metrics([100, 140], [5, 6])
    rc, result = soak(server, metrics_url="BASE/metrics", requests_metric="refapp_http_requests_total",
                      max_error_ratio=0.1)
    assert rc == 0 and result["error_ratio"] == 1 / 41  # 1 error of 41 answers


def test_promql_condition(server):
    server.script = [(200, HEALTHY, 0)]
    answer = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "3"]}]}}
    server.routes["/api/v1/query"] = lambda path: (200, json.dumps(answer))
    rc, result = soak(server, prometheus_url="BASE", promql="sum(rate(errors[1m]))", max_value=1)
    assert rc == 1 and result["promql_value"] == 3.0
    rc, result = soak(server, prometheus_url="BASE", promql="sum(rate(errors[1m]))", max_value=5)
    assert rc == 0


def test_unreachable_database_is_unhealthy_as_for_health_check(server):
    server.script = [(200, {**HEALTHY, "database": "unreachable"}, 0)]
    rc, result = soak(server)
    assert rc == 1 and result["checks"] == 1
    assert "database=unreachable" in result["msg"]


def test_metrics_endpoint_that_does_not_answer_is_named(server):
    server.script = [(200, HEALTHY, 0)]
    server.routes["/metrics"] = lambda path: (404, "not here")
    rc, result = soak(server, metrics_url="BASE/metrics", requests_metric="refapp_http_requests_total")
    assert rc == 1
    assert result["msg"] == f"{server.url.rsplit('/', 1)[0]}/metrics: HTTP 404"
