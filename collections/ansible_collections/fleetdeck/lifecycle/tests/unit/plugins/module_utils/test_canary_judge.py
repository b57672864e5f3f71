"""The canary analysis conditions, without a metrics server."""

import math

import pytest
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.canary_judge import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    histogram_quantile,
    judge_interval,
    summarize,
    verdict,
)

CONDITIONS = {"min_requests": 20, "max_error_rate": 0.05, "error_rate_ratio": 2, "error_rate_floor": 0.01,
              "latency_quantile": 0.95, "max_latency": 1.0, "latency_ratio": 2, "latency_floor": 0.05,
              "max_restarts": 0, "failure_limit": 2, "min_passed": 2}
FAST = {0.05: 95, 0.1: 100, math.inf: 100}  # 95 of 100 answers within 50 ms


def numbers(requests, errors, buckets=None, restarts=0):
    return summarize({"requests": requests, "errors": errors, "buckets": buckets or FAST, "restarts": restarts},
                     0.95)


def test_histogram_quantile_interpolates_like_prometheus():
    assert histogram_quantile(0.5, {0.1: 50, 0.2: 100, math.inf: 100}) == 0.1
    assert histogram_quantile(0.75, {0.1: 50, 0.2: 100, math.inf: 100}) == pytest.approx(0.15)
    assert histogram_quantile(0.95, {0.1: 0, math.inf: 10}) == 0.1  # in the +Inf bucket: the highest bound
    assert histogram_quantile(0.95, {0.1: 0, math.inf: 0}) is None


def test_summary_numbers():
    assert numbers(200, 10) == {"requests": 200, "error_rate": 0.05, "latency": 0.05, "restarts": 0}
    assert numbers(0, 0)["error_rate"] is None


def test_too_few_canary_requests_is_inconclusive():
    result, reasons = judge_interval(numbers(19, 0), numbers(500, 0), CONDITIONS)
    assert result == INCONCLUSIVE
    assert reasons == ["canary answered 19 requests, fewer than the 20 needed"]


def test_absolute_error_rate_fails_without_a_baseline():
    assert judge_interval(numbers(100, 6), None, CONDITIONS) == (FAIL, ["error rate 6.0% > 5.0%"])
    assert judge_interval(numbers(100, 5), None, CONDITIONS) == (PASS, [])


def test_error_rate_is_judged_against_the_baseline():
    # 4% is under the absolute 5% but more than twice the baseline's 1.5%.
    result, reasons = judge_interval(numbers(100, 4), numbers(200, 3), CONDITIONS)
    assert result == FAIL
    assert reasons == ["error rate 4.0% > 2 x baseline max(1.5%, floor 1.0%)"]
    # A baseline at 0% counts as the floor (1%): 2% is still acceptable.
    assert judge_interval(numbers(100, 2), numbers(200, 0), CONDITIONS) == (PASS, [])


def test_a_quiet_baseline_is_named_and_only_absolute_thresholds_apply():
    result, reasons = judge_interval(numbers(100, 4), numbers(5, 0), CONDITIONS)
    assert result == PASS
    assert reasons == ["baseline answered 5 requests, fewer than 20: ratios not judged"]


def test_latency_absolute_and_against_the_baseline():
    slow = {0.5: 10, 2.5: 100, math.inf: 100}
    result, reasons = judge_interval(numbers(100, 0, slow), None, CONDITIONS)
    assert result == FAIL and reasons[0].startswith("p95 latency 2.389s > 1s")
    medium = {0.1: 0, 0.25: 100, math.inf: 100}  # p95 0.242 s, baseline 0.05 s
    result, reasons = judge_interval(numbers(100, 0, medium), numbers(100, 0), CONDITIONS)
    assert result == FAIL
    assert reasons == ["p95 latency 0.242s > 2 x baseline max(0.050s, floor 0.05s)"]


def test_restarts_fail():
    assert judge_interval(numbers(100, 0, restarts=1), numbers(100, 0), CONDITIONS) == (FAIL, ["1 restarts > 0"])


def test_verdict_stops_at_the_failure_limit():
    assert verdict([FAIL], 5, CONDITIONS) == (None, "")
    assert verdict([FAIL, PASS, FAIL], 5, CONDITIONS) == (FAIL, "2 of 3 intervals failed (failure limit 2)")


def test_verdict_pass_and_inconclusive_after_every_interval():
    assert verdict([PASS, FAIL, PASS], 3, CONDITIONS) == (PASS, "2 of 3 intervals passed, 1 failed (failure limit 2)")
    assert verdict([PASS, INCONCLUSIVE, INCONCLUSIVE], 3, CONDITIONS) == (
        INCONCLUSIVE, "only 1 of 3 intervals passed (needed 2), 2 had too few samples, 0 failed")
