"""Range queries: every step of an expression at once where the expression allows it.

A range query evaluated step by step builds a Vector of Samples per step and node, which for a
day at a minute's step over a hundred series is most of its time (bench/promql.py). The
expressions Grafana's panels are made of (selectors, rate/increase/delta, sum/avg/min/max/count/
group by|without, arithmetic with scalars) are evaluated here for all steps together, as
Prometheus's engine does (rangeEval): a node's value is a matrix of series x steps with a mask of
the steps where a series has a value. Any other node is evaluated step by step
(Evaluation.instant), and the answer is the same either way (tests/unit/test_promql_ranges.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import promql_parser as pp

from sysmon.core.promql.engine import (
    LOOKBACK_MS,
    NAME,
    RATES,
    Evaluation,
    Labels,
    PromQLError,
    Scalar,
    Source,
    _ms,
    _op,
    drop_name,
    rates_over_steps,
)

Series = tuple[np.ndarray, np.ndarray]  # times (Unix ms, int64) and values (float64)
STEP_AGGREGATIONS = frozenset(["sum", "avg", "min", "max", "count", "group"])
STEP_ARITHMETIC = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}


@dataclass
class Steps:
    """An instant vector at every step: one row per series, `ok` where the series has a value."""

    labels: list[Labels]
    vs: np.ndarray  # float64, series x steps
    ok: np.ndarray  # bool, series x steps


class _Fallback(Exception):
    """The node is not evaluated for all steps at once here."""


def _selector(ev: Evaluation, vs: object, steps: np.ndarray) -> Steps:
    data = ev._data[id(vs)]
    refs = steps - _ms(vs.offset)  # type: ignore[attr-defined]
    values = np.zeros((len(data), len(steps)))
    ok = np.zeros((len(data), len(steps)), dtype=bool)
    for k, s in enumerate(data):
        if not len(s.ts):
            continue
        idx = np.searchsorted(s.ts, refs, side="right") - 1
        safe = np.maximum(idx, 0)
        ok[k] = (idx >= 0) & (s.ts[safe] >= refs - LOOKBACK_MS)
        values[k] = s.vs[safe]
    return Steps([s.labels for s in data], values, ok)


def _rate(ev: Evaluation, name: str, ms: object, steps: np.ndarray) -> Steps:
    vs = ms.vector_selector  # type: ignore[attr-defined]
    is_counter, is_rate = RATES[name]
    data = ev._data[id(vs)]
    values = np.empty((len(data), len(steps)))
    for k, d in enumerate(data):
        values[k] = rates_over_steps(d.ts, d.vs, steps - _ms(vs.offset), _ms(ms.range),  # type: ignore[attr-defined]
                                     is_counter, is_rate)
    # As step by step: a NaN rate (fewer than two samples, or NaN samples) is no value.
    return Steps([drop_name(d.labels) for d in data], values, ~np.isnan(values))


def _aggregate(op: str, node: object, arg: Steps) -> Steps:
    mod = node.modifier  # type: ignore[attr-defined]
    without = mod is not None and mod.type == pp.AggModifierType.Without
    keys = set(mod.labels) if mod is not None else set()
    groups: dict[Labels, list[int]] = defaultdict(list)
    for k, labels in enumerate(arg.labels):
        g = tuple(kv for kv in labels if kv[0] not in keys and kv[0] != NAME) if without else \
            tuple(kv for kv in labels if kv[0] in keys)
        groups[g].append(k)
    out_labels, out_vs, out_ok = [], [], []
    with np.errstate(invalid="ignore", divide="ignore"):
        for g, rows in groups.items():
            vs, ok = arg.vs[rows], arg.ok[rows]
            n = ok.sum(axis=0)
            if op == "sum":
                v = np.where(ok, vs, 0.0).sum(axis=0)
            elif op == "avg":
                v = np.where(ok, vs, 0.0).sum(axis=0) / np.maximum(n, 1)
            elif op in ("min", "max"):
                real = ok & ~np.isnan(vs)
                fill = np.inf if op == "min" else -np.inf
                picked = np.where(real, vs, fill)
                v = picked.min(axis=0) if op == "min" else picked.max(axis=0)
                v = np.where(real.any(axis=0), v, np.nan)
            elif op == "count":
                v = n.astype(np.float64)
            else:  # group
                v = np.ones(len(n))
            out_labels.append(g)
            out_vs.append(v)
            out_ok.append(n > 0)
    steps = arg.vs.shape[1]
    return Steps(out_labels, np.array(out_vs).reshape(-1, steps), np.array(out_ok, dtype=bool).reshape(-1, steps))


def _arith(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # IEEE float arithmetic, as Go's and so Prometheus's: x/0 is a signed infinity, 0/0 NaN.
    with np.errstate(all="ignore"):
        return STEP_ARITHMETIC[op](a, b)


def evaluate(ev: Evaluation, node: object, steps: np.ndarray) -> Steps | np.ndarray:
    """The node at every step: Steps for an instant vector, an array for a scalar; _Fallback when
    the node (or one below it) is not one evaluated here."""
    if isinstance(node, pp.NumberLiteral):
        return np.full(len(steps), float(node.val))
    if isinstance(node, pp.ParenExpr):
        return evaluate(ev, node.expr, steps)
    if isinstance(node, pp.UnaryExpr):
        v = evaluate(ev, node.expr, steps)
        if isinstance(v, np.ndarray):
            return -v
        return Steps([drop_name(labels) for labels in v.labels], -v.vs, v.ok)
    if isinstance(node, pp.VectorSelector):
        return _selector(ev, node, steps)
    if isinstance(node, pp.Call):
        name = node.func.name
        if name == "time":
            return steps / 1000
        if name in RATES and isinstance(node.args[-1], pp.MatrixSelector):
            return _rate(ev, name, node.args[-1], steps)
    if isinstance(node, pp.AggregateExpr) and _op(node) in STEP_AGGREGATIONS and node.param is None:
        arg = evaluate(ev, node.expr, steps)
        if isinstance(arg, Steps):
            return _aggregate(_op(node), node, arg)
    if isinstance(node, pp.BinaryExpr) and _op(node) in STEP_ARITHMETIC:
        lhs, rhs = evaluate(ev, node.lhs, steps), evaluate(ev, node.rhs, steps)
        op = _op(node)
        if isinstance(lhs, np.ndarray) and isinstance(rhs, np.ndarray):
            return _arith(op, lhs, rhs)
        if isinstance(lhs, Steps) and isinstance(rhs, np.ndarray):
            return Steps([drop_name(labels) for labels in lhs.labels], _arith(op, lhs.vs, rhs[None, :]), lhs.ok)
        if isinstance(lhs, np.ndarray) and isinstance(rhs, Steps):
            return Steps([drop_name(labels) for labels in rhs.labels], _arith(op, lhs[None, :], rhs.vs), rhs.ok)
    raise _Fallback


def _step_by_step(ev: Evaluation, times: range) -> dict[Labels, Series]:
    out: dict[Labels, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for t in times:
        v = ev.instant(t)
        if isinstance(v, Scalar):
            got = out[()]
            got[0].append(t)
            got[1].append(v.v)
        elif isinstance(v, list):
            for s in v:
                got = out[s.labels]
                got[0].append(t)
                got[1].append(s.v)
    return {k: (np.asarray(ts, dtype=np.int64), np.asarray(vs, dtype=np.float64)) for k, (ts, vs) in out.items()}


def _series(steps: np.ndarray, v: Steps) -> dict[Labels, Series]:
    out: dict[Labels, Series] = {}
    for labels, vs, ok in zip(v.labels, v.vs, v.ok, strict=True):
        if ok.any():
            out[labels] = (steps[ok], vs[ok])
    return out


async def range_query(expr: str, start: int, end: int, step: int, source: Source, *, max_series: int = 10_000,
                      max_points: int = 11_000, by_steps: bool = True) -> dict[Labels, Series]:
    """Each result series' times and values; `by_steps=False` evaluates every node step by step
    (the reference the tests hold the faster path to)."""
    if step <= 0:
        raise PromQLError("zero or negative query resolution step widths are not accepted. Try a positive integer")
    if (end - start) // step + 1 > max_points:
        raise PromQLError(f"exceeded maximum resolution of {max_points} points per timeseries. Try decreasing the "
                          "query resolution (?step=XX)")
    ev = Evaluation(expr, max_series=max_series)
    await ev.load(source, start, end)
    times = range(start, end + 1, step)
    steps = np.arange(start, end + 1, step, dtype=np.int64)
    if by_steps:
        try:
            v = evaluate(ev, ev.node, steps)
        except _Fallback:
            pass
        else:
            if isinstance(v, np.ndarray):
                return {(): (steps, v)}
            # Rows with the same labels (series that differ only in the name a function dropped)
            # are left to the step-by-step path, which answers them as it always has.
            if len(set(v.labels)) == len(v.labels):
                return _series(steps, v)
    ev.set_steps(times)
    return _step_by_step(ev, times)
