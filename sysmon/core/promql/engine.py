"""A PromQL subset evaluated as Prometheus 2.x evaluates it, over any Source of series and samples.

Parsed by promql-parser (the Rust parser Prometheus-compatible databases use), evaluated here:
selectors with =, !=, =~, !~ and offset; rate, irate, increase, delta, idelta, the *_over_time
family, changes, resets; element-wise math; scalar, vector, time; sum, avg, min, max, count,
group, stddev, stdvar, quantile, topk, bottomk with by/without; arithmetic, comparison (with and
without bool) and and/or/unless between vectors and scalars, with on/ignoring and
group_left/group_right; histogram_quantile over `_bucket` series. Anything else is answered with
PromQLError naming it, in Prometheus's error shape (the gateway's routes).

Semantics follow Prometheus 2.42 (the version the comparison tests run): an instant selector takes
the newest sample at most 5 minutes old; a range [r] at t holds the samples in [t - r, t];
rate/increase/delta extrapolate as extrapolatedRate does; functions drop the metric name, except
last_over_time. Numbers were compared against a real Prometheus on the same samples
(tests/integration/test_prometheus_api.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import promql_parser as pp

LOOKBACK_MS = 5 * 60_000
NAME = "__name__"
Labels = tuple[tuple[str, str], ...]


class PromQLError(Exception):
    """An expression Prometheus would refuse (bad_data) or sysmon cannot evaluate (bad_data too,
    naming what is not supported); `error_type` is Prometheus's errorType."""

    def __init__(self, message: str, error_type: str = "bad_data"):
        super().__init__(message)
        self.message = message
        self.error_type = error_type


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # = != =~ !~
    value: str


@dataclass
class SeriesData:
    labels: Labels
    ts: np.ndarray  # int64 ms, sorted
    vs: np.ndarray  # float64


class Source(Protocol):
    async def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        """The series the matchers select (labels with __name__ and host), with their samples in
        [start_ms, end_ms]."""
        ...


# --- values --------------------------------------------------------------------------------------


@dataclass
class Scalar:
    v: float


@dataclass
class Sample:
    labels: Labels
    v: float


Vector = list[Sample]


@dataclass
class RangeSlice:
    labels: Labels
    ts: np.ndarray
    vs: np.ndarray


Matrix = list[RangeSlice]


@lru_cache(maxsize=100_000)
def drop_name(labels: Labels) -> Labels:
    # Cached: a range query drops the same series' name at every step.
    return tuple(kv for kv in labels if kv[0] != NAME)


def _labels_dict(labels: Labels) -> dict[str, str]:
    return dict(labels)


# --- functions over ranges -----------------------------------------------------------------------


def extrapolated_rate(ts: np.ndarray, vs: np.ndarray, range_start: int, range_end: int, range_s: float,
                      is_counter: bool, is_rate: bool) -> float | None:
    """Prometheus's extrapolatedRate (promql/functions.go, 2.x)."""
    if len(vs) < 2:
        return None
    result = float(vs[-1] - vs[0])
    if is_counter:
        drops = vs[1:] < vs[:-1]
        if drops.any():
            result += float(vs[:-1][drops].sum())
    duration_to_start = (int(ts[0]) - range_start) / 1000
    duration_to_end = (range_end - int(ts[-1])) / 1000
    sampled = (int(ts[-1]) - int(ts[0])) / 1000
    average = sampled / (len(vs) - 1)
    if is_counter and result > 0 and vs[0] >= 0:
        duration_to_zero = sampled * (float(vs[0]) / result)
        duration_to_start = min(duration_to_start, duration_to_zero)
    threshold = average * 1.1
    interval = sampled
    interval += duration_to_start if duration_to_start < threshold else average / 2
    interval += duration_to_end if duration_to_end < threshold else average / 2
    result = result * (interval / sampled)
    return result / range_s if is_rate else result


