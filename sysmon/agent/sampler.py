"""What the collector samples, as a table, and the one place where counters become rates.

Each metric is one row of METRICS: its group, OpenTelemetry name, unit, kind and a function that
turns its group's reading into (attributes, value) points. A group is read once per tick (one
psutil call feeds every metric of the group), so adding a metric is one row and costs no extra
system call. RATE rows yield cumulative counters; Sampler.sample() turns them into per-second
rates with per_second(), the only place that knows about previous values.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from sysmon.core.metrics import GAUGE, METRIC_GROUPS, RATE, InvalidInput, Limits, check_series

log = logging.getLogger(__name__)

Attrs = tuple[tuple[str, str], ...]
Points = Iterable[tuple[Attrs, float]]
# (counter value, monotonic seconds) of a counter's previous reading.
Counter = tuple[float, float]

ALL_GROUPS: frozenset[str] = frozenset(METRIC_GROUPS)

# Module-level so that tests can drive rates with a fake clock; monotonic because wall-clock
# steps (NTP, suspend) would otherwise turn into bogus rates.
_clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """Hashable identity of one series: what the batcher declares once per stream."""

    name: str
    attributes: tuple[tuple[str, str], ...]  # sorted by key
    unit: str
    kind: int  # sysmon.core.metrics.GAUGE or RATE


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table. For RATE rows, `points` yields cumulative counters, not rates."""

    group: str
    name: str
    unit: str
    kind: int
    points: Callable[[Any], Points]


# --- pure computations --------------------------------------------------------------------------


def per_second(prev: Counter | None, value: float, now: float) -> float | None:
    """The rate of a cumulative counter since its previous reading, or None when there is none.

    A counter that went backwards was reset (reboot of a device, interface re-created): the
    difference means nothing, so this sample has no value and the caller re-bases on `value`.
    """
    if prev is None:
        return None
    prev_value, prev_time = prev
    elapsed = now - prev_time
    if elapsed <= 0 or value < prev_value:
        return None
    return (value - prev_value) / elapsed


# Linux counts guest time inside user and nice already (psutil.cpu_percent excludes it for the
# same reason); counting it again would make the states sum past 1.
_CPU_NOT_STATES = frozenset({"guest", "guest_nice"})


def cpu_utilization(
    fields: Sequence[str], prev: Sequence[float], now: Sequence[float]
) -> list[tuple[str, float]]:
    """Share of elapsed CPU time per state between two cpu_times() readings; [] if none elapsed.

    A ratio of deltas rather than a per-second rate: it needs no wall clock, and the states of a
    CPU sum to 1 exactly. Some kernels let idle/iowait step backwards; a negative step counts as 0.
    """
    deltas = [
        (state, max(0.0, b - a))
        for state, a, b in zip(fields, prev, now, strict=True)
        if state not in _CPU_NOT_STATES
    ]
    total = sum(d for _, d in deltas)
    if total <= 0:
        return []
    return [(state, d / total) for state, d in deltas]


