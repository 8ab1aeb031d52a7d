"""sysmon.core.promql: the name mapping table and Prometheus's numeric algorithms, pure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sysmon.core.metrics import COUNTER, GAUGE, RATE
from sysmon.core.promql.engine import PromQLError, bucket_quantile, check_supported, extrapolated_rate, parse
from sysmon.core.promql.names import prom_label, prom_name


@pytest.mark.parametrize(("name", "unit", "kind", "prom"), [
    ("system.cpu.utilization", "1", GAUGE, "system_cpu_utilization_ratio"),
    ("system.memory.usage", "By", GAUGE, "system_memory_usage_bytes"),
    ("system.network.io", "By/s", RATE, "system_network_io_bytes_per_second"),
    ("system.cpu.load_average.1m", "{thread}", GAUGE, "system_cpu_load_average_1m"),
    ("app.requests", "{request}", COUNTER, "app_requests_total"),
    ("app.latency_bucket", "s", COUNTER, "app_latency_seconds_bucket"),
    ("app.latency_count", "s", COUNTER, "app_latency_seconds_count"),
    ("node_cpu_seconds_total", "", COUNTER, "node_cpu_seconds_total"),
    ("http_request_duration_seconds_bucket", "", COUNTER, "http_request_duration_seconds_bucket"),
    ("process.runtime.memory", "By", COUNTER, "process_runtime_memory_bytes_total"),
    ("disk.time_seconds", "s", GAUGE, "disk_time_seconds"),
])
def test_names(name: str, unit: str, kind: int, prom: str) -> None:
    assert prom_name(name, unit, kind) == prom


def test_labels() -> None:
    assert prom_label("service.name") == "service_name"
    assert prom_label("k8s.pod.name") == "k8s_pod_name"
    assert prom_label("9lives") == "_9lives"


def test_rate_extrapolates_as_prometheus() -> None:
    # Samples every 10 s from 5 s into a 60 s window, a counter growing 1/s: rate is 1.
    ts = np.arange(5_000, 60_000, 10_000, dtype=np.int64)
    vs = (ts / 1000).astype(float) + 100
    assert extrapolated_rate(ts, vs, 0, 60_000, 60.0, True, True) == pytest.approx(1.0)
    # A reset adds the value before it.
    vs2 = np.array([10.0, 20.0, 5.0, 15.0])
    ts2 = np.array([0, 10_000, 20_000, 30_000], dtype=np.int64)
    assert extrapolated_rate(ts2, vs2, 0, 30_000, 30.0, True, False) == pytest.approx(25.0)
    assert extrapolated_rate(ts2[:1], vs2[:1], 0, 30_000, 30.0, True, True) is None


def test_bucket_quantile() -> None:
    buckets = [(0.1, 1.0), (1.0, 3.0), (10.0, 4.0), (math.inf, 5.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.775)
    assert bucket_quantile(0.99, buckets) == 10.0  # in +Inf: the highest finite bound
    assert math.isnan(bucket_quantile(0.5, [(0.1, 1.0)]))


@pytest.mark.parametrize(("expr", "named"), [
    ('label_replace(up, "a", "b", "c", "d")', "label_replace"),
    ("count_values(\"v\", up)", "count_values"),
    ("rate(up[5m:1m])", "subqueries"),
    ("up @ 100", "@ modifier"),
])
def test_unsupported_is_named(expr: str, named: str) -> None:
    with pytest.raises(PromQLError, match=named):
        check_supported(parse(expr))


def test_rates_over_steps_are_the_rates_of_each_step() -> None:
    from sysmon.core.promql.engine import rates_over_steps

    rng = np.random.default_rng(7)
    ts = np.cumsum(rng.integers(4_000, 6_000, 400)).astype(np.int64)
    vs = np.cumsum(rng.random(400) * 10)
    vs[150:] -= vs[150] - 3.0  # a counter reset
    ends = np.arange(int(ts[0]), int(ts[-1]) + 30_000, 7_000, dtype=np.int64)
    for is_counter, is_rate in ((True, True), (True, False), (False, False)):
        got = rates_over_steps(ts, vs, ends, 60_000, is_counter, is_rate)
        for e, g in zip(ends, got, strict=True):
            a, b = np.searchsorted(ts, e - 60_000, "left"), np.searchsorted(ts, e, "right")
            want = extrapolated_rate(ts[a:b], vs[a:b], int(e) - 60_000, int(e), 60.0, is_counter, is_rate)
            assert (math.isnan(g) and want is None) or g == pytest.approx(want, rel=1e-12)