def rates_over_steps(ts: np.ndarray, vs: np.ndarray, ends: np.ndarray, range_ms: int, is_counter: bool,
                     is_rate: bool) -> np.ndarray:
    """extrapolated_rate at every end time at once (NaN where a window holds fewer than 2 samples):
    a range query evaluates the same range function at each step, and one series' steps are
    computed together."""
    out = np.full(len(ends), np.nan)
    a = np.searchsorted(ts, ends - range_ms, side="left")
    b = np.searchsorted(ts, ends, side="right") - 1
    ok = b - a >= 1
    if not ok.any():
        return out
    a, b, e = a[ok], b[ok], ends[ok]
    first, last = vs[a], vs[b]
    result = last - first
    if is_counter:
        drops = np.zeros(len(vs))
        fell = vs[1:] < vs[:-1]
        drops[1:][fell] = vs[:-1][fell]
        c = np.cumsum(drops)
        result = result + (c[b] - c[a])
    t0, t1 = ts[a].astype(np.float64), ts[b].astype(np.float64)
    to_start = (t0 - (e - range_ms)) / 1000
    to_end = (e - t1) / 1000
    sampled = (t1 - t0) / 1000
    average = sampled / (b - a)
    if is_counter:
        zero_ok = (result > 0) & (first >= 0)
        to_zero = np.where(zero_ok, sampled * (first / np.where(result == 0, 1.0, result)), np.inf)
        to_start = np.minimum(to_start, to_zero)
    threshold = average * 1.1
    interval = sampled + np.where(to_start < threshold, to_start, average / 2) \
        + np.where(to_end < threshold, to_end, average / 2)
    result = result * (interval / sampled)
    out[ok] = result / (range_ms / 1000) if is_rate else result
    return out


def _instant_delta(ts: np.ndarray, vs: np.ndarray, is_rate: bool) -> float | None:
    if len(vs) < 2:
        return None
    last, prev = float(vs[-1]), float(vs[-2])
    result = last if is_rate and last < prev else last - prev
    if is_rate:
        interval = (int(ts[-1]) - int(ts[-2])) / 1000
        if interval == 0:
            return None
        result /= interval
    return result


def _stdvar(vs: np.ndarray) -> float:
    return float(np.var(vs)) if len(vs) else math.nan


def quantile(q: float, values: Sequence[float]) -> float:
    """Prometheus's quantile: linear interpolation between the closest ranks."""
    if not values:
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    s = sorted(values)
    rank = q * (len(s) - 1)
    lo = max(0, math.floor(rank))
    hi = min(len(s) - 1, lo + 1)
    weight = rank - math.floor(rank)
    return s[lo] * (1 - weight) + s[hi] * weight


OVER_TIME: dict[str, Callable[[np.ndarray], float]] = {
    "avg_over_time": lambda v: float(np.mean(v)),
    "min_over_time": lambda v: float(np.min(v)),
    "max_over_time": lambda v: float(np.max(v)),
    "sum_over_time": lambda v: float(np.sum(v)),
    "count_over_time": lambda v: float(len(v)),
    "last_over_time": lambda v: float(v[-1]),
    "present_over_time": lambda v: 1.0,
    "stddev_over_time": lambda v: math.sqrt(_stdvar(v)),
    "stdvar_over_time": _stdvar,
    "changes": lambda v: float(np.count_nonzero(v[1:] != v[:-1])),
    "resets": lambda v: float(np.count_nonzero(v[1:] < v[:-1])),
}
RATES = {"rate": (True, True), "increase": (True, False), "delta": (False, False)}
INSTANT_RATES = {"irate": True, "idelta": False}


def _round(v: float, to: float = 1.0) -> float:
    return math.floor(v / to + 0.5) * to


ELEMENTWISE: dict[str, Callable[[float], float]] = {
    "abs": abs, "ceil": lambda v: float(math.ceil(v)) if math.isfinite(v) else v,
    "floor": lambda v: float(math.floor(v)) if math.isfinite(v) else v,
    "exp": lambda v: math.exp(v) if v < 709 else math.inf,
    "sqrt": lambda v: math.sqrt(v) if v >= 0 else math.nan,
    "ln": lambda v: math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan),
    "log2": lambda v: math.log2(v) if v > 0 else (-math.inf if v == 0 else math.nan),
    "log10": lambda v: math.log10(v) if v > 0 else (-math.inf if v == 0 else math.nan),
    "sgn": lambda v: float(np.sign(v)),
}
SUPPORTED_FUNCTIONS = frozenset([*OVER_TIME, "quantile_over_time", *RATES, *INSTANT_RATES, *ELEMENTWISE, "round",
                                 "clamp", "clamp_min", "clamp_max", "scalar", "vector", "time", "timestamp",
                                 "histogram_quantile"])
