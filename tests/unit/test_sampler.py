"""The sampler on the real machine, and its pure parts (rates, CPU shares, mount selection) on
synthetic input."""

from __future__ import annotations

import math
import os
import time
from collections import Counter as Tally
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from sysmon.agent import sampler as sampler_mod
from sysmon.agent.sampler import (
    ALL_GROUPS,
    METRICS,
    Sampler,
    SeriesSpec,
    cpu_utilization,
    parse_mounts,
    parse_physical_fstypes,
    per_second,
    select_mounts,
)
from sysmon.core.metrics import GAUGE, RATE, Limits, check_series

Sample = list[tuple[SeriesSpec, float]]


def _burn_cpu(seconds: float = 0.15) -> None:
    # Enough busy time for the kernel's 10 ms ticks to move on every CPU's counters.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def _named(sample: Sample, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {spec.attributes: value for spec, value in sample if spec.name == name}


@pytest.fixture(scope="module")
def two_samples() -> tuple[Sample, Sample]:
    s = Sampler()
    first = s.sample()
    _burn_cpu()
    return first, s.sample()


# --- on the real machine ------------------------------------------------------------------------


def test_first_sample_has_gauges_but_no_rates_or_cpu_utilization(two_samples: tuple[Sample, Sample]) -> None:
    first, _ = two_samples
    names = {spec.name for spec, _ in first}
    assert all(spec.kind == GAUGE for spec, _ in first)
    assert "system.cpu.utilization" not in names
    for expected in (
        "system.memory.usage",
        "system.memory.limit",
        "system.cpu.logical.count",
        "system.process.count",
        "system.filesystem.usage",
        "system.uptime",
    ):
        assert expected in names
    assert _named(first, "system.memory.limit")[()] == psutil.virtual_memory().total
    assert _named(first, "system.process.count")[()] > 0


def test_second_sample_has_cpu_utilization_per_core_and_total(two_samples: tuple[Sample, Sample]) -> None:
    _, second = two_samples
    util = [
        (dict(spec.attributes), spec.unit, v) for spec, v in second if spec.name == "system.cpu.utilization"
    ]
    assert util
    assert {unit for _, unit, _ in util} == {"1"}
    assert all(0.0 <= v <= 1.0 for _, _, v in util)
    per_cpu: dict[str, float] = {}
    for attrs, _, v in util:
        per_cpu[attrs["cpu"]] = per_cpu.get(attrs["cpu"], 0.0) + v
    n = len(psutil.cpu_times(percpu=True))
    assert set(per_cpu) == {"total", *(str(i) for i in range(n))}
    for cpu, total in per_cpu.items():
        assert total == pytest.approx(1.0, abs=1e-9), cpu
    states = {attrs["state"] for attrs, _, _ in util}
    assert {"user", "system", "idle"} <= states
    assert not states & {"guest", "guest_nice"}  # already inside user/nice
    # We just burned CPU, so the busy share of the whole machine cannot be zero.
    busy = sum(v for attrs, _, v in util if attrs["cpu"] == "total" and attrs["state"] != "idle")
    assert busy > 0


def test_rates_appear_from_the_second_sample_non_negative_and_finite(
    two_samples: tuple[Sample, Sample],
) -> None:
    _, second = two_samples
    rates = [(spec, v) for spec, v in second if spec.kind == RATE]
    assert all(math.isfinite(v) and v >= 0 for _, v in rates)
    assert all(spec.unit.endswith("/s") for spec, _ in rates)
    nics = [n for n in psutil.net_io_counters(pernic=True) if n != "lo"]
    io = _named(second, "system.network.io")
    for nic in nics:
        for direction in ("receive", "transmit"):
            assert (("device", nic), ("direction", direction)) in io
    assert not any(dict(a)["device"] == "lo" for a in io)  # loopback is opt-in
    disks = [d for d in psutil.disk_io_counters(perdisk=True) or {} if not d.startswith(("loop", "ram"))]
    disk_io = _named(second, "system.disk.io")
    assert {dict(a)["device"] for a in disk_io} == set(disks)


def test_every_series_is_valid_finite_and_unique(two_samples: tuple[Sample, Sample]) -> None:
    units = {m.name: (m.unit, m.kind) for m in METRICS}
    for sample in two_samples:
        specs = [spec for spec, _ in sample]
        duplicates = [s for s, n in Tally(specs).items() if n > 1]
        assert not duplicates
        for spec, value in sample:
            check_series(spec.name, dict(spec.attributes), spec.unit, Limits())
            assert spec.attributes == tuple(sorted(spec.attributes))
            assert (spec.unit, spec.kind) == units[spec.name]
            assert isinstance(value, float)
            assert math.isfinite(value)
            if spec.unit == "1":
                assert 0.0 <= value <= 1.0, spec