def parse_physical_fstypes(text: str) -> frozenset[str]:
    """Filesystem types of /proc/filesystems that are backed by a device (psutil's all=False rule)."""
    types = {"zfs"}  # listed as nodev, yet holds real data; psutil makes the same exception
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 1:
            types.add(parts[0])
    return frozenset(types)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def parse_mounts(text: str) -> list[tuple[str, str, str]]:
    """(device, mountpoint, fstype) rows of a /proc/<pid>/mounts file, escapes decoded."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            device, mountpoint, fstype = (
                _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), p) for p in parts[:3]
            )
            rows.append((device, mountpoint, fstype))
    return rows


# Read-only images (snaps, live media) are always 100 % full: series that only raise false alarms.
_IMAGE_FSTYPES = frozenset({"squashfs", "iso9660", "erofs"})
# Kernel views, and the per-container/per-pod mounts of runtimes: on a Kubernetes node these are
# hundreds of bind mounts that repeat the node's disk. The runtime's own top directory is kept,
# since it is often a disk of its own.
_PSEUDO_MOUNTS = ("/proc", "/sys", "/dev")
_RUNTIME_PREFIXES = (
    "/proc/",
    "/sys/",
    "/dev/",
    "/run/containerd/",
    "/run/k3s/",
    "/run/docker/",
    "/var/lib/docker/",
    "/var/lib/containerd/",
    "/var/lib/containers/",
    "/var/lib/kubelet/",
    "/snap/",
)


def select_mounts(
    rows: Iterable[tuple[str, str, str]], physical: frozenset[str] | None
) -> list[tuple[str, str, str]]:
    """The mounts worth a filesystem series, in mount order, one per mountpoint.

    `physical` is the set of device-backed types, or None when the rows are already filtered.
    "/" is always kept whatever its type: in a container it is an overlay whose usage is the
    node's disk, and "is / full?" is the first question anyone asks.
    """
    by_mountpoint: dict[str, tuple[str, str, str]] = {}
    for device, mountpoint, fstype in rows:
        if mountpoint != "/":
            if physical is not None and (fstype not in physical or device in ("", "none")):
                continue
            if fstype in _IMAGE_FSTYPES or mountpoint in _PSEUDO_MOUNTS:
                continue
            if mountpoint.startswith(_RUNTIME_PREFIXES):
                continue
        # A later mount on the same point hides the earlier one, and statvfs sees only the top
        # one: keep that, so the device attribute matches the numbers.
        by_mountpoint[mountpoint] = (device, mountpoint, fstype)
    return list(by_mountpoint.values())


# --- readings: one system call (or a few) per group and tick -------------------------------------


@dataclass(slots=True)
class _State:
    """What the readers need between ticks or from configuration."""

    host_root: str | None
    include_loopback: bool
    cpu_prev: tuple[Any, list[Any]] | None = None


@dataclass(frozen=True, slots=True)
class _CpuReading:
    utilization: list[tuple[str, list[tuple[str, float]]]]  # (cpu label, [(state, ratio)])
    load: tuple[float, float, float] | None
    logical: int | None


@dataclass(frozen=True, slots=True)
class _FsUsage:
    device: str
    mountpoint: str
    fstype: str
    used: int
    free: int  # available to unprivileged users, as df shows it
    reserved: int  # free only to root


def _read_cpu(state: _State) -> _CpuReading:
    total = psutil.cpu_times()
    per_cpu = psutil.cpu_times(percpu=True)
    prev, state.cpu_prev = state.cpu_prev, (total, per_cpu)
    utilization: list[tuple[str, list[tuple[str, float]]]] = []
    if prev is not None:
        fields = total._fields
        utilization.append(("total", cpu_utilization(fields, prev[0], total)))
        # A CPU going on- or offline renumbers the list; skip per-CPU values for that one tick.
        # (psutil lists online CPUs only, so the label is the position among them.)
        if len(prev[1]) == len(per_cpu):
            utilization.extend(
                (str(i), cpu_utilization(fields, a, b))
                for i, (a, b) in enumerate(zip(prev[1], per_cpu, strict=True))
            )
    try:
        load: tuple[float, float, float] | None = _getloadavg()
    except OSError:
        load = None
    return _CpuReading(utilization, load, psutil.cpu_count(logical=True))


# os.getloadavg is a plain syscall; psutil's version exists for Windows, where it emulates.
_getloadavg: Callable[[], tuple[float, float, float]] = getattr(os, "getloadavg", psutil.getloadavg)


def _physical_fstypes() -> frozenset[str] | None:
    # Read each tick: a first mount of a new type can load a filesystem module.
    try:
        with open("/proc/filesystems", encoding="utf-8") as f:
            return parse_physical_fstypes(f.read())
    except OSError:
        return None  # not Linux: psutil's all=False does the filtering


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def _mount_rows(host_root: str | None, physical: frozenset[str] | None) -> list[tuple[str, str, str]]:
    """(device, mountpoint, fstype) as the host sees them."""
    if host_root is not None:
        # The mount table of the host's init, visible when the host's / (with /proc) is mounted
        # at host_root and the pod shares the host PID namespace.
        try:
            with open(f"{host_root}/proc/1/mounts", encoding="utf-8", errors="replace") as f:
                return parse_mounts(f.read())
        except OSError:
            pass
    rows = [(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=physical is not None)]
    if host_root is None:
        return rows
    # Without the host's table, the host's mounts are those we see below host_root.
    return [(d, mp[len(host_root) :] or "/", t) for d, mp, t in rows if _is_under(mp, host_root)]


def _usage(path: str) -> tuple[int, int, int] | None:
    """(used, free, reserved) bytes of the filesystem at path; None for one without blocks."""
    if not hasattr(os, "statvfs"):  # Windows
        du = psutil.disk_usage(path)
        return (du.used, du.free, 0) if du.total else None
    st = os.statvfs(path)
    if st.f_blocks == 0:
        return None
    return (
        (st.f_blocks - st.f_bfree) * st.f_frsize,
        st.f_bavail * st.f_frsize,
        (st.f_bfree - st.f_bavail) * st.f_frsize,
    )


def _read_filesystems(state: _State) -> list[_FsUsage]:
    physical = _physical_fstypes()
    prefix = state.host_root or ""
    result = []
    for device, mountpoint, fstype in select_mounts(_mount_rows(state.host_root, physical), physical):
        try:
            usage = _usage(prefix + mountpoint)
        except OSError:
            continue  # unmounted meanwhile, not permitted, or not visible under host_root
        if usage is not None:
            result.append(_FsUsage(device, mountpoint, fstype, *usage))
    return result


_SKIPPED_DISKS = re.compile(r"(loop|ram)\d+\Z")
_LOOPBACK = re.compile(r"lo\d*\Z")


def _read_disks(state: _State) -> dict[str, Any]:
    counters = psutil.disk_io_counters(perdisk=True) or {}
    return {name: c for name, c in counters.items() if not _SKIPPED_DISKS.match(name)}


def _read_network(state: _State) -> dict[str, Any]:
    counters = psutil.net_io_counters(pernic=True)
    if state.include_loopback:
        return counters
    return {name: c for name, c in counters.items() if not _LOOPBACK.match(name)}


def _read_uptime(state: _State) -> float:
    return time.time() - psutil.boot_time()


_READERS: dict[str, Callable[[_State], Any]] = {
    "cpu": _read_cpu,
    "memory": lambda state: psutil.virtual_memory(),
    "paging": lambda state: psutil.swap_memory(),
    "filesystem": _read_filesystems,
    "disk": _read_disks,
    "network": _read_network,
    # Listing /proc is cheap; iterating processes is not, and is not done here.
    "process": lambda state: len(psutil.pids()),
    "system": _read_uptime,
}

# What a failing source may raise; a bug in an extractor is not caught.
_READ_ERRORS = (OSError, psutil.Error, RuntimeError, NotImplementedError, ValueError)


# --- extractors: reading -> points --------------------------------------------------------------


def _scalar(value: float | None) -> Points:
    return () if value is None else (((), value),)


def _cpu_utilization(r: _CpuReading) -> Points:
    for cpu, states in r.utilization:
        for state, ratio in states:
            yield (("cpu", cpu), ("state", state)), ratio


def _load(i: int) -> Callable[[_CpuReading], Points]:
    return lambda r: _scalar(None if r.load is None else r.load[i])


# psutil's names; which exist depends on the platform (buffers and cached are Linux/BSD).
# "available" overlaps the others, so the states do not sum to the limit.
_MEMORY_STATES = ("used", "free", "buffers", "cached", "available")


def _memory_usage(vm: Any) -> Points:
    for state in _MEMORY_STATES:
        value = getattr(vm, state, None)
        if value is not None:
            yield (("state", state),), value


def _used_ratio(mem: Any) -> Points:
    # Only swap can have no total (none configured): nothing is paged out, and a missing series
    # would look like a broken collector on every swapless node.
    return (((("state", "used"),), mem.used / mem.total if mem.total > 0 else 0.0),)


def _paging_usage(swap: Any) -> Points:
    return ((("state", "used"),), swap.used), ((("state", "free"),), swap.free)


def _fs_attrs(fs: _FsUsage) -> Attrs:
    return (("device", fs.device), ("mountpoint", fs.mountpoint), ("type", fs.fstype))


def _fs_usage(fss: list[_FsUsage]) -> Points:
    for fs in fss:
        attrs = _fs_attrs(fs)
        yield (*attrs, ("state", "used")), fs.used
        yield (*attrs, ("state", "free")), fs.free
        yield (*attrs, ("state", "reserved")), fs.reserved


def _fs_utilization(fss: list[_FsUsage]) -> Points:
    # used / (used + free), as df computes it: root's reserve is not space users can fill.
    for fs in fss:
        if fs.used + fs.free > 0:
            yield _fs_attrs(fs), fs.used / (fs.used + fs.free)


def _pair(field_in: str, field_out: str, names: tuple[str, str]) -> Callable[[dict[str, Any]], Points]:
    """Per device, one counter per direction from two fields of psutil's counters."""

    def points(counters: dict[str, Any]) -> Points:
        for device, c in counters.items():
            yield (("device", device), ("direction", names[0])), getattr(c, field_in)
            yield (("device", device), ("direction", names[1])), getattr(c, field_out)

    return points