AGGREGATIONS = frozenset(["sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "quantile", "topk",
                          "bottomk"])


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's bucketQuantile (promql/quantile.go, 2.x) over (upper bound, cumulative count)."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets)
    if not buckets or not math.isinf(buckets[-1][0]):
        return math.nan
    merged: list[list[float]] = []
    for ub, c in buckets:  # coalesceBuckets
        if merged and merged[-1][0] == ub:
            merged[-1][1] += c
        else:
            merged.append([ub, c])
    for i in range(1, len(merged)):  # ensureMonotonic
        merged[i][1] = max(merged[i][1], merged[i - 1][1])
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(merged) - 1) if merged[i][1] >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * (rank / count)


# --- the evaluator -------------------------------------------------------------------------------


def parse(expr: str) -> Any:
    try:
        return pp.parse(expr)
    except ValueError as e:
        raise PromQLError(f"parse error: {e}") from e


def _op(node: Any) -> str:
    return str(node.op)


def check_supported(node: Any) -> None:
    """Raise PromQLError naming the first function, aggregation or construct not evaluated here."""
    if isinstance(node, pp.Call):
        if node.func.name not in SUPPORTED_FUNCTIONS:
            raise PromQLError(f"function {node.func.name!r} is not supported by sysmon's PromQL")
        for a in node.args:
            check_supported(a)
    elif isinstance(node, pp.AggregateExpr):
        if _op(node) not in AGGREGATIONS:
            raise PromQLError(f"aggregation {_op(node)!r} is not supported by sysmon's PromQL")
        check_supported(node.expr)
        if node.param is not None:
            check_supported(node.param)
    elif isinstance(node, pp.BinaryExpr):
        check_supported(node.lhs)
        check_supported(node.rhs)
    elif isinstance(node, pp.ParenExpr | pp.UnaryExpr):
        check_supported(node.expr)
    elif isinstance(node, pp.MatrixSelector):
        check_supported(node.vector_selector)
    elif isinstance(node, pp.VectorSelector):
        if node.at is not None:
            raise PromQLError("the @ modifier is not supported by sysmon's PromQL")
        if node.matchers.or_matchers:
            raise PromQLError("'or' inside a selector's braces is not supported by sysmon's PromQL")
    elif isinstance(node, pp.SubqueryExpr):
        raise PromQLError("subqueries are not supported by sysmon's PromQL")
    elif not isinstance(node, pp.NumberLiteral | pp.StringLiteral):
        raise PromQLError(f"{type(node).__name__} is not supported by sysmon's PromQL")


def _ms(td: Any) -> int:
    return 0 if td is None else int(td.total_seconds() * 1000)


MATCH_OPS = {int(pp.MatchOp.Equal): "=", int(pp.MatchOp.NotEqual): "!=", int(pp.MatchOp.Re): "=~",
             int(pp.MatchOp.NotRe): "!~"}


def selector_matchers(vs: Any) -> list[Matcher]:
    out = [Matcher(m.name, MATCH_OPS[int(m.op)], m.value) for m in vs.matchers.matchers]
    if vs.name:
        out.append(Matcher(NAME, "=", vs.name))
    return out


def _selectors(node: Any, out: list[tuple[Any, int]]) -> None:
    """Every vector selector with how far back before an evaluation time it reads."""
    if isinstance(node, pp.MatrixSelector):
        vs = node.vector_selector
        out.append((vs, _ms(node.range) + _ms(vs.offset)))
    elif isinstance(node, pp.VectorSelector):
        out.append((node, LOOKBACK_MS + _ms(node.offset)))
    elif isinstance(node, pp.Call):
        for a in node.args:
            _selectors(a, out)
    elif isinstance(node, pp.AggregateExpr):
        _selectors(node.expr, out)
        if node.param is not None:
            _selectors(node.param, out)
    elif isinstance(node, pp.BinaryExpr):
        _selectors(node.lhs, out)
        _selectors(node.rhs, out)
    elif isinstance(node, pp.ParenExpr | pp.UnaryExpr):
        _selectors(node.expr, out)


