"""The canary_analysis module against a scripted Prometheus query API."""

import json
import urllib.parse

from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import run_module


def vector(samples):
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [0, str(value)]} for labels, value in samples]}})


def prometheus(canary_errors, queries):
    """inst1 the canary (1.1.0), inst2 and inst3 the baseline (1.0.0), 100 requests each per interval."""
    def answer(path):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
        queries.append(query)
        promql = query["query"][0]
        if "refapp_build_info" in promql:
            return 200, vector([({"instance": "inst2"}, 1), ({"instance": "inst3"}, 1)])
        if 'code=~"5.."' in promql:
            return 200, vector([({"instance": "inst1"}, canary_errors), ({"instance": "inst2"}, 1)])
        if "_bucket" in promql:
            return 200, vector([({"instance": i, "le": le}, 100) for i in ("inst1", "inst2", "inst3")
                                for le in ("0.05", "+Inf")])
        if "refapp_start_time_seconds" in promql:
            return 200, vector([({"instance": "inst1"}, 1000), ({"instance": "inst2"}, 1000)])
        return 200, vector([({"instance": i}, 100) for i in ("inst1", "inst2", "inst3")])
    return answer


def analyse(server, **args):
    base = server.url.rsplit("/", 1)[0]
    return run_module("canary_analysis", prometheus_url=base, canary="inst1", baseline_version="1.0.0",
                      interval=0.2, intervals=3, query_params={"nocache": "1"}, **args)


def test_a_canary_with_the_baselines_error_rate_passes(server):
    queries = []
    server.routes["/api/v1/query"] = prometheus(1, queries)
    rc, result = analyse(server)
    assert rc == 0, result
    assert (result["decision"], result["baseline_instances"]) == ("pass", ["inst2", "inst3"])
    first = result["intervals"][0]
    assert first["canary"] == {"requests": 100, "error_rate": 0.01, "latency": 0.0475, "restarts": 0}
    assert first["baseline"] == {"requests": 200, "error_rate": 0.005, "latency": 0.0475, "restarts": 0}
    assert all(q["nocache"] == ["1"] and float(q["time"][0]) > 0 for q in queries)
    assert any('refapp_build_info{version="1.0.0"}' in q["query"][0] for q in queries)


def test_an_erroring_canary_fails_at_the_failure_limit(server):
    server.routes["/api/v1/query"] = prometheus(30, [])
    rc, result = analyse(server)
    assert rc == 0, result
    assert result["decision"] == "fail"
    assert result["reason"] == "2 of 2 intervals failed (failure limit 2)"
    assert result["intervals"][0]["reasons"] == [
        "error rate 30.0% > 5.0%", "error rate 30.0% > 2 x baseline max(0.5%, floor 1.0%)"]
    assert result["report"][0] == "decision: FAIL (2 of 2 intervals failed (failure limit 2))"
    assert result["report"][2] == (" 1 fail         |      100   30.0%   0.048s   0 |      200    0.5%   0.048s   0 | "
                                   "error rate 30.0% > 5.0%; error rate 30.0% > 2 x baseline max(0.5%, floor 1.0%)")


def test_an_unreachable_api_fails_naming_it(server):
    server.routes["/api/v1/query"] = lambda path: (503, "down")
    rc, result = analyse(server)
    assert rc == 1 and "/api/v1/query" in result["msg"] and result["msg"].endswith("HTTP 503")


def test_bad_conditions_are_refused(server):
    rc, result = analyse(server, min_passed=4)
    assert rc == 1 and "min_passed <= intervals" in result["msg"]