def _disk_io_time(counters: dict[str, Any]) -> Points:
    for device, c in counters.items():
        busy_ms = getattr(c, "busy_time", None)  # Linux and FreeBSD only
        if busy_ms is not None:
            yield (("device", device),), busy_ms / 1000


_RW = ("read", "write")
_RT = ("receive", "transmit")

METRICS: tuple[Metric, ...] = (
    Metric("cpu", "system.cpu.utilization", "1", GAUGE, _cpu_utilization),
    Metric("cpu", "system.cpu.load_average.1m", "{thread}", GAUGE, _load(0)),
    Metric("cpu", "system.cpu.load_average.5m", "{thread}", GAUGE, _load(1)),
    Metric("cpu", "system.cpu.load_average.15m", "{thread}", GAUGE, _load(2)),
    Metric("cpu", "system.cpu.logical.count", "{cpu}", GAUGE, lambda r: _scalar(r.logical)),
    Metric("memory", "system.memory.usage", "By", GAUGE, _memory_usage),
    Metric("memory", "system.memory.utilization", "1", GAUGE, _used_ratio),
    Metric("memory", "system.memory.limit", "By", GAUGE, lambda vm: _scalar(vm.total)),
    Metric("paging", "system.paging.usage", "By", GAUGE, _paging_usage),
    Metric("paging", "system.paging.utilization", "1", GAUGE, _used_ratio),
    Metric("filesystem", "system.filesystem.usage", "By", GAUGE, _fs_usage),
    Metric("filesystem", "system.filesystem.utilization", "1", GAUGE, _fs_utilization),
    Metric("disk", "system.disk.io", "By/s", RATE, _pair("read_bytes", "write_bytes", _RW)),
    Metric("disk", "system.disk.operations", "{operation}/s", RATE, _pair("read_count", "write_count", _RW)),
    Metric("disk", "system.disk.io_time", "s/s", RATE, _disk_io_time),
    Metric("network", "system.network.io", "By/s", RATE, _pair("bytes_recv", "bytes_sent", _RT)),
    Metric(
        "network", "system.network.packets", "{packet}/s", RATE, _pair("packets_recv", "packets_sent", _RT)
    ),
    Metric("network", "system.network.errors", "{error}/s", RATE, _pair("errin", "errout", _RT)),
    Metric("network", "system.network.dropped", "{packet}/s", RATE, _pair("dropin", "dropout", _RT)),
    Metric("process", "system.process.count", "{process}", GAUGE, _scalar),
    Metric("system", "system.uptime", "s", GAUGE, lambda up: _scalar(up if up >= 0 else None)),
)

