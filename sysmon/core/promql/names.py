"""sysmon series <-> Prometheus names and labels, by OpenTelemetry's Prometheus compatibility rules.

| sysmon (OpenTelemetry) | Prometheus |
|---|---|
| name `system.cpu.utilization`, unit `1`, gauge | `system_cpu_utilization_ratio` |
| name `system.memory.usage`, unit `By` | `system_memory_usage_bytes` |
| name `system.network.io`, unit `By/s` (a rate the collector computed) | `system_network_io_bytes_per_second` |
| name `app.requests`, unit `{request}`, counter | `app_requests_total` (`{...}` units add nothing) |
| `app.latency_bucket` / `_count` / `_sum`, unit `s` (OTLP histogram) | `app_latency_seconds_bucket` / ... |
| name `node_cpu_seconds_total`, no unit (remote write) | `node_cpu_seconds_total`: unchanged |
| attribute `service.name`, `cpu` | label `service_name`, `cpu` |
| the series' host | label `host` |

Units: the UCUM unit's words (By bytes, s seconds, ms milliseconds, Cel celsius, ...), `a/b` as
`a_per_b`; a suffix the name already ends with is not added twice. Characters outside
[a-zA-Z0-9_:] become `_`. The way in is the same table read from right to left: a PromQL selector
names the Prometheus name, and matches every sysmon series whose name and unit map to it.
"""

from __future__ import annotations

import re
from functools import lru_cache

from sysmon.core.metrics import COUNTER

UNIT_WORDS = {
    "1": "ratio", "%": "percent", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "bit": "bits", "s": "seconds",
    "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds", "min": "minutes", "h": "hours", "d": "days",
    "Cel": "celsius", "Hz": "hertz", "V": "volts", "W": "watts", "A": "amperes", "J": "joules", "m": "meters",
}
PER_WORDS = {"s": "second", "min": "minute", "h": "hour", "d": "day", "ms": "millisecond"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
_INVALID = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")


def _clean(name: str, pattern: re.Pattern[str]) -> str:
    out = pattern.sub("_", name)
    out = re.sub(r"__+", "_", out)
    return "_" + out if out[:1].isdigit() else out


def unit_suffix(unit: str) -> str:
    """`By` -> `bytes`, `By/s` -> `bytes_per_second`, `{request}` and `` -> ``."""
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()
    if not unit:
        return ""
    main, _, per = unit.partition("/")
    words = []
    if main:
        words.append(UNIT_WORDS.get(main, _clean(main, _INVALID_LABEL).strip("_")))
    if per:
        words += ["per", PER_WORDS.get(per, UNIT_WORDS.get(per, _clean(per, _INVALID_LABEL).strip("_")))]
    return "_".join(w for w in words if w)


@lru_cache(maxsize=100_000)
def prom_name(name: str, unit: str, kind: int) -> str:
    base = _clean(name, _INVALID)
    tail = ""
    if kind == COUNTER:
        for suffix in HISTOGRAM_SUFFIXES:
            if base.endswith(suffix):
                base, tail = base[: -len(suffix)], suffix
                break
    suffix = unit_suffix(unit)
    if suffix and not base.endswith("_" + suffix) and not base.endswith("_" + suffix + "_total"):
        base = f"{base}_{suffix}"
    if kind == COUNTER and not tail and not base.endswith("_total"):
        base += "_total"
    return base + tail


@lru_cache(maxsize=10_000)
def prom_label(key: str) -> str:
    return _clean(key, _INVALID_LABEL)
