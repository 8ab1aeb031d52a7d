"""Range queries evaluated for all steps at once give the step-by-step answers (the path the
comparison against Prometheus checks), over series with gaps, a counter reset and NaN values."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from sysmon.core.promql.engine import NAME, Evaluation, Matcher, SeriesData
from sysmon.core.promql.ranges import _Fallback, evaluate, range_query
from sysmon.core.promql.source import compile_matcher, matches


class MemorySource:
    """A Source over series held in memory (the engine's contract; storage has its own tests)."""

    def __init__(self, series: list[SeriesData]):
        self.series = series

    async def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        out = []
        for s in self.series:
            if matches(dict(s.labels), matchers, [compile_matcher(m) for m in matchers]):
                keep = (s.ts >= start_ms) & (s.ts <= end_ms)
                out.append(SeriesData(s.labels, s.ts[keep], s.vs[keep]))
        return out


def _series() -> list[SeriesData]:
    rng = np.random.default_rng(11)
    out = []
    for host in ("a", "b", "c"):
        for code in ("200", "500"):
            ts = np.cumsum(rng.integers(4_000, 6_000, 700)).astype(np.int64)
            keep = (ts < 1_000_000) | (ts > 1_400_000) if host == "b" else np.ones(len(ts), dtype=bool)  # a gap
            vs = np.cumsum(rng.random(700) * 5)
            if code == "500":
                vs[300:] -= vs[300] - 1.0  # a reset
            labels = ((NAME, "req_total"), ("code", code), ("host", host))
            out.append(SeriesData(labels, ts[keep], vs[keep]))
        g = np.arange(0, 3_500_000, 15_000, dtype=np.int64)
        gv = np.sin(g / 1e5) * 10 + 20
        if host == "c":
            gv[40] = math.nan
        out.append(SeriesData(((NAME, "temp"), ("host", host)), g, gv))
        out.append(SeriesData(((NAME, "temp_max"), ("host", host)), g, gv + 1))
    return out


ALL_STEPS = [
    "req_total", "temp", "-temp", "temp * 2 - 1", "10 / temp", "(temp + 1) / 0", "0 / (temp * 0)",
    "rate(req_total[1m])", "increase(req_total[2m])", "delta(temp[1m])", "rate(req_total[30s] offset 1m)",
    "sum(rate(req_total[1m]))", "sum by (code) (rate(req_total[1m]))", "avg without (code) (req_total)",
    "max by (host) (temp)", "min(temp)", "count by (code) (req_total)", "group(temp)",
    "sum(rate(req_total[1m])) * 60", "1 + 2 * 3", "time()", "time() - 100",
    # Two series whose labels are the same once rate drops their names: answered step by step.
    'rate({__name__=~"temp|temp_max"}[1m])',
]
# Evaluated step by step (not in the all-steps subset): the answers must still come back whole.
STEP_BY_STEP = [
    "topk(1, temp)", "temp - temp", "temp > 20", "irate(req_total[1m])", "avg_over_time(temp[2m])",
    "req_total / ignoring(code) group_left sum without (code) (req_total)",
]


@pytest.mark.parametrize("expr", ALL_STEPS + STEP_BY_STEP)
async def test_all_steps_at_once_is_step_by_step(expr: str) -> None:
    src = MemorySource(_series())
    ev = Evaluation(expr)
    await ev.load(src, 0, 100_000)
    steps = np.arange(0, 100_000, 10_000, dtype=np.int64)
    if expr in ALL_STEPS:
        evaluate(ev, ev.node, steps)
    else:
        with pytest.raises(_Fallback):
            evaluate(ev, ev.node, steps)
    for start, end, step in ((300_000, 3_400_000, 60_000), (0, 3_500_000, 7_000), (1_100_000, 1_300_000, 10_000)):
        fast = await range_query(expr, start, end, step, src)
        slow = await range_query(expr, start, end, step, src, by_steps=False)
        assert fast.keys() == slow.keys(), expr
        for k, (ts, vs) in slow.items():
            got_ts, got_vs = fast[k]
            assert got_ts.tolist() == ts.tolist(), (expr, k)
            np.testing.assert_allclose(got_vs, vs, rtol=1e-12, equal_nan=True, err_msg=f"{expr} {k}")


async def test_gaps_leave_out_the_steps_without_a_value() -> None:
    got = await range_query('rate(req_total{host="b", code="200"}[1m])', 0, 3_400_000, 60_000,
                            MemorySource(_series()))
    ((ts, _),) = got.values()
    inside = (ts > 1_000_000 + 60_000) & (ts < 1_400_000)
    assert not inside.any()
    assert len(ts) > 40


def test_values_are_written_as_one_at_a_time() -> None:
    from sysmon.gateway.routes.prometheus import fmt, fmt_all

    vs = np.array([0.0, -0.0, 1.0, -3.0, 2.5, 1e15, 1e16, 123456789012345.0, 0.1 + 0.2, math.nan, math.inf,
                   -math.inf, 1e-300, -7.25e20, 5e-324])
    assert fmt_all(vs) == [fmt(float(v)) for v in vs]
    for same_kind in (np.array([1.0, -2.0, 3e14]), np.array([0.5, 1e16, -2.25]), np.array([], dtype=np.float64)):
        assert fmt_all(same_kind) == [fmt(float(v)) for v in same_kind]
