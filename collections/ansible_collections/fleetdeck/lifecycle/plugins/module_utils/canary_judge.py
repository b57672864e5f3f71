# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""The canary analysis conditions (docs/canary-analysis.md): one interval judged, then the run's verdict.

Pure functions over numbers the canary_analysis module read from a Prometheus-compatible API, so that the
conditions are tested without a metrics server.

A side (the canary, or the baseline: instances still on the old release) is a dict with C(requests) (answered
requests in the interval), C(errors) (of them 5xx), C(buckets) (cumulative latency histogram, upper bound ->
count) and C(restarts).
"""

from __future__ import annotations

import math

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


def histogram_quantile(q, buckets):
    """The q-quantile of a cumulative histogram {upper bound: count}, interpolated as Prometheus does.

    None when the histogram holds no observation.
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def summarize(side, quantile):
    """The numbers the conditions use: requests, error rate, latency quantile, restarts."""
    requests = side["requests"]
    return {
        "requests": round(requests, 3),
        "error_rate": round(side["errors"] / requests, 6) if requests > 0 else None,
        "latency": histogram_quantile(quantile, side["buckets"]) if requests > 0 else None,
        "restarts": side["restarts"],
    }


def _ratio_limit(baseline_value, ratio, floor):
    return ratio * max(baseline_value or 0.0, floor)


def judge_interval(canary, baseline, c):
    """(result, reasons) of one interval; c holds the conditions (module parameters of the same names).

    baseline is None when there is none to compare with: only the absolute thresholds apply.
    """
    reasons = []
    if canary["requests"] < c["min_requests"]:
        return INCONCLUSIVE, [f"canary answered {canary['requests']:g} requests, fewer than the "
                              f"{c['min_requests']} needed"]
    compare = baseline is not None and baseline["requests"] >= c["min_requests"]
    if baseline is not None and not compare:
        reasons.append(f"baseline answered {baseline['requests']:g} requests, fewer than {c['min_requests']}: "
                       "ratios not judged")
    failed = False
    rate = canary["error_rate"]
    if rate > c["max_error_rate"]:
        failed = True
        reasons.append(f"error rate {rate:.1%} > {c['max_error_rate']:.1%}")
    if compare and rate > _ratio_limit(baseline["error_rate"], c["error_rate_ratio"], c["error_rate_floor"]):
        failed = True
        reasons.append(f"error rate {rate:.1%} > {c['error_rate_ratio']:g} x baseline "
                       f"max({baseline['error_rate']:.1%}, floor {c['error_rate_floor']:.1%})")
    latency = canary["latency"]
    if latency is not None and latency > c["max_latency"]:
        failed = True
        reasons.append(f"p{c['latency_quantile'] * 100:g} latency {latency:.3f}s > {c['max_latency']:g}s")
    if compare and latency is not None and latency > _ratio_limit(
            baseline["latency"], c["latency_ratio"], c["latency_floor"]):
        failed = True
        reasons.append(f"p{c['latency_quantile'] * 100:g} latency {latency:.3f}s > {c['latency_ratio']:g} x "
                       f"baseline max({baseline['latency'] or 0:.3f}s, floor {c['latency_floor']:g}s)")
    if canary["restarts"] > c["max_restarts"]:
        failed = True
        reasons.append(f"{canary['restarts']} restarts > {c['max_restarts']}")
    return (FAIL if failed else PASS), reasons


def verdict(results, planned, c):
    """(decision, reason) from the interval results so far; decision None while it is still open.

    fail: failure_limit intervals failed. pass (after all planned intervals): fewer failures than the limit and at
    least min_passed intervals passed. inconclusive otherwise (too few samples in too many intervals).
    """
    failed = results.count(FAIL)
    passed = results.count(PASS)
    if failed >= c["failure_limit"]:
        return FAIL, f"{failed} of {len(results)} intervals failed (failure limit {c['failure_limit']})"
    if len(results) < planned:
        return None, ""
    if passed >= c["min_passed"]:
        return PASS, f"{passed} of {planned} intervals passed, {failed} failed (failure limit {c['failure_limit']})"
    return INCONCLUSIVE, (f"only {passed} of {planned} intervals passed (needed {c['min_passed']}), "
                          f"{results.count(INCONCLUSIVE)} had too few samples, {failed} failed")


def _cells(numbers):
    if numbers is None:
        return f"{'-':>8} {'-':>7} {'-':>8} {'-':>3}"
    rate = "-" if numbers["error_rate"] is None else f"{numbers['error_rate']:.1%}"
    latency = "-" if numbers["latency"] is None else f"{numbers['latency']:.3f}s"
    return f"{numbers['requests']:>8g} {rate:>7} {latency:>8} {numbers['restarts']:>3}"


def report_lines(intervals, decision, reason, quantile):
    """The analysis as the operator reads it: the decision, then one row per interval."""
    percentile = f"p{quantile * 100:g}"
    lines = [f"decision: {str(decision).upper()} ({reason})",
             f"{'#':>2} {'result':<12} | {'canary':>8} {'errors':>7} {percentile:>8} {'rst':>3} | "
             f"{'baseline':>8} {'errors':>7} {percentile:>8} {'rst':>3} | why"]
    for row in intervals:
        lines.append(f"{row['interval']:>2} {row['result']:<12} | {_cells(row['canary'])} | "
                     f"{_cells(row['baseline'])} | {'; '.join(row['reasons']) or '-'}")
    return lines
