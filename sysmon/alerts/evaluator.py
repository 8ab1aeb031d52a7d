"""The alert evaluator: `step(state, batches, now) -> (state, changes)`, with no I/O and no clock.

One state machine per (rule, host, series), as in Prometheus's rules/alerting.go:

    inactive --breached--> pending --held `for`--> firing --recovered--> resolved (then inactive)
         \\______________ for: 0 ______________/          pending --recovered--> inactive

"breached" is the rule's condition on the value aggregated over the window (last, avg, min,
max); "recovered" is the value back past the resolve threshold (hysteresis; the threshold when
none is set), so a value hovering at the line neither flaps nor restarts `for`. Besides the
rules, each host has a no-data alert that fires when nothing has arrived from it for a while.

A host's silence is counted against the newest sample of the fleet, not the clock, when the
fleet has more than one host: when every host falls silent at once, what stopped is the pipeline
(an aggregator hung, Redis and the bus away), not the hosts, and one SysmonFleetSilent alert says
so instead of a no-data page for every host.

Time comes in as `now` (milliseconds): the service passes the aggregator's store time of each
batch, so that catching up a backlog after a restart replays exactly what live evaluation would
have done, and tests step through tables of timestamps. Windows are kept per series in the
host's own clock (sample times), so a host's clock offset never empties a window.

The state is changed in place and returned, rather than copied: it holds every window and alert
of the fleet (a million (rule, series) pairs in the benchmark), and a copy per step would cost
more than the evaluation. Nothing outside the state is touched, so the same (state, batches,
now) always gives the same changes.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sysmon.alerts.rules import (
    FLEET_SILENT_ALERTNAME,
    FLEET_SILENT_RULE,
    NO_DATA_ALERTNAME,
    NO_DATA_RULE,
    CompiledRule,
    fingerprint,
    label_name,
)
from sysmon.core import alert_template, numeric
from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series

INACTIVE, PENDING, FIRING, RESOLVED = "inactive", "pending", "firing", "resolved"

Actions = tuple[tuple[str, dict[str, Any]], ...]


@dataclass(slots=True)
class Alert:
    rule: str
    fingerprint: str
    host_id: str
    series_id: int  # 0 for a host's no-data alert
    state: str  # pending | firing
    labels: dict[str, str]
    annotations: dict[str, str]
    severity: str
    value: float | None
    active_at: int
    last_eval_at: int
    fired_at: int | None = None
    last_sent_at: int | None = None
    resolved_at: int | None = None
    # Where its firing notification went; its resolved (and repeats) go to the same receivers.
    actions: Actions = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule, self.fingerprint)


@dataclass(frozen=True, slots=True)
class Change:
    """A transition (or a repeat notification) to store, publish and notify."""

    alert: Alert  # a copy, as it was after the change
    previous: str
    state: str  # pending | firing | resolved | inactive
    at: int
    notify: Actions = ()
    repeat: bool = False


@dataclass(slots=True)
class HostState:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    labels_known: bool = False
    last_seen: int | None = None  # `now` of its newest batch
    series: dict[int, SeriesState] = field(default_factory=dict)
    no_data: Alert | None = None


@dataclass(slots=True, eq=False)
class SeriesState:
    id: int
    host: HostState
    name: str
    attributes: dict[str, str]
    attr_labels: dict[str, str]
    rules: tuple[CompiledRule, ...] = ()
    value_keys: tuple[tuple[str, int], ...] = ()
    horizon_ms: int = 0
    times: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    evaluated_through: int = -(2**62)
    alerts: dict[str, Alert] = field(default_factory=dict)  # by rule name


@dataclass(frozen=True)
class Options:
    no_data_ms: int = 120_000  # 0: no no-data alerts
    no_data_severity: str = "warning"
    no_data_repeat_ms: int = 4 * 3600_000
    forget_ms: int = 24 * 3600_000  # a host silent this long is forgotten (its alerts resolve)
    max_sample_age_ms: int = 600_000  # older samples (a collector's replay) fill windows, never alert
    tick_ms: int = 1000


@dataclass
class EvalState:
    options: Options = field(default_factory=Options)
    rules: dict[str, CompiledRule] = field(default_factory=dict)
    by_metric: dict[str, list[CompiledRule]] = field(default_factory=dict)
    hosts: dict[str, HostState] = field(default_factory=dict)
    series: dict[int, SeriesState] = field(default_factory=dict)
    alerts: dict[tuple[str, str], Alert] = field(default_factory=dict)
    # Restored alerts whose series has not been described yet: series id -> rule -> alert.
    orphans: dict[int, dict[str, Alert]] = field(default_factory=dict)
    # Alerts whose value changed since the service last wrote values down.
    dirty: dict[tuple[str, str], Alert] = field(default_factory=dict)
    next_tick: int = 0
    # Firing while no host of the fleet has sent anything for no_data_ms.
    fleet_silent: Alert | None = None
    # The `now` of the fleet's newest batch.
    newest_seen: int | None = None
    # Whether this replica raises the fleet-wide silence alert (one of the replicas sharing a fleet does).
    watch_fleet: bool = True
    # Counters the service turns into metrics.
    evaluations: int = 0
    samples: int = 0
    unknown_series: int = 0
    stale_samples: int = 0
    _bindings: dict[tuple[Any, ...], tuple[CompiledRule, ...]] = field(default_factory=dict)

    def firing(self) -> int:
        return sum(1 for a in self.alerts.values() if a.state == FIRING)

    def pending(self) -> int:
        return sum(1 for a in self.alerts.values() if a.state == PENDING)


# --- rules and series ---------------------------------------------------------------------------


def _binding(state: EvalState, s: SeriesState) -> tuple[CompiledRule, ...]:
    # Hosts alike share one tuple: a fleet of identical machines costs one binding per series kind.
    key = (s.name, tuple(sorted(s.attributes.items())), tuple(sorted(s.host.labels.items())))
    rules = state._bindings.get(key)
    if rules is None:
        rules = tuple(
            r for r in state.by_metric.get(s.name, ())
            if r.selects_series(s.name, s.attributes) and r.selects_host(s.host.labels)
        )
        state._bindings[key] = rules
    return rules


def _bind(state: EvalState, s: SeriesState, now: int, changes: list[Change]) -> None:
    rules = _binding(state, s)
    s.rules = rules
    s.value_keys = tuple(dict.fromkeys(r.value_key for r in rules))
    s.horizon_ms = max((r.window_ms for r in rules), default=0)
    if not rules:
        s.times.clear()
        s.values.clear()
    bound = {r.name: r for r in rules}
    for name, a in list(s.alerts.items()):
        r = bound.get(name)
        if r is None or _labels(r, s) != a.labels:
            # The rule is gone, no longer selects this series, or names the alert differently:
            # this alert ends; a new one starts on the next evaluation if the rule still applies.
            _end(state, s, a, now, changes, reason="rule changed" if r is not None else "rule removed")
        else:
            a.severity = r.severity


def add_series(state: EvalState, series: Series, now: int) -> list[Change]:
    """Describe a series (idempotent); binds it to the rules that select it."""
    if series.id in state.series:
        return []
    host = _host(state, series.host_id)
    s = SeriesState(series.id, host, series.name, dict(series.attributes),
                    {label_name(k): v for k, v in series.attributes.items()})
    state.series[series.id] = s
    host.series[series.id] = s
    orphans = state.orphans.pop(series.id, None)
    if orphans:
        s.alerts.update(orphans)
    changes: list[Change] = []
    _bind(state, s, now, changes)
    return changes


def _host(state: EvalState, host_id: str) -> HostState:
    h = state.hosts.get(host_id)
    if h is None:
        h = state.hosts[host_id] = HostState(host_id)
    return h


def set_host_labels(state: EvalState, host_id: str, labels: Mapping[str, str], now: int) -> list[Change]:
    h = _host(state, host_id)
    labels = dict(labels)
    h.labels_known = True
    if labels == h.labels:
        return []
    h.labels = labels
    changes: list[Change] = []
    for s in h.series.values():
        _bind(state, s, now, changes)
    return changes


def set_rules(state: EvalState, rules: Mapping[str, CompiledRule], now: int) -> list[Change]:
    """Take a new rule set; alerts of removed rules (and of rules that no longer select their
    series) end: firing ones resolve and say so to their receivers."""
    old = state.rules
    changed = {n for n in old.keys() | rules.keys() if n not in old or n not in rules or not old[n].same_as(rules[n])}
    changes: list[Change] = []
    if changed:
        state.rules = {n: old[n] if n not in changed else r for n, r in rules.items()}
        state.by_metric = {}
        for r in state.rules.values():
            state.by_metric.setdefault(r.metric, []).append(r)
        state._bindings.clear()
        for s in state.series.values():
            _bind(state, s, now, changes)
    # Restored alerts still waiting for their series: those of removed rules end now.
    for sid, by_rule in list(state.orphans.items()):
        for name, a in list(by_rule.items()):
            if name not in state.rules:
                del by_rule[name]
                _finish(state, a, now, changes, reason="rule removed")
        if not by_rule:
            del state.orphans[sid]
    return changes


def restore(state: EvalState, alerts: Iterable[Alert]) -> None:
    """Put back the pending and firing alerts stored before a restart."""
    for a in alerts:
        state.alerts[a.key] = a
        if a.rule == FLEET_SILENT_RULE:
            state.fleet_silent = a
            continue
        h = host_seen(state, a.host_id, a.last_eval_at)
        if a.series_id == 0 and a.rule == NO_DATA_RULE:
            h.no_data = a
            continue
        s = state.series.get(a.series_id)
        if s is not None:
            s.alerts[a.rule] = a
        else:
            state.orphans.setdefault(a.series_id, {})[a.rule] = a


def release_hosts(state: EvalState, keep: Callable[[str], bool]) -> list[str]:
    """Forget the hosts that another replica owns now, with their series, windows and alerts,
    without a transition: their new owner carries the alerts on from PostgreSQL. Returns them."""
    gone = [h for h in state.hosts if not keep(h)]
    for host in gone:
        h = state.hosts.pop(host)
        for sid in h.series:
            state.series.pop(sid, None)
            state.orphans.pop(sid, None)
    dropped = set(gone)
    for key in [k for k, a in state.alerts.items() if a.host_id in dropped]:
        del state.alerts[key]
        state.dirty.pop(key, None)
    for sid in [sid for sid, by_rule in state.orphans.items() if any(a.host_id in dropped for a in by_rule.values())]:
        del state.orphans[sid]
    return gone


def _after_fleet_gap(state: EvalState, now: int) -> None:
    """Data flows again after the whole fleet was silent for a while: that gap was the pipeline's,
    so it is taken off every host's silence. Otherwise the hosts that have not sent yet since (they
    will, within an interval) would count the outage as their own and page at once."""
    gap = now - state.newest_seen if state.newest_seen is not None else 0
    if state.options.no_data_ms and gap >= state.options.no_data_ms // 2:
        for h in state.hosts.values():
            if h.last_seen is not None:
                h.last_seen = min(now, h.last_seen + gap)
        state.newest_seen = now


def host_seen(state: EvalState, host_id: str, at: int) -> HostState:
    """A host known at start-up (the hot tier lists it, or a stored alert names it), counted as
    seen at `at` unless it was seen later."""
    h = _host(state, host_id)
    if h.last_seen is None or at > h.last_seen:
        h.last_seen = at
    if state.newest_seen is None or at > state.newest_seen:
        state.newest_seen = at
    return h


def preload(state: EvalState, series_id: int, times: Sequence[int], values: Sequence[float]) -> None:
    """Fill a window with samples from before a restart (or before a rule arrived), without
    evaluating them."""
    s = state.series.get(series_id)
    if s is None or not s.rules:
        return
    for t, v in zip(times, values, strict=True):
        _insert(s, t, v)


# --- the step -----------------------------------------------------------------------------------


def step(state: EvalState, batches: Iterable[NormalizedBatch], now: int) -> tuple[EvalState, list[Change]]:
    """Evaluate the samples of `batches` at `now`, then the timers (for, repeat, no-data) when
    a tick is due."""
    changes: list[Change] = []
    max_age = state.options.max_sample_age_ms
    series = state.series
    batches = list(batches)
    if batches:
        _after_fleet_gap(state, now)
    for b in batches:
        host = host_seen(state, b.host_id, now)
        if host.no_data is not None:
            _end_no_data(state, host, now, changes)
        if state.fleet_silent is not None:
            _end_fleet_silent(state, now, changes)
        for t, ids, values in zip(b.times_ms, b.frame_ids, b.frame_values, strict=True):
            fresh = now - t <= max_age
            if not fresh:
                state.stale_samples += len(ids)
            state.samples += len(ids)
            for sid, v in zip(ids, values, strict=True):
                s = series.get(sid)
                if s is None:
                    state.unknown_series += 1
                    continue
                if not s.rules:
                    continue
                _insert(s, t, v)
                if fresh and t > s.evaluated_through:
                    s.evaluated_through = t
                    _evaluate(state, s, t, now, changes)
    if now >= state.next_tick:
        state.next_tick = now + state.options.tick_ms
        _timers(state, now, changes)
    return state, changes


def _insert(s: SeriesState, t: int, v: float) -> None:
    times, values = s.times, s.values
    if not times or t > times[-1]:
        times.append(t)
        values.append(v)
    else:
        i = bisect.bisect_left(times, t)
        if i < len(times) and times[i] == t:
            return  # the same sample again (a redelivered event)
        times.insert(i, t)
        values.insert(i, v)
    # Keep what the longest window needs, measured from the newest sample.
    edge = times[-1] - s.horizon_ms
    if times[0] <= edge:
        k = bisect.bisect_right(times, edge)
        del times[:k]
        del values[:k]


def aggregate(times: Sequence[int], values: Sequence[float], t: int, window_ms: int, how: str) -> float | None:
    """The value of a window (t - window, t]; None when it holds no sample."""
    lo = t - window_ms
    i = len(times) - 1
    while i >= 0 and times[i] > t:  # samples newer than t (preloaded before a catch-up)
        i -= 1
    if i < 0 or times[i] <= lo:
        return None
    if how == "last":
        return values[i]
    j = i
    while j > 0 and times[j - 1] > lo:
        j -= 1
    part = values[j:i + 1]
    if how == "avg":
        return numeric.mean(part)
    if how == "max":
        return max(part)
    return min(part)


def _evaluate(state: EvalState, s: SeriesState, t: int, now: int, changes: list[Change]) -> None:
    times, values = s.times, s.values
    if len(s.value_keys) == 1:
        how, w = s.value_keys[0]
        v1 = values[-1] if how == "last" and times[-1] == t else aggregate(times, values, t, w, how)
        if v1 is None:
            return
        computed = None
    else:
        computed = {k: aggregate(times, values, t, k[1], k[0]) for k in s.value_keys}
        v1 = 0.0
    alerts = s.alerts
    state.evaluations += len(s.rules)
    for r in s.rules:
        if computed is None:
            v = v1
        else:
            v = computed[r.value_key]
            if v is None:
                continue
        a = alerts.get(r.name) if alerts else None
        if a is None:
            if r.op(v, r.threshold):
                _start(state, s, r, v, now, changes)
            continue
        a.value = v
        a.last_eval_at = now
        state.dirty[a.key] = a
        if not r.op(v, r.resolve_line):
            _end(state, s, a, now, changes)
        elif a.state == PENDING and now - a.active_at >= r.for_ms:
            _fire(state, a, r, now, changes)


# --- transitions -------------------------------------------------------------------------------


def _labels(r: CompiledRule, s: SeriesState) -> dict[str, str]:
    labels = {label_name(k): v for k, v in s.host.labels.items()}
    labels.update(s.attr_labels)
    labels.update(r.labels)
    labels["alertname"] = r.name
    labels["host"] = s.host.id
    labels.setdefault("severity", r.severity)
    return labels


def _context(r: CompiledRule, s: SeriesState, a: Alert, state: str) -> dict[str, Any]:
    return {
        "host": s.host.id, "value": a.value, "labels": a.labels, "attributes": s.attributes,
        "host_labels": s.host.labels, "rule": r.name, "metric": r.metric, "aggregation": r.aggregation,
        "window": r.window_ms / 1000, "op": r.spec.condition.op, "threshold": r.threshold,
        "resolve_threshold": r.resolve_line, "severity": r.severity, "state": state,
        "for_duration": r.for_ms / 1000,
    }


def _annotate(r: CompiledRule, s: SeriesState, a: Alert, state: str) -> None:
    ctx = _context(r, s, a, state)
    a.annotations = {k: alert_template.render(src, ctx) for k, src in r.annotations.items()}


def _snapshot(a: Alert) -> Alert:
    c = copy.copy(a)
    c.labels = dict(a.labels)
    c.annotations = dict(a.annotations)
    return c


def _start(state: EvalState, s: SeriesState, r: CompiledRule, v: float, now: int, changes: list[Change]) -> None:
    labels = _labels(r, s)
    a = Alert(rule=r.name, fingerprint=fingerprint(labels), host_id=s.host.id, series_id=s.id, state=PENDING,
              labels=labels, annotations={}, severity=labels["severity"], value=v, active_at=now,
              last_eval_at=now)
    s.alerts[r.name] = a
    state.alerts[a.key] = a
    if r.for_ms == 0:
        _fire(state, a, r, now, changes, previous=INACTIVE)
        return
    _annotate(r, s, a, PENDING)
    changes.append(Change(_snapshot(a), INACTIVE, PENDING, now))


def _fire(state: EvalState, a: Alert, r: CompiledRule, now: int, changes: list[Change],
          previous: str = PENDING) -> None:
    a.state = FIRING
    a.fired_at = now
    a.actions = r.actions
    if r.actions:
        a.last_sent_at = now
    s = state.series.get(a.series_id)
    if s is not None:
        _annotate(r, s, a, FIRING)
    changes.append(Change(_snapshot(a), previous, FIRING, now, notify=a.actions))


def _end(state: EvalState, s: SeriesState, a: Alert, now: int, changes: list[Change], reason: str = "") -> None:
    s.alerts.pop(a.rule, None)
    r = state.rules.get(a.rule)
    if r is not None and reason == "":
        _annotate(r, s, a, RESOLVED if a.state == FIRING else INACTIVE)
    _finish(state, a, now, changes, reason)


def _finish(state: EvalState, a: Alert, now: int, changes: list[Change], reason: str = "") -> None:
    """The alert leaves: resolved if it fired (and its receivers hear so), else inactive."""
    state.alerts.pop(a.key, None)
    state.dirty.pop(a.key, None)
    previous = a.state
    if reason:
        a.annotations = {**a.annotations, "resolved_reason": reason}
    if previous == FIRING:
        a.resolved_at = now
        changes.append(Change(_snapshot(a), FIRING, RESOLVED, now, notify=a.actions))
    else:
        changes.append(Change(_snapshot(a), PENDING, INACTIVE, now))


# --- timers: for, repeat, no-data ----------------------------------------------------------------


def _timers(state: EvalState, now: int, changes: list[Change]) -> None:
    opts = state.options
    stale = opts.no_data_ms or opts.max_sample_age_ms
    for a in list(state.alerts.values()):
        if a.state == PENDING:
            r = state.rules.get(a.rule)
            # `for` runs out between samples: fire on the value last seen, if it is recent.
            if r is not None and now - a.active_at >= r.for_ms and now - a.last_eval_at <= stale:
                _fire(state, a, r, now, changes)
        elif a.actions and a.last_sent_at is not None:
            if a.rule in (NO_DATA_RULE, FLEET_SILENT_RULE):
                every = opts.no_data_repeat_ms
            else:
                r = state.rules.get(a.rule)
                every = r.repeat_ms if r is not None else 0
            if every and now - a.last_sent_at >= every:
                a.last_sent_at = now
                changes.append(Change(_snapshot(a), FIRING, FIRING, now, notify=a.actions, repeat=True))
    if opts.no_data_ms:
        seen = [(h, h.last_seen) for h in state.hosts.values() if h.last_seen is not None]
        newest = max((t for _, t in seen), default=now)
        # With one host there is no telling the host from the pipeline: its silence is the clock's.
        reference = newest if len(seen) > 1 else now
        for h, last in seen:
            silent = reference - last
            if opts.forget_ms and silent >= opts.forget_ms:
                _forget(state, h, now, changes)
            elif silent >= opts.no_data_ms and h.no_data is None:
                _start_no_data(state, h, now, changes)
        if len(seen) > 1 and now - newest >= opts.no_data_ms and state.fleet_silent is None and state.watch_fleet:
            _start_fleet_silent(state, now, newest, changes)


def _no_data_actions(state: EvalState, h: HostState) -> Actions:
    """A silent host is news to everyone who watches it: the receivers of every rule selecting it."""
    out: dict[str, dict[str, Any]] = {}
    for r in state.rules.values():
        if r.selects_host(h.labels):
            for key, action in r.actions:
                out.setdefault(key, action)
    return tuple(out.items())


def _start_no_data(state: EvalState, h: HostState, now: int, changes: list[Change]) -> None:
    labels = {label_name(k): v for k, v in h.labels.items()}
    labels.update({"alertname": NO_DATA_ALERTNAME, "host": h.id, "severity": state.options.no_data_severity})
    silent_s = (now - h.last_seen) / 1000 if h.last_seen is not None else 0.0
    a = Alert(rule=NO_DATA_RULE, fingerprint=fingerprint(labels), host_id=h.id, series_id=0, state=FIRING,
              labels=labels, severity=state.options.no_data_severity, value=silent_s,
              annotations={"summary": f"{h.id}: no data for {alert_template.humanize_duration(silent_s)}"},
              active_at=h.last_seen or now, last_eval_at=now, fired_at=now)
    a.actions = _no_data_actions(state, h)
    if a.actions:
        a.last_sent_at = now
    h.no_data = a
    state.alerts[a.key] = a
    changes.append(Change(_snapshot(a), INACTIVE, FIRING, now, notify=a.actions))


def _start_fleet_silent(state: EvalState, now: int, newest: int, changes: list[Change]) -> None:
    labels = {"alertname": FLEET_SILENT_ALERTNAME, "severity": state.options.no_data_severity}
    silent_s = (now - newest) / 1000
    a = Alert(rule=FLEET_SILENT_RULE, fingerprint=fingerprint(labels), host_id="", series_id=0, state=FIRING,
              labels=labels, severity=state.options.no_data_severity, value=silent_s,
              annotations={"summary": f"no data from any of {len(state.hosts)} hosts for "
                                      f"{alert_template.humanize_duration(silent_s)}: the aggregator, Redis or "
                                      "the bus is not passing samples on"},
              active_at=newest, last_eval_at=now, fired_at=now)
    # Everyone watching any host hears of it.
    out: dict[str, dict[str, Any]] = {}
    for r in state.rules.values():
        for key, action in r.actions:
            out.setdefault(key, action)
    a.actions = tuple(out.items())
    if a.actions:
        a.last_sent_at = now
    state.fleet_silent = a
    state.alerts[a.key] = a
    changes.append(Change(_snapshot(a), INACTIVE, FIRING, now, notify=a.actions))


def _end_fleet_silent(state: EvalState, now: int, changes: list[Change]) -> None:
    a = state.fleet_silent
    assert a is not None
    state.fleet_silent = None
    a.annotations = {**a.annotations, "summary": "data again"}
    _finish(state, a, now, changes)


def _end_no_data(state: EvalState, h: HostState, now: int, changes: list[Change], reason: str = "") -> None:
    a = h.no_data
    assert a is not None
    h.no_data = None
    a.annotations = {**a.annotations, "summary": f"{h.id}: data again"}
    _finish(state, a, now, changes, reason)


def _forget(state: EvalState, h: HostState, now: int, changes: list[Change]) -> None:
    """A host silent for `forget_ms` is gone (scaled down, replaced): its alerts resolve and
    its windows go, so nothing fires about it forever."""
    for s in list(h.series.values()):
        for a in list(s.alerts.values()):
            _end(state, s, a, now, changes, reason="host forgotten")
        state.series.pop(s.id, None)
        state.orphans.pop(s.id, None)
    for a in [a for a in state.alerts.values() if a.host_id == h.id and a.rule != NO_DATA_RULE]:
        _finish(state, a, now, changes, reason="host forgotten")
    if h.no_data is not None:
        _end_no_data(state, h, now, changes, reason="host forgotten")
    del state.hosts[h.id]