def test_root_filesystem_is_reported(two_samples: tuple[Sample, Sample]) -> None:
    first, _ = two_samples
    usage = {
        dict(a)["state"]: v
        for a, v in _named(first, "system.filesystem.usage").items()
        if dict(a)["mountpoint"] == "/"
    }
    assert set(usage) == {"used", "free", "reserved"}
    st = os.statvfs("/")
    assert sum(usage.values()) == pytest.approx(st.f_blocks * st.f_frsize, rel=0.01)
    (ratio,) = [
        v for a, v in _named(first, "system.filesystem.utilization").items() if dict(a)["mountpoint"] == "/"
    ]
    assert ratio == pytest.approx(usage["used"] / (usage["used"] + usage["free"]), abs=0.01)
    attrs = next(
        dict(a) for a in _named(first, "system.filesystem.utilization") if dict(a)["mountpoint"] == "/"
    )
    assert set(attrs) == {"device", "mountpoint", "type"}
    assert attrs["type"]


def test_group_filtering() -> None:
    s = Sampler(["memory"])
    assert s.groups == frozenset({"memory"})
    names = {spec.name for spec, _ in s.sample()}
    assert names == {"system.memory.usage", "system.memory.utilization", "system.memory.limit"}
    s.set_groups({"paging", "system"})
    assert s.groups == frozenset({"paging", "system"})
    names = {spec.name for spec, _ in s.sample()}
    assert names == {"system.paging.usage", "system.paging.utilization", "system.uptime"}
    assert Sampler().groups == ALL_GROUPS


def test_unknown_group_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown metric group\(s\) gpu;.*valid groups: cpu, disk, filesystem"
    ):
        Sampler(["cpu", "gpu"])
    s = Sampler(["cpu"])
    with pytest.raises(ValueError, match="bogus"):
        s.set_groups(["bogus"])
    assert s.groups == frozenset({"cpu"})  # unchanged after a refused update
    with pytest.raises(TypeError, match="not the string"):
        Sampler("memory")


def test_disabling_cpu_forgets_the_previous_cpu_times() -> None:
    s = Sampler(["cpu"])
    s.sample()
    s.set_groups(["cpu", "memory"])
    _burn_cpu(0.05)
    assert any(spec.name == "system.cpu.utilization" for spec, _ in s.sample())
    s.set_groups(["memory"])
    s.set_groups(["cpu"])
    # After a gap of unknown length the first sample is a first sample again.
    assert not any(spec.name == "system.cpu.utilization" for spec, _ in s.sample())


def test_sample_is_cheap() -> None:
    s = Sampler()
    s.sample()
    start = time.process_time()
    for _ in range(20):
        s.sample()
    per_sample = (time.process_time() - start) / 20
    # The collector's budget is 0.5 % of a core at 5 s, i.e. 25 ms per tick, batching included.
    assert per_sample < 0.010


# --- rates: the pure function, then the sampler over synthetic counters ----------------------------


@pytest.mark.parametrize(
    ("prev", "value", "now", "expected"),
    [
        (None, 100, 5.0, None),  # first reading: nothing to compare with
        ((100, 0.0), 600, 5.0, 100.0),
        ((100, 0.0), 100, 5.0, 0.0),
        ((10**15, 0.0), 10**15 + 2**20, 2.0, 2**19),  # large counters stay exact
        ((100, 0.0), 40, 5.0, None),  # reset: no value, never negative
        ((100, 5.0), 200, 5.0, None),  # no time elapsed
        ((100, 6.0), 200, 5.0, None),  # clock went backwards
    ],
)
def test_per_second(
    prev: tuple[float, float] | None, value: float, now: float, expected: float | None
) -> None:
    assert per_second(prev, value, now) == expected


snetio = namedtuple("snetio", "bytes_sent bytes_recv packets_sent packets_recv errin errout dropin dropout")


