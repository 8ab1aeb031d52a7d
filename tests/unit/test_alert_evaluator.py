"""The evaluator's state machine, stepped through tables of timestamps (as Prometheus's rule tests
do): each row is a step at time t (seconds) with a sample (or none), and what must hold after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from sysmon.alerts import evaluator
from sysmon.alerts.evaluator import FIRING, INACTIVE, PENDING, RESOLVED, Change, EvalState, Options
from sysmon.alerts.rules import NO_DATA_RULE, compile_rule, fingerprint
from sysmon.core.alert_rule import AlertRuleSpec
from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series

HOST = "web-1"
SID = 101
WEBHOOK = {"webhook": {"url": "http://receiver:9000/hook"}}


def rule(name: str = "high", **spec: Any) -> evaluator.CompiledRule:
    base: dict[str, Any] = {"metric": "system.cpu.utilization", "window": "1m", "aggregation": "last",
                            "condition": {"op": ">", "threshold": 90}, "actions": [WEBHOOK]}
    base.update(spec)
    return compile_rule(name, AlertRuleSpec.model_validate(base))


def new_state(*rules: evaluator.CompiledRule, labels: dict[str, str] | None = None,
              attributes: dict[str, str] | None = None, **opts: Any) -> EvalState:
    state = EvalState(options=Options(**{"no_data_ms": 0, **opts}))
    evaluator.set_rules(state, {r.name: r for r in rules}, 0)
    evaluator.set_host_labels(state, HOST, labels or {}, 0)
    evaluator.add_series(state, Series(SID, HOST, "system.cpu.utilization", attributes or {"state": "user"}), 0)
    return state


def batch(t_ms: int, value: float, sid: int = SID, host: str = HOST) -> NormalizedBatch:
    return NormalizedBatch(host, "s", 1, [], [t_ms], [[sid]], [[value]])


def state_of(state: EvalState, rule_name: str = "high", sid: int = SID) -> str:
    a = state.series[sid].alerts.get(rule_name)
    return INACTIVE if a is None else a.state


def run_table(state: EvalState, table: str, rule_name: str = "high") -> list[Change]:
    """Rows: `t  value|-  state  [transition]`; `-` is a step without a sample (a tick)."""
    everything: list[Change] = []
    for line in table.strip().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        cols = line.split()
        t, value, want = int(float(cols[0]) * 1000), cols[1], cols[2]
        expect_change = cols[3] if len(cols) > 3 else None
        batches = [] if value == "-" else [batch(t, float(value))]
        _, changes = evaluator.step(state, batches, t)
        everything += changes
        assert state_of(state, rule_name) == want, f"at t={cols[0]}s: {state_of(state, rule_name)} != {want}"
        got = [f"{c.previous}->{c.state}" for c in changes if c.alert.rule == rule_name and not c.repeat]
        if expect_change:
            assert got == [expect_change], f"at t={cols[0]}s: {got}"
        else:
            assert got == [], f"at t={cols[0]}s: unexpected {got}"
    return everything


def transitions(changes: Sequence[Change]) -> list[str]:
    return [f"{c.previous}->{c.state}" for c in changes if not c.repeat]


# --- each transition ---------------------------------------------------------------------------


def test_inactive_pending_firing_resolved() -> None:
    state = new_state(rule(**{"for": "10s"}))
    changes = run_table(state, """
        0    80   inactive
        5    95   pending   inactive->pending
        10   96   pending                       # held for 5s of 10s
        15   97   firing    pending->firing     # 10s since active_at
        20   99   firing
        25   50   inactive  firing->resolved
        30   50   inactive
    """)
    fired = next(c for c in changes if c.state == FIRING)
    assert fired.alert.active_at == 5000
    assert fired.alert.fired_at == 15000
    assert fired.notify
    assert fired.notify[0][0] == "webhook:http://receiver:9000/hook"
    resolved = next(c for c in changes if c.state == RESOLVED)
    assert resolved.alert.resolved_at == 25000
    assert resolved.notify == fired.notify
    # Pending transitions are stored and shown, never notified.
    assert next(c for c in changes if c.state == PENDING).notify == ()


def test_pending_that_recovers_goes_inactive_without_notifying() -> None:
    state = new_state(rule(**{"for": "30s"}))
    changes = run_table(state, """
        0    95   pending   inactive->pending
        5    96   pending
        10   40   inactive  pending->inactive
        15   95   pending   inactive->pending   # a new episode: active_at starts again
    """)
    assert all(not c.notify for c in changes)
    assert changes[-1].alert.active_at == 15000


def test_for_zero_fires_on_the_first_crossing() -> None:
    state = new_state(rule())
    run_table(state, """
        0    10   inactive
        5    91   firing    inactive->firing
        10   10   inactive  firing->resolved
    """)


def test_for_runs_out_between_samples_and_fires_on_the_tick() -> None:
    state = new_state(rule(**{"for": "7s"}))
    run_table(state, """
        0    95   pending   inactive->pending
        5    -    pending
        7    -    firing    pending->firing      # no sample at 7s: the timer fires it
        10   95   firing
    """)


def test_for_does_not_fire_on_a_value_long_gone() -> None:
    state = new_state(rule(**{"for": "1m"}), no_data_ms=20_000)
    run_table(state, """
        0    95   pending   inactive->pending
        70   -    pending    # the last value is 70s old: wait for data (no-data covers silence)
        75   95   firing    pending->firing
    """)


# --- hysteresis ---------------------------------------------------------------------------------


def test_a_value_oscillating_around_the_threshold_fires_once() -> None:
    state = new_state(rule(condition={"op": ">", "threshold": 90, "resolveThreshold": 85}))
    changes = run_table(state, """
        0    89   inactive
        5    91   firing    inactive->firing
        10   89   firing      # below the threshold, above the resolve line: still firing
        15   91   firing
        20   88   firing
        25   90.5 firing
        30   86   firing
        35   85   inactive  firing->resolved
        40   89   inactive    # below the threshold: no new alert
        45   91   firing    inactive->firing
    """)
    assert transitions(changes) == ["inactive->firing", "firing->resolved", "inactive->firing"]


def test_hysteresis_holds_pending_too() -> None:
    state = new_state(rule(**{"for": "10s"}, condition={"op": ">", "threshold": 90, "resolveThreshold": 85}))
    run_table(state, """
        0    91   pending   inactive->pending
        5    88   pending     # between the lines: `for` keeps running
        10   87   firing    pending->firing
    """)


def test_less_than_with_a_resolve_line_above() -> None:
    state = new_state(rule(condition={"op": "<", "threshold": 10, "resolveThreshold": 15}))
    run_table(state, """
        0    20   inactive
        5    9    firing    inactive->firing
        10   12   firing
        15   15   inactive  firing->resolved
    """)


def test_without_a_resolve_line_the_threshold_is_the_line() -> None:
    state = new_state(rule())
    changes = run_table(state, """
        0    91   firing    inactive->firing
        5    90   inactive  firing->resolved
        10   91   firing    inactive->firing
    """)
    assert len([c for c in changes if c.state == FIRING]) == 2


# --- windows ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregation", "table"),
    [
        ("avg", """
            0    80   inactive
            5    100  inactive     # avg of (-5, 5] is 90: not above
            10   100  firing    inactive->firing    # (0, 10]: 100
            15   90   firing       # (5, 15]: 95
            20   60   inactive  firing->resolved   # (10, 20]: 75
        """),
        ("max", """
            0    80   inactive
            5    95   firing    inactive->firing
            10   10   firing       # the 95 is still in the window (10s)
            16   10   inactive  firing->resolved   # 95 (t=5) left the window (6, 16]
        """),
        ("min", """
            0    95   firing    inactive->firing
            5    99   firing
            10   50   inactive  firing->resolved
            15   99   inactive     # 50 still in the window
            21   99   firing    inactive->firing
        """),
    ],
)
def test_aggregations_over_the_window(aggregation: str, table: str) -> None:
    state = new_state(rule(aggregation=aggregation, window="10s"))
    run_table(state, table)


def test_aggregate_function() -> None:
    times = [1000, 2000, 3000, 4000]
    values = [1.0, 5.0, 3.0, 7.0]
    assert evaluator.aggregate(times, values, 4000, 2500, "avg") == 5.0  # (1500, 4000]: 5, 3, 7
    assert evaluator.aggregate(times, values, 4000, 2500, "min") == 3.0
    assert evaluator.aggregate(times, values, 3000, 2500, "max") == 5.0  # samples after t are not seen
    assert evaluator.aggregate(times, values, 3000, 10_000, "last") == 3.0
    assert evaluator.aggregate(times, values, 9000, 1000, "last") is None  # nothing in (8000, 9000]
    assert evaluator.aggregate([], [], 9000, 1000, "avg") is None


def test_windows_keep_only_what_the_longest_rule_needs() -> None:
    state = new_state(rule(window="10s"), rule("slow", window="30s"))
    for t in range(0, 100, 5):
        evaluator.step(state, [batch(t * 1000, 1.0)], t * 1000)
    s = state.series[SID]
    assert s.horizon_ms == 30_000
    assert s.times[0] > 95_000 - 30_000 - 1
    assert len(s.times) <= 7


# --- selection -----------------------------------------------------------------------------------


def test_match_and_host_selector_choose_series() -> None:
    r_user = rule("user", match={"state": "user"})
    r_idle = rule("idle", match={"state": "idle"})
    r_prod = rule("prod", hostSelector={"matchLabels": {"env": "prod"}})
    state = new_state(r_user, r_idle, r_prod, labels={"env": "dev"})
    assert [r.name for r in state.series[SID].rules] == ["user"]
    changes = evaluator.set_host_labels(state, HOST, {"env": "prod"}, 0)
    assert changes == []
    assert sorted(r.name for r in state.series[SID].rules) == ["prod", "user"]


def test_labels_and_fingerprint() -> None:
    state = new_state(rule(labels={"team": "infra"}, severity="critical"), labels={"zone": "a", "k8s.io/node": "n"},
                      attributes={"state": "user", "cpu": "0"})
    _, changes = evaluator.step(state, [batch(0, 99.0)], 0)
    a = changes[0].alert
    assert a.labels == {"alertname": "high", "host": HOST, "severity": "critical", "team": "infra", "zone": "a",
                        "k8s_io_node": "n", "state": "user", "cpu": "0"}
    assert a.fingerprint == fingerprint(a.labels)
    assert len(a.fingerprint) == 16
    assert fingerprint({"a": "b", "c": "d"}) == fingerprint({"c": "d", "a": "b"})
    assert fingerprint({"a": "bc"}) != fingerprint({"ab": "c"})


def test_annotations_are_rendered_with_the_value_and_host() -> None:
    r = rule(metric="system.cpu.utilization", condition={"op": ">", "threshold": 0.9},
             annotations={"summary": "{{ host }}: cpu {{ attributes.state }} at {{ value | percent }}",
                          "description": "{{ aggregation }} over {{ window }}s {{ op }} {{ threshold | percent }}"})
    state = new_state(r)
    _, changes = evaluator.step(state, [batch(0, 0.934)], 0)
    assert changes[0].alert.annotations == {"summary": "web-1: cpu user at 93%",
                                            "description": "last over 60.0s > 90%"}


# --- no data --------------------------------------------------------------------------------------


def test_a_silent_host_raises_its_no_data_alert_and_data_resolves_it() -> None:
    state = new_state(rule(), no_data_ms=30_000, forget_ms=0)
    evaluator.step(state, [batch(0, 10.0)], 0)
    _, changes = evaluator.step(state, [], 29_000)
    assert changes == []
    _, changes = evaluator.step(state, [], 30_000)
    assert transitions(changes) == ["inactive->firing"]
    nd = changes[0].alert
    assert nd.rule == NO_DATA_RULE
    assert nd.labels["alertname"] == "SysmonNoData"
    assert nd.labels["host"] == HOST
    assert nd.annotations["summary"] == "web-1: no data for 30s"
    assert [key for key, _ in changes[0].notify] == ["webhook:http://receiver:9000/hook"]
    # Once only, however long the silence.
    _, changes = evaluator.step(state, [], 60_000)
    assert changes == []
    _, changes = evaluator.step(state, [batch(61_000, 10.0)], 61_000)
    assert transitions(changes) == ["firing->resolved"]
    assert changes[0].notify


def test_a_host_silent_past_forget_is_forgotten_and_its_alerts_resolve() -> None:
    state = new_state(rule(), no_data_ms=10_000, forget_ms=60_000)
    evaluator.step(state, [batch(0, 99.0)], 0)
    assert state_of(state) == FIRING
    evaluator.step(state, [], 10_000)
    _, changes = evaluator.step(state, [], 60_000)
    assert sorted(c.alert.rule for c in changes if c.state == RESOLVED) == ["high", NO_DATA_RULE]
    assert all(c.alert.annotations.get("resolved_reason") == "host forgotten" for c in changes)
    assert HOST not in state.hosts
    assert state.alerts == {}


def two_hosts(**opts: Any) -> EvalState:
    state = new_state(rule(), **opts)
    evaluator.set_host_labels(state, "web-2", {}, 0)
    evaluator.add_series(state, Series(202, "web-2", "system.cpu.utilization", {"state": "user"}), 0)
    return state


def test_one_host_silent_while_the_fleet_speaks_raises_its_no_data_alert() -> None:
    state = two_hosts(no_data_ms=30_000, forget_ms=0)
    evaluator.step(state, [batch(0, 10.0), batch(0, 10.0, sid=202, host="web-2")], 0)
    changes: list[Change] = []
    for t in range(5_000, 40_001, 5_000):  # web-2 goes on, web-1 is silent
        changes += evaluator.step(state, [batch(t, 10.0, sid=202, host="web-2")], t)[1]
    assert [(c.alert.labels["alertname"], c.alert.host_id) for c in changes] == [("SysmonNoData", HOST)]


def test_the_whole_fleet_falling_silent_is_one_fleet_alert_not_a_page_per_host() -> None:
    """An aggregator hung, Redis and the bus away: every host stops at once. That is the pipeline's
    silence, said once, and it clears when data flows again."""
    state = two_hosts(no_data_ms=30_000, forget_ms=60_000)
    evaluator.step(state, [batch(0, 10.0), batch(0, 10.0, sid=202, host="web-2")], 0)
    _, changes = evaluator.step(state, [], 29_000)
    assert changes == []
    _, changes = evaluator.step(state, [], 30_000)
    assert [c.alert.labels["alertname"] for c in changes] == ["SysmonFleetSilent"]
    assert transitions(changes) == ["inactive->firing"]
    assert [key for key, _ in changes[0].notify] == ["webhook:http://receiver:9000/hook"]
    assert "no data from any of 2 hosts" in changes[0].alert.annotations["summary"]
    # Hours of pipeline outage forget no host and page no host.
    _, changes = evaluator.step(state, [], 3_600_000)
    assert changes == []
    assert set(state.hosts) == {HOST, "web-2"}
    _, changes = evaluator.step(state, [batch(3_600_000, 10.0)], 3_600_000)
    assert [(c.alert.labels["alertname"], c.previous, c.state) for c in changes] == [
        ("SysmonFleetSilent", FIRING, RESOLVED)]
    # web-2 has not sent since the pipeline came back: the outage is not counted as its silence.
    _, changes = evaluator.step(state, [], 3_610_000)
    assert changes == []
    _, changes = evaluator.step(state, [batch(3_615_000, 10.0, sid=202, host="web-2")], 3_615_000)
    assert changes == []


def test_a_fleet_silent_alert_survives_a_restart() -> None:
    state = two_hosts(no_data_ms=30_000)
    evaluator.step(state, [batch(0, 10.0), batch(0, 10.0, sid=202, host="web-2")], 0)
    _, changes = evaluator.step(state, [], 30_000)
    fresh = two_hosts(no_data_ms=30_000)
    evaluator.restore(fresh, [changes[0].alert])
    assert fresh.fleet_silent is not None
    assert "" not in fresh.hosts
    _, changes = evaluator.step(fresh, [batch(40_000, 10.0)], 40_000)
    assert transitions(changes) == ["firing->resolved"]


# --- repeat ---------------------------------------------------------------------------------------


def test_a_long_firing_alert_is_repeated_at_its_interval() -> None:
    state = new_state(rule(repeatInterval="1m"))
    evaluator.step(state, [batch(0, 99.0)], 0)
    repeats = []
    for t in range(5, 200, 5):
        _, changes = evaluator.step(state, [batch(t * 1000, 99.0)], t * 1000)
        repeats += [c.at for c in changes if c.repeat]
    assert repeats == [60_000, 120_000, 180_000]


def test_no_repeat_when_the_interval_is_zero_or_there_are_no_actions() -> None:
    for r in (rule(repeatInterval="0s"), rule(actions=[])):
        state = new_state(r)
        changes: list[Change] = []
        for t in range(0, 6 * 3600, 600):
            changes += evaluator.step(state, [batch(t * 1000, 99.0)], t * 1000)[1]
        assert transitions(changes) == ["inactive->firing"]
        assert not any(c.repeat for c in changes)


# --- rules change ----------------------------------------------------------------------------------


def test_deleting_a_rule_resolves_its_alerts() -> None:
    state = new_state(rule(), rule("pend", **{"for": "1h"}))
    _, changes = evaluator.step(state, [batch(0, 99.0)], 0)
    assert sorted(transitions(changes)) == ["inactive->firing", "inactive->pending"]
    changes = evaluator.set_rules(state, {}, 5000)
    assert sorted(transitions(changes)) == ["firing->resolved", "pending->inactive"]
    resolved = next(c for c in changes if c.state == RESOLVED)
    assert resolved.notify  # the receivers hear that it is over
    assert resolved.alert.annotations["resolved_reason"] == "rule removed"
    assert state.alerts == {}


def test_changing_a_threshold_keeps_the_alert_changing_labels_replaces_it() -> None:
    state = new_state(rule())
    evaluator.step(state, [batch(0, 99.0)], 0)
    assert evaluator.set_rules(state, {"high": rule(condition={"op": ">", "threshold": 95})}, 1000) == []
    assert state_of(state) == FIRING
    changes = evaluator.set_rules(state, {"high": rule(labels={"team": "db"})}, 2000)
    assert transitions(changes) == ["firing->resolved"]
    # The next sample starts the alert under its new name.
    _, changes = evaluator.step(state, [batch(5000, 99.0)], 5000)
    assert transitions(changes) == ["inactive->firing"]
    assert changes[0].alert.labels["team"] == "db"


def test_the_same_snapshot_again_changes_nothing() -> None:
    state = new_state(rule())
    evaluator.step(state, [batch(0, 99.0)], 0)
    assert evaluator.set_rules(state, {"high": rule()}, 1000) == []
    assert state_of(state) == FIRING


# --- restarts, redelivery, replays ------------------------------------------------------------------


def restart(state: EvalState, *rules: evaluator.CompiledRule, **opts: Any) -> EvalState:
    """What the service does after a restart: a new state from the stored alerts."""
    stored = [evaluator._snapshot(a) for a in state.alerts.values()]
    fresh = EvalState(options=Options(**{"no_data_ms": 0, **opts}))
    evaluator.set_host_labels(fresh, HOST, {}, 0)
    evaluator.restore(fresh, stored)
    evaluator.set_rules(fresh, {r.name: r for r in rules}, 0)
    evaluator.add_series(fresh, Series(SID, HOST, "system.cpu.utilization", {"state": "user"}), 0)
    return fresh


def test_restart_in_the_middle_of_pending_keeps_active_at() -> None:
    r = rule(**{"for": "20s"})
    state = new_state(r)
    run_table(state, """
        0    95   pending   inactive->pending
        5    95   pending
    """)
    state = restart(state, r)
    run_table(state, """
        10   95   pending
        15   95   pending
        20   95   firing    pending->firing    # 20s after the first crossing, not after the restart
    """)


def test_restart_in_the_middle_of_firing_neither_refires_nor_forgets() -> None:
    r = rule()
    state = new_state(r)
    run_table(state, """
        0    95   firing    inactive->firing
    """)
    state = restart(state, r)
    changes = run_table(state, """
        5    95   firing
        10   50   inactive  firing->resolved
    """)
    assert changes[-1].notify  # resolved goes to the receivers its firing went to


def test_a_stored_alert_of_a_rule_deleted_while_down_resolves() -> None:
    state = new_state(rule())
    evaluator.step(state, [batch(0, 99.0)], 0)
    stored = [evaluator._snapshot(a) for a in state.alerts.values()]
    fresh = EvalState(options=Options(no_data_ms=0))
    evaluator.restore(fresh, stored)
    changes = evaluator.set_rules(fresh, {}, 1000)
    assert transitions(changes) == ["firing->resolved"]
    assert changes[0].notify


def test_the_same_samples_again_change_nothing() -> None:
    state = new_state(rule(**{"for": "5s"}))
    for t in (0, 5):
        evaluator.step(state, [batch(t * 1000, 95.0)], t * 1000)
    assert state_of(state) == FIRING
    # A redelivered message: the sample is known, the series evaluated past it.
    _, changes = evaluator.step(state, [batch(5000, 95.0)], 6000)
    assert changes == []
    _, changes = evaluator.step(state, [batch(0, 20.0)], 7000)  # an older sample never evaluates
    assert changes == []


def test_old_samples_fill_windows_but_never_alert() -> None:
    state = new_state(rule(aggregation="max", window="15m"), max_sample_age_ms=600_000)
    _, changes = evaluator.step(state, [batch(0, 99.0)], 700_000)  # a replay from 11+ minutes ago
    assert changes == []
    assert state.stale_samples == 1
    # ...but it is in the window: max over 15 min includes it.
    _, changes = evaluator.step(state, [batch(650_000, 1.0)], 700_000)
    assert transitions(changes) == ["inactive->firing"]


def test_a_catch_up_ignores_preloaded_samples_newer_than_the_step() -> None:
    state = new_state(rule(aggregation="max", window="10s"))
    # The hot tier already holds samples up to t=30 when a backlog from t=10 is replayed.
    evaluator.preload(state, SID, [10_000, 20_000, 30_000], [50.0, 50.0, 99.0])
    _, changes = evaluator.step(state, [batch(10_000, 50.0)], 10_000)
    assert changes == []  # the 99 at t=30 is not in (0, 10]
    _, changes = evaluator.step(state, [batch(30_000, 99.0)], 30_000)
    assert transitions(changes) == ["inactive->firing"]


def test_unknown_series_are_counted_not_fatal() -> None:
    state = new_state(rule())
    _, changes = evaluator.step(state, [batch(0, 99.0, sid=999)], 0)
    assert changes == []
    assert state.unknown_series == 1


# --- replicas sharing the fleet -------------------------------------------------------------------


def test_releasing_hosts_to_another_replica_ends_nothing() -> None:
    """A rebalance gives web-2 to another replica: this one forgets it without a transition (no
    resolved notification for an alert that still fires elsewhere), and keeps web-1 as it was."""
    state = two_hosts()
    _, changes = evaluator.step(state, [batch(0, 95.0), batch(0, 95.0, sid=202, host="web-2")], 0)
    assert transitions(changes) == ["inactive->firing", "inactive->firing"]
    assert evaluator.release_hosts(state, lambda h: h == HOST) == ["web-2"]
    assert set(state.hosts) == {HOST}
    assert 202 not in state.series
    assert [a.host_id for a in state.alerts.values()] == [HOST]
    _, changes = evaluator.step(state, [], 10_000_000)  # no timer resolves the released alert
    assert changes == []
    _, changes = evaluator.step(state, [batch(10_000, 10.0)], 10_000)
    assert transitions(changes) == ["firing->resolved"]


def test_only_the_replica_watching_the_fleet_raises_its_silence() -> None:
    state = two_hosts(no_data_ms=30_000, forget_ms=0)
    state.watch_fleet = False
    evaluator.step(state, [batch(0, 10.0), batch(0, 10.0, sid=202, host="web-2")], 0)
    _, changes = evaluator.step(state, [], 30_000)
    assert "SysmonFleetSilent" not in [c.alert.labels["alertname"] for c in changes]