# Table order is sample order, so a sample's series come out in a stable order.
_GROUP_ORDER: tuple[str, ...] = tuple(dict.fromkeys(m.group for m in METRICS))
_BY_GROUP: dict[str, tuple[Metric, ...]] = {
    g: tuple(m for m in METRICS if m.group == g) for g in _GROUP_ORDER
}
assert set(_GROUP_ORDER) == ALL_GROUPS, "every group needs a row"
assert set(_READERS) == ALL_GROUPS, "every group needs a reader"


# --- the sampler --------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LIMITS = Limits()


def _escape_controls(value: str) -> str:
    # Device and mount names come from the system and may hold anything; the aggregator rejects
    # control characters, so write them the way /proc/mounts does.
    return _CONTROL.sub(lambda m: f"\\{ord(m[0]):03o}", value)


def _validate_groups(groups: Iterable[str]) -> frozenset[str]:
    if isinstance(groups, str):
        raise TypeError(f"groups must be an iterable of group names, not the string {groups!r}")
    chosen = frozenset(groups)
    unknown = chosen - ALL_GROUPS
    if unknown:
        raise ValueError(
            f"unknown metric group(s) {', '.join(sorted(unknown))}; "
            f"valid groups: {', '.join(sorted(ALL_GROUPS))}"
        )
    return chosen