def _nic(sent: int, recv: int) -> snetio:
    return snetio(sent, recv, sent // 100, recv // 100, 0, 0, 0, 0)


class _Script:
    """Feeds psutil.net_io_counters and the sampler's clock one step per sample."""

    def __init__(self, steps: list[tuple[float, dict[str, snetio]]]) -> None:
        self.steps = steps
        self.i = -1

    def counters(self, pernic: bool = False) -> dict[str, snetio]:
        self.i += 1
        return dict(self.steps[self.i][1])

    def clock(self) -> float:
        return self.steps[self.i][0]


def test_counter_reset_yields_no_value_then_rebases(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script(
        [
            (0.0, {"eth0": _nic(1000, 5000), "lo": _nic(7, 7)}),
            (2.0, {"eth0": _nic(3000, 9000), "lo": _nic(9, 9)}),
            (4.0, {"eth0": _nic(500, 100)}),  # eth0 re-created: counters restart; lo gone
            (5.0, {"eth0": _nic(1500, 300)}),
        ]
    )
    monkeypatch.setattr(psutil, "net_io_counters", script.counters)
    monkeypatch.setattr(sampler_mod, "_clock", script.clock)
    s = Sampler(["network"])

    assert s.sample() == []
    io = _named(s.sample(), "system.network.io")
    assert io == {
        (("device", "eth0"), ("direction", "receive")): 2000.0,
        (("device", "eth0"), ("direction", "transmit")): 1000.0,
    }
    after_reset = {spec.name for spec, _ in s.sample()}
    # Bytes and packets went backwards: no value (not negative, not zero). Errors and drops
    # stayed at 0, which is no reset.
    assert after_reset == {"system.network.errors", "system.network.dropped"}
    io = _named(s.sample(), "system.network.io")
    assert io == {
        (("device", "eth0"), ("direction", "receive")): 200.0,
        (("device", "eth0"), ("direction", "transmit")): 1000.0,
    }


def test_loopback_is_opt_in_and_vanished_devices_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script(
        [
            (0.0, {"eth0": _nic(0, 0), "lo": _nic(0, 0)}),
            (1.0, {"eth0": _nic(10, 10), "lo": _nic(50, 50)}),
            (2.0, {"eth0": _nic(20, 20)}),
            (3.0, {"eth0": _nic(30, 30), "lo": _nic(60, 60)}),
            (4.0, {"eth0": _nic(40, 40), "lo": _nic(70, 70)}),
        ]
    )
    monkeypatch.setattr(psutil, "net_io_counters", script.counters)
    monkeypatch.setattr(sampler_mod, "_clock", script.clock)
    s = Sampler(["network"], include_loopback=True)
    s.sample()
    devices = {dict(a)["device"] for a in _named(s.sample(), "system.network.io")}
    assert devices == {"eth0", "lo"}
    s.sample()
    # lo came back after a gap: its old base is gone, so it starts afresh rather than averaging.
    assert {dict(a)["device"] for a in _named(s.sample(), "system.network.io")} == {"eth0"}
    lo = _named(s.sample(), "system.network.io")[(("device", "lo"), ("direction", "receive"))]
    assert lo == 10.0


def test_non_finite_values_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    sswap = namedtuple("sswap", "total used free percent sin sout")
    monkeypatch.setattr(psutil, "swap_memory", lambda: sswap(100, math.nan, math.inf, 0.0, 0, 0))
    s = Sampler(["paging"])
    assert s.sample() == []  # used, free and used/total all non-finite
    assert s.skipped == 3


def test_swapless_machine_reports_zero_utilization(monkeypatch: pytest.MonkeyPatch) -> None:
    sswap = namedtuple("sswap", "total used free percent sin sout")
    monkeypatch.setattr(psutil, "swap_memory", lambda: sswap(0, 0, 0, 0.0, 0, 0))
    sample = Sampler(["paging"]).sample()
    assert _named(sample, "system.paging.utilization") == {(("state", "used"),): 0.0}


def test_a_failing_group_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(perdisk: bool = False) -> None:
        raise OSError("no /proc/diskstats")

    monkeypatch.setattr(psutil, "disk_io_counters", broken)
    s = Sampler(["disk", "memory"])
    names = {spec.name for spec, _ in s.sample()}
    assert names == {"system.memory.usage", "system.memory.utilization", "system.memory.limit"}
    assert s.errors == 1


def test_control_characters_in_names_are_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script([(0.0, {"we\nird": _nic(0, 0)}), (1.0, {"we\nird": _nic(100, 100)})])
    monkeypatch.setattr(psutil, "net_io_counters", script.counters)
    monkeypatch.setattr(sampler_mod, "_clock", script.clock)
    s = Sampler(["network"])
    s.sample()
    sample = s.sample()
    assert {dict(spec.attributes)["device"] for spec, _ in sample} == {"we\\012ird"}
    for spec, _ in sample:
        check_series(spec.name, dict(spec.attributes), spec.unit, Limits())


# --- CPU shares ------------------------------------------------------------------------------------

FIELDS = ("user", "nice", "system", "idle", "iowait", "guest", "guest_nice")


def test_cpu_utilization_is_a_share_of_elapsed_time() -> None:
    prev = (10.0, 0.0, 5.0, 100.0, 1.0, 3.0, 0.0)
    now = (13.0, 0.0, 6.0, 106.0, 1.0, 5.0, 0.0)  # guest grew too, inside user
    shares = dict(cpu_utilization(FIELDS, prev, now))
    assert shares == {"user": 0.3, "nice": 0.0, "system": 0.1, "idle": 0.6, "iowait": 0.0}


def test_cpu_utilization_clamps_a_backward_step_and_needs_elapsed_time() -> None:
    prev = (10.0, 0.0, 5.0, 100.0, 2.0, 0.0, 0.0)
    now = (12.0, 0.0, 5.0, 102.0, 1.0, 0.0, 0.0)  # iowait stepped back (a known kernel quirk)
    shares = dict(cpu_utilization(FIELDS, prev, now))
    assert shares["iowait"] == 0.0
    assert shares["user"] == shares["idle"] == 0.5
    assert cpu_utilization(FIELDS, prev, prev) == []


# --- mounts ----------------------------------------------------------------------------------------

PHYSICAL = frozenset({"ext4", "xfs", "squashfs", "zfs"})


def test_select_mounts() -> None:
    rows = [
        ("overlay", "/", "overlay"),  # a container's root: kept whatever its type
        ("proc", "/proc", "proc"),
        ("tmpfs", "/run", "tmpfs"),
        ("/dev/sdb1", "/data", "ext4"),
        ("/dev/sdb1", "/data", "ext4"),  # listed twice
        ("/dev/sdc1", "/var/lib/docker", "xfs"),  # the runtime's own disk: kept
        ("/dev/sdc1", "/var/lib/docker/overlay2/abc/merged", "xfs"),
        ("/dev/sda1", "/var/lib/kubelet/pods/p/volumes/v", "ext4"),
        ("/dev/loop3", "/snap/core/123", "squashfs"),
        ("/dev/sdd1", "/mnt", "ext4"),
        ("/dev/sde1", "/mnt", "xfs"),  # mounted over /mnt: statvfs sees this one
        ("", "/empty", "ext4"),
        ("tank", "/tank", "zfs"),
    ]
    assert select_mounts(rows, PHYSICAL) == [
        ("overlay", "/", "overlay"),
        ("/dev/sdb1", "/data", "ext4"),
        ("/dev/sdc1", "/var/lib/docker", "xfs"),
        ("/dev/sde1", "/mnt", "xfs"),
        ("tank", "/tank", "zfs"),
    ]


def test_parse_physical_fstypes_and_mounts() -> None:
    assert parse_physical_fstypes("nodev\tsysfs\n\text4\nnodev\tzfs\n\txfs\n") == {"ext4", "xfs", "zfs"}
    text = "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /mnt/my\\040disk xfs rw 0 0\nbroken\n"
    assert parse_mounts(text) == [("/dev/sda1", "/", "ext4"), ("/dev/sdb1", "/mnt/my disk", "xfs")]


def test_host_root_reads_the_hosts_mounts_and_reports_host_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "proc" / "1" / "mounts").write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "proc /proc proc rw 0 0\n"
        "/dev/sdb1 /data ext4 rw 0 0\n"
        "/dev/sdc1 /gone ext4 rw 0 0\n"  # not visible under host_root: skipped, not an error
    )
    monkeypatch.setattr(sampler_mod, "_physical_fstypes", lambda: frozenset({"ext4"}))
    s = Sampler(["filesystem"], host_root=str(tmp_path) + "/")
    util = {dict(a)["mountpoint"]: dict(a) for a in _named(s.sample(), "system.filesystem.utilization")}
    assert set(util) == {"/", "/data"}
    assert util["/data"] == {"device": "/dev/sdb1", "mountpoint": "/data", "type": "ext4"}
    assert s.errors == 0


def test_host_root_without_the_hosts_table_uses_mounts_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdiskpart = namedtuple("sdiskpart", "device mountpoint fstype opts")
    host = tmp_path / "host"
    (host / "boot").mkdir(parents=True)
    parts = [
        sdiskpart("overlay", "/", "overlay", "rw"),  # the collector's own root, not the host's
        sdiskpart("/dev/sda1", str(host), "ext4", "rw"),
        sdiskpart("/dev/sda2", str(host / "boot"), "ext4", "rw"),
    ]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: parts)
    monkeypatch.setattr(sampler_mod, "_physical_fstypes", lambda: frozenset({"ext4"}))
    s = Sampler(["filesystem"], host_root=str(host))
    util = {
        dict(a)["mountpoint"]: dict(a)["device"] for a in _named(s.sample(), "system.filesystem.utilization")
    }
    assert util == {"/": "/dev/sda1", "/boot": "/dev/sda2"}