class Evaluation:
    """One query: the samples its selectors need, fetched once, then evaluated at each time."""

    def __init__(self, expr: str, *, max_series: int = 10_000):
        self.node = parse(expr)
        check_supported(self.node)
        self.max_series = max_series
        self._data: dict[int, list[SeriesData]] = {}
        # A range query's evaluation times; functions over ranges then compute all steps per series at once.
        self._steps: np.ndarray | None = None
        self._step_index: dict[int, int] = {}
        self._over_steps: dict[tuple[int, int], np.ndarray] = {}
        self._selected_steps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def set_steps(self, times: Sequence[int]) -> None:
        self._steps = np.asarray(times, dtype=np.int64)
        self._step_index = {int(t): i for i, t in enumerate(times)}

    async def load(self, source: Source, start_ms: int, end_ms: int) -> None:
        selectors: list[tuple[Any, int]] = []
        _selectors(self.node, selectors)
        total = 0
        for vs, back in selectors:
            offset = _ms(vs.offset)
            data = await source.select(selector_matchers(vs), start_ms - back, end_ms - offset)
            total += len(data)
            if total > self.max_series:
                raise PromQLError(f"the query selects more than {self.max_series} series; narrow its selectors",
                                  "execution")
            self._data[id(vs)] = data

    def instant(self, t: int) -> Scalar | Vector | str:
        v = self._eval(self.node, t)
        if isinstance(v, list) and v and isinstance(v[0], RangeSlice):
            raise PromQLError("a range vector cannot be the result of a query_range or a Grafana panel here; "
                              "wrap it in a function such as rate()")
        return v  # type: ignore[return-value]

    def range_result(self, t: int) -> Matrix:
        v = self._eval(self.node, t)
        if not (isinstance(v, list) and (not v or isinstance(v[0], RangeSlice))):
            raise PromQLError("expression is not a range vector")
        return v  # type: ignore[return-value]

    # evaluation of one node at time t
    def _eval(self, node: Any, t: int) -> Any:
        if isinstance(node, pp.NumberLiteral):
            return Scalar(float(node.val))
        if isinstance(node, pp.StringLiteral):
            return node.val
        if isinstance(node, pp.ParenExpr):
            return self._eval(node.expr, t)
        if isinstance(node, pp.UnaryExpr):
            v = self._eval(node.expr, t)
            if isinstance(v, Scalar):
                return Scalar(-v.v)
            return [Sample(drop_name(s.labels), -s.v) for s in v]
        if isinstance(node, pp.VectorSelector):
            return self._instant_selector(node, t)
        if isinstance(node, pp.MatrixSelector):
            return self._range_selector(node, t)
        if isinstance(node, pp.Call):
            return self._call(node, t)
        if isinstance(node, pp.AggregateExpr):
            return self._aggregate(node, t)
        if isinstance(node, pp.BinaryExpr):
            return self._binary(node, t)
        raise PromQLError(f"{type(node).__name__} is not supported by sysmon's PromQL")

    def _instant_selector(self, vs: Any, t: int) -> Vector:
        ref = t - _ms(vs.offset)
        i = self._step_index.get(t) if self._steps is not None else None
        if i is not None:
            out = []
            for k, s in enumerate(self._data[id(vs)]):
                got = self._selected_steps.get((id(vs), k))
                if got is None:
                    assert self._steps is not None
                    refs = self._steps - _ms(vs.offset)
                    idx = np.searchsorted(s.ts, refs, side="right") - 1
                    safe = np.maximum(idx, 0)
                    valid = (idx >= 0) & (s.ts[safe] >= refs - LOOKBACK_MS) if len(s.ts) else idx >= 0
                    got = self._selected_steps[(id(vs), k)] = (valid, s.vs[safe] if len(s.vs) else s.vs)
                if got[0][i]:
                    out.append(Sample(s.labels, float(got[1][i])))
            return out
        out = []
        for s in self._data[id(vs)]:
            i = int(np.searchsorted(s.ts, ref, side="right")) - 1
            if i >= 0 and s.ts[i] >= ref - LOOKBACK_MS:
                out.append(Sample(s.labels, float(s.vs[i])))
        return out

    def _range_selector(self, ms: Any, t: int) -> Matrix:
        vs = ms.vector_selector
        hi = t - _ms(vs.offset)
        lo = hi - _ms(ms.range)
        out = []
        for s in self._data[id(vs)]:
            a = int(np.searchsorted(s.ts, lo, side="left"))
            b = int(np.searchsorted(s.ts, hi, side="right"))
            if b > a:
                out.append(RangeSlice(s.labels, s.ts[a:b], s.vs[a:b]))
        return out

    def _scalar_arg(self, node: Any, t: int, fn: str) -> float:
        v = self._eval(node, t)
        if not isinstance(v, Scalar):
            raise PromQLError(f"expected a scalar as the parameter of {fn}")
        return v.v

    def _call(self, node: Any, t: int) -> Any:
        name = node.func.name
        args = node.args
        if name == "time":
            return Scalar(t / 1000)
        if name == "vector":
            return [Sample((), self._scalar_arg(args[0], t, name))]
        if name == "scalar":
            v = self._eval(args[0], t)
            return Scalar(v[0].v if len(v) == 1 else math.nan)
        if name in RATES or name in INSTANT_RATES or name in OVER_TIME or name == "quantile_over_time":
            return self._range_function(name, node, t)
        if name == "histogram_quantile":
            return self._histogram_quantile(self._scalar_arg(args[0], t, name), self._eval(args[1], t))
        v = self._eval(args[0], t)
        if name == "timestamp":
            return [Sample(drop_name(s.labels), self._timestamp(args[0], s, t)) for s in v]
        if name in ELEMENTWISE:
            f = ELEMENTWISE[name]
            return [Sample(drop_name(s.labels), f(s.v)) for s in v]
        if name == "round":
            to = self._scalar_arg(args[1], t, name) if len(args) > 1 else 1.0
            return [Sample(drop_name(s.labels), _round(s.v, to)) for s in v]
        lo, hi = -math.inf, math.inf
        if name == "clamp":
            lo, hi = self._scalar_arg(args[1], t, name), self._scalar_arg(args[2], t, name)
            if lo > hi:
                return []
        elif name == "clamp_min":
            lo = self._scalar_arg(args[1], t, name)
        elif name == "clamp_max":
            hi = self._scalar_arg(args[1], t, name)
        return [Sample(drop_name(s.labels), max(lo, min(hi, s.v))) for s in v]

    def _timestamp(self, arg: Any, s: Sample, t: int) -> float:
        # timestamp(v): the time of the sample the selector picked; of a computed value, now.
        if isinstance(arg, pp.VectorSelector):
            for d in self._data[id(arg)]:
                if d.labels == s.labels:
                    ref = t - _ms(arg.offset)
                    i = int(np.searchsorted(d.ts, ref, side="right")) - 1
                    return float(d.ts[i]) / 1000
        return t / 1000

    def _range_function(self, name: str, node: Any, t: int) -> Vector:
        arg = node.args[-1]
        if not isinstance(arg, pp.MatrixSelector):
            raise PromQLError(f"{name} needs a range vector selector such as x[5m]")
        q = self._scalar_arg(node.args[0], t, name) if name == "quantile_over_time" else 0.0
        rng = _ms(arg.range)
        offset = _ms(arg.vector_selector.offset)
        end = t - offset
        i = self._step_index.get(t) if self._steps is not None else None
        if name in RATES and i is not None:
            is_counter, is_rate = RATES[name]
            out = []
            for k, d in enumerate(self._data[id(arg.vector_selector)]):
                key = (id(arg), k)
                values = self._over_steps.get(key)
                if values is None:
                    assert self._steps is not None
                    values = self._over_steps[key] = rates_over_steps(d.ts, d.vs, self._steps - offset, rng,
                                                                      is_counter, is_rate)
                v = values[i]
                if not math.isnan(v):
                    out.append(Sample(drop_name(d.labels), float(v)))
            return out
        out = []
        for r in self._range_selector(arg, t):
            labels = r.labels if name == "last_over_time" else drop_name(r.labels)
            if name in RATES:
                is_counter, is_rate = RATES[name]
                v = extrapolated_rate(r.ts, r.vs, end - rng, end, rng / 1000, is_counter, is_rate)
            elif name in INSTANT_RATES:
                v = _instant_delta(r.ts, r.vs, INSTANT_RATES[name])
            elif name == "quantile_over_time":
                v = quantile(q, [float(x) for x in r.vs])
            else:
                v = OVER_TIME[name](r.vs)
            if v is not None:
                out.append(Sample(labels, v))
        return out

    def _histogram_quantile(self, q: float, v: Vector) -> Vector:
        groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
        for s in v:
            d = _labels_dict(s.labels)
            le = d.pop("le", None)
            if le is None:
                continue
            try:
                ub = float(le.replace("+Inf", "inf"))
            except ValueError:
                continue
            d.pop(NAME, None)
            groups[tuple(sorted(d.items()))].append((ub, s.v))
        return [Sample(k, bucket_quantile(q, b)) for k, b in groups.items()]

    def _aggregate(self, node: Any, t: int) -> Vector:
        op = _op(node)
        v = self._eval(node.expr, t)
        if not isinstance(v, list):
            raise PromQLError(f"expected an instant vector in aggregation {op}")
        param = self._scalar_arg(node.param, t, op) if node.param is not None else None
        mod = node.modifier
        without = mod is not None and mod.type == pp.AggModifierType.Without
        keys = set(mod.labels) if mod is not None else set()

        def group_of(labels: Labels) -> Labels:
            if without:
                return tuple(kv for kv in labels if kv[0] not in keys and kv[0] != NAME)
            return tuple(kv for kv in labels if kv[0] in keys)

        groups: dict[Labels, list[Sample]] = defaultdict(list)
        for s in v:
            groups[group_of(s.labels)].append(s)
        if op in ("topk", "bottomk"):
            k = int(param or 0)
            out: Vector = []
            for members in groups.values():
                if k < 1:
                    continue
                # NaN sorts last for both, as in Prometheus.
                def key(s: Sample, top: bool = op == "topk") -> tuple[bool, float]:
                    return (math.isnan(s.v), -s.v if top else s.v)
                out += sorted(members, key=key)[:k]
            return out
        result = []
        for g, members in groups.items():
            vals = [s.v for s in members]
            if op == "sum":
                x = math.fsum(vals) if all(math.isfinite(y) for y in vals) else sum(vals)
            elif op == "avg":
                x = sum(vals) / len(vals)
            elif op == "min":
                x = min((y for y in vals if not math.isnan(y)), default=math.nan)
            elif op == "max":
                x = max((y for y in vals if not math.isnan(y)), default=math.nan)
            elif op == "count":
                x = float(len(vals))
            elif op == "group":
                x = 1.0
            elif op == "quantile":
                x = quantile(param if param is not None else math.nan, vals)
            else:  # stddev, stdvar
                var = float(np.var(np.array(vals)))
                x = math.sqrt(var) if op == "stddev" else var
            result.append(Sample(g, x))
        return result

    def _binary(self, node: Any, t: int) -> Any:
        op = _op(node)
        mod = node.modifier
        return_bool = bool(mod is not None and mod.return_bool)
        lhs, rhs = self._eval(node.lhs, t), self._eval(node.rhs, t)
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            v = _arith(op, lhs.v, rhs.v)
            return Scalar(float(v) if v is not None else 0.0) if op in COMPARISONS else Scalar(v)  # type: ignore[arg-type]
        if op in ("and", "or", "unless"):
            return self._set_op(op, lhs, rhs, mod)
        if isinstance(lhs, Scalar) or isinstance(rhs, Scalar):
            return _vector_scalar(op, lhs, rhs, return_bool)
        return self._vector_vector(op, lhs, rhs, mod, return_bool)

    @staticmethod
    def _signature(mod: Any) -> Callable[[Labels], Labels]:
        matching = mod.matching if mod is not None else None
        if matching is None:
            return drop_name
        names = set(matching.labels)
        if matching.type == pp.LabelModifierType.Include:
            return lambda labels: tuple(kv for kv in labels if kv[0] in names)
        return lambda labels: tuple(kv for kv in labels if kv[0] not in names and kv[0] != NAME)

    def _set_op(self, op: str, lhs: Vector, rhs: Vector, mod: Any) -> Vector:
        sig = self._signature(mod)
        right = {sig(s.labels) for s in rhs}
        if op == "and":
            return [s for s in lhs if sig(s.labels) in right]
        if op == "unless":
            return [s for s in lhs if sig(s.labels) not in right]
        left = {sig(s.labels) for s in lhs}
        return lhs + [s for s in rhs if sig(s.labels) not in left]

    def _vector_vector(self, op: str, lhs: Vector, rhs: Vector, mod: Any, return_bool: bool) -> Vector:
        sig = self._signature(mod)
        card = mod.card if mod is not None else pp.VectorMatchCardinality.OneToOne
        swap = card == pp.VectorMatchCardinality.OneToMany
        many, one = (rhs, lhs) if swap else (lhs, rhs)
        ones: dict[Labels, Sample] = {}
        for s in one:
            k = sig(s.labels)
            if k in ones:
                side = "left" if swap else "right"
                raise PromQLError(f"found duplicate series for the match group {dict(k)} on the {side} hand-side "
                                  "of the operation: many-to-many matching not allowed: matching labels must be "
                                  "unique on one side", "execution")
            ones[k] = s
        include = list(mod.group_labels or []) if mod is not None else []
        one_to_one = card == pp.VectorMatchCardinality.OneToOne
        seen: set[Labels] = set()
        out = []
        for s in many:
            k = sig(s.labels)
            other = ones.get(k)
            if other is None:
                continue
            a, b = (other.v, s.v) if swap else (s.v, other.v)
            v = _arith(op, a, b)
            if op in COMPARISONS and not return_bool:
                if not v:
                    continue
                v = a  # a comparison keeps the left-hand value (and labels)
            elif op in COMPARISONS:
                v = float(v)
            labels = s.labels
            if one_to_one:
                labels = k if mod is not None and mod.matching is not None and \
                    mod.matching.type == pp.LabelModifierType.Include else sig(labels)
                if op in COMPARISONS and not return_bool:
                    labels = s.labels
            else:
                d = dict(labels)
                if op not in COMPARISONS or return_bool:
                    d.pop(NAME, None)
                for name in include:
                    value = dict(other.labels).get(name)
                    if value:
                        d[name] = value
                    else:
                        d.pop(name, None)
                labels = tuple(sorted(d.items()))
            if op not in COMPARISONS or return_bool:
                labels = drop_name(labels)
            if one_to_one:
                if labels in seen:
                    raise PromQLError("multiple matches for labels: many-to-one matching must be explicit "
                                      "(group_left/group_right)", "execution")
                seen.add(labels)
            out.append(Sample(labels, float(v)))
        return out