class Sampler:
    """One collection tick per sample() call: (series, value) pairs, values always finite.

    Counters: `skipped` (non-finite values dropped), `rejected` (series whose name or attributes
    the aggregator would refuse, counted when first seen), `errors` (group reads that failed).
    """

    def __init__(
        self,
        groups: Iterable[str] = ALL_GROUPS,
        *,
        host_root: str | None = None,
        include_loopback: bool = False,
    ) -> None:
        self._groups = _validate_groups(groups)
        root = host_root.rstrip("/") if host_root else None
        self._state = _State(host_root=root or None, include_loopback=include_loopback)
        self.skipped = 0
        self.rejected = 0
        self.errors = 0
        self._counters: dict[SeriesSpec, Counter] = {}
        # (name, raw attributes) -> spec, or None when rejected; saves sorting, escaping and
        # validating the same series every tick.
        self._specs: dict[tuple[str, Attrs], SeriesSpec | None] = {}
        self._failing: set[str] = set()

    @property
    def groups(self) -> frozenset[str]:
        return self._groups

    def set_groups(self, groups: Iterable[str]) -> None:
        self._groups = _validate_groups(groups)
        if "cpu" not in self._groups:
            # Utilization over a gap of unknown length would be an average, not the latest value.
            self._state.cpu_prev = None
        # Counters of dropped groups go at the next sample, which keeps only what it saw.

    def sample(self) -> list[tuple[SeriesSpec, float]]:
        out: list[tuple[SeriesSpec, float]] = []
        prev_counters, counters = self._counters, {}
        specs: dict[tuple[str, Attrs], SeriesSpec | None] = {}
        for group in _GROUP_ORDER:
            if group not in self._groups:
                continue
            try:
                reading = _READERS[group](self._state)
            except _READ_ERRORS as e:
                self._read_failed(group, e)
                continue
            self._failing.discard(group)
            now = _clock()
            for metric in _BY_GROUP[group]:
                for attrs, raw in metric.points(reading):
                    key = (metric.name, attrs)
                    spec = self._specs[key] if key in self._specs else self._new_spec(metric, attrs)
                    specs[key] = spec
                    if spec is None:
                        continue
                    if not math.isfinite(raw):
                        self.skipped += 1
                        continue
                    value: float | None = raw
                    if metric.kind == RATE:
                        # Re-based every tick, including after a reset, so the next tick has a rate.
                        counters[spec] = (raw, now)
                        value = per_second(prev_counters.get(spec), raw, now)
                        if value is None:
                            continue
                        if not math.isfinite(value):
                            self.skipped += 1
                            continue
                    out.append((spec, float(value)))
        # Keeping only what this tick saw forgets vanished devices and disabled groups, so a
        # device that comes back starts afresh instead of from a stale base.
        self._counters = counters
        self._specs = specs
        return out

    def _new_spec(self, metric: Metric, attrs: Attrs) -> SeriesSpec | None:
        clean = tuple(sorted((k, _escape_controls(v)) for k, v in attrs))
        try:
            check_series(metric.name, dict(clean), metric.unit, _LIMITS)
        except InvalidInput as e:
            self.rejected += 1
            log.warning("not sampling a series the aggregator would reject: %s", e)
            return None
        return SeriesSpec(metric.name, clean, metric.unit, metric.kind)

    def _read_failed(self, group: str, error: Exception) -> None:
        self.errors += 1
        # Once per outage, not every 5 s.
        level = logging.DEBUG if group in self._failing else logging.WARNING
        log.log(level, "cannot sample %s metrics: %s", group, error)
        self._failing.add(group)