COMPARISONS = frozenset(["==", "!=", ">", "<", ">=", "<="])


def _arith(op: str, a: float, b: float) -> float | bool:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            # Go's float division, which Prometheus does: x/0 is an infinity signed by both, 0/0 NaN.
            return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)
        return a / b
    if op == "%":
        return math.fmod(a, b) if b != 0 else math.nan
    if op == "^":
        try:
            return math.pow(a, b)
        except (OverflowError, ValueError):
            return math.inf if a > 0 else math.nan
    if op == "atan2":
        return math.atan2(a, b)
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == ">":
        return a > b
    if op == "<":
        return a < b
    if op == ">=":
        return a >= b
    if op == "<=":
        return a <= b
    raise PromQLError(f"operator {op!r} is not supported by sysmon's PromQL")


def _vector_scalar(op: str, lhs: Any, rhs: Any, return_bool: bool) -> Vector:
    scalar_left = isinstance(lhs, Scalar)
    vec, x = (rhs, lhs.v) if scalar_left else (lhs, rhs.v)
    out = []
    for s in vec:
        a, b = (x, s.v) if scalar_left else (s.v, x)
        v = _arith(op, a, b)
        if op in COMPARISONS:
            if return_bool:
                out.append(Sample(drop_name(s.labels), float(v)))
            elif v:
                out.append(Sample(s.labels, s.v))
        else:
            out.append(Sample(drop_name(s.labels), float(v)))
    return out


# --- whole queries -------------------------------------------------------------------------------


async def instant_query(expr: str, t: int, source: Source, *, max_series: int = 10_000) -> Scalar | Vector | Matrix:
    ev = Evaluation(expr, max_series=max_series)
    await ev.load(source, t, t)
    v = ev._eval(ev.node, t)
    if isinstance(v, str):
        raise PromQLError("a string is not a query result sysmon answers")
    return v
