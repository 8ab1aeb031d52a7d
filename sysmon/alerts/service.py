"""The alerts service: samples from the bus, rules from the aggregator, state in PostgreSQL.

    bus SAMPLES (consumer group) ─► evaluate (evaluator.step) ─► store transitions, history and
    outbox in one transaction ─► ack the bus messages ─► publish AlertEvents ─► deliver

Samples are acknowledged only after what they caused is stored, so a restart (or a crash)
misses nothing: the consumer group hands this consumer its unacknowledged messages again, and
evaluating a sample twice changes nothing (windows ignore a sample they have, and a series is
evaluated only on samples newer than the last it evaluated). Every part runs as a task of one
TaskGroup under `run(stop)`; each loop survives its own failures (PostgreSQL, Redis or the
aggregator away) and retries with backoff, so one outage never ends the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
import redis.exceptions
from google.protobuf.message import DecodeError

from sysmon.alerts import backfill, evaluator, store, telemetry
from sysmon.alerts.evaluator import FIRING, INACTIVE, PENDING, RESOLVED, Alert, Change, EvalState, Options
from sysmon.alerts.http import HttpEndpoint
from sysmon.alerts.notifiers import AlertmanagerNotifier, LogNotifier, Notifier, WebhookNotifier
from sysmon.alerts.outbox import Delivery, RetryPolicy
from sysmon.alerts.payloads import alert_json, generator_url
from sysmon.alerts.rule_feed import RuleFeed
from sysmon.alerts.rules import compile_rules
from sysmon.alerts.store import DB_ERRORS
from sysmon.core import bus as busmod
from sysmon.core.alert_rule import AlertRuleSpec
from sysmon.core.backoff import Backoff, wait_any, wait_or_stop
from sysmon.core.batch import NormalizedBatch, samples_events
from sysmon.core.hot import HotTier
from sysmon.core.metrics import Series
from sysmon.core.settings import AlertsSettings
from sysmon.core.storage import schema
from sysmon.core.telemetry import ComponentMetrics
from sysmon.pb.v1 import events_pb2

log = logging.getLogger(__name__)

MAX_BATCH = 500  # bus messages per evaluation step
QUEUE = 5000  # messages read ahead of evaluation
# Behind the bus by more than this: a backlog is being replayed; timers follow its clock.
CATCHUP_MS = 5000
VALUE_FLUSH_S = 15.0
GAUGES_EVERY_S = 5.0
PRUNE_EVERY_S = 3600.0
DELIVERED_RETENTION_DAYS = 7.0
# Series unknown to us (announced before we listened): ask the hot tier again at most this often per
# host. Redis restarted empty is described again within a collector interval (sysmon.core.hot).
DESCRIBE_RETRY_MS = 5_000
HEALTH_EVERY_S = 2.0

REDIS_ERRORS = (OSError, TimeoutError, redis.exceptions.RedisError)

STATES = {
    INACTIVE: events_pb2.ALERT_STATE_INACTIVE,
    PENDING: events_pb2.ALERT_STATE_PENDING,
    FIRING: events_pb2.ALERT_STATE_FIRING,
    RESOLVED: events_pb2.ALERT_STATE_RESOLVED,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def options(settings: AlertsSettings) -> Options:
    def ms(td: timedelta) -> int:
        return round(td.total_seconds() * 1000)

    return Options(
        no_data_ms=ms(settings.no_data_after), no_data_severity=settings.no_data_severity,
        forget_ms=ms(settings.forget_after), max_sample_age_ms=ms(settings.max_sample_age), tick_ms=ms(settings.tick),
    )


def alert_event(c: Change) -> events_pb2.AlertEvent:
    a = c.alert
    return events_pb2.AlertEvent(
        rule=a.rule, fingerprint=a.fingerprint, host_id=a.host_id, state=STATES[c.state], previous=STATES[c.previous],
        severity=a.severity, labels=a.labels, annotations=a.annotations,
        value=a.value if a.value is not None else 0.0, active_at_unix_ms=a.active_at, time_unix_ms=c.at,
    )


# The evaluator's counters and the metrics that follow them.
COUNTED = (
    ("evaluations", telemetry.EVALUATIONS),
    ("samples", telemetry.SAMPLES),
    ("stale_samples", telemetry.STALE_SAMPLES),
)


class AlertsService:
    def __init__(self, settings: AlertsSettings, *, postgres_url: str, redis_url: str, process_metrics: bool = True):
        self.settings = settings
        self.postgres_url = postgres_url
        self.redis_url = redis_url
        self.state = EvalState(options=options(settings))
        self.pool: asyncpg.Pool | None = None
        self.redis: aioredis.Redis | None = None
        self.bus: busmod.Bus | None = None
        self.hot: HotTier | None = None
        self.http: httpx.AsyncClient | None = None
        self.delivery: Delivery | None = None
        self.am: AlertmanagerNotifier | None = None
        self.feed = RuleFeed(settings, self._on_rules)
        # /metrics: the alerts service's families, and the process's unless another component serves them.
        own = ComponentMetrics(["alerts"], process=process_metrics)
        self.endpoint = HttpEndpoint(settings.listen, self.readiness, own) if settings.listen else None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[busmod.Message] = asyncio.Queue(maxsize=QUEUE)
        self._work = asyncio.Event()
        self._rules_update: tuple[int, dict[str, AlertRuleSpec]] | None = None
        self._latest_rules: tuple[int, dict[str, AlertRuleSpec]] = (0, {})
        self._first_rules = asyncio.Event()
        self._label_updates: dict[str, dict[str, str]] = {}
        self._labels_known: set[str] = set()
        self._described_at: dict[str, int] = {}
        self._unsaved: list[Change] = []
        self._last_stored = 0
        self._seen = dict.fromkeys((name for name, _ in COUNTED), 0)
        self._db_ok = False
        self._subscribed = False
        # Replicas share the fleet by host: the partitions of SAMPLES this one owns (Kafka's, or the
        # Redis shards whose leases it holds; None: every host, on the one Redis stream, whose group
        # has one member). Changed by the bus reader on a rebalance; taken up by the evaluation task
        # between steps.
        self._owned: frozenset[int] | None = None
        self._rebalancing = False
        self._reassigned = False
        self._step = asyncio.Lock()

    # --- which hosts are ours ------------------------------------------------------------------------

    def owns(self, host: str) -> bool:
        if self._owned is None or self.bus is None:
            return True
        return self.bus.partition_of(busmod.SAMPLES, host) in self._owned

    def _watches_fleet(self) -> bool:
        # The fleet-wide silence alert is one replica's: the owner of the first partition.
        return self._owned is None or 0 in self._owned

    async def _on_revoke(self) -> None:
        # The step in hand finishes: what it stored is acknowledged while the hosts are still ours.
        async with self._step:
            self._rebalancing = True

    async def _on_assign(self, owned: frozenset[int], partitions: int) -> None:
        self._owned = owned
        self._rebalancing = False
        self._reassigned = True
        self._work.set()
        telemetry.PARTITIONS.set(len(owned))

    async def _take_ownership(self, stop: asyncio.Event) -> None:
        """After a rebalance: what is queued for hosts no longer ours goes (their owner reads it
        again from the last commit), and the state of the hosts ours now comes back from
        PostgreSQL and the hot tier, as after a restart."""
        kept: list[busmod.Message] = []
        while not self._queue.empty():
            m = self._queue.get_nowait()
            if self._owned is None or m.partition in self._owned:
                kept.append(m)
        for m in kept:
            self._queue.put_nowait(m)
        await self._restore(stop)

    # --- lifecycle --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def readiness(self) -> tuple[bool, list[str]]:
        missing = []
        if not self._db_ok:
            missing.append("postgresql")
        if not self._first_rules.is_set():
            missing.append("rules (ConfigService.Watch)")
        if not self._subscribed:
            missing.append("bus")
        if not self.ready.is_set():
            missing.append("state restored")
        ok = not missing
        telemetry.UP.set(1 if ok else 0)
        return ok, missing

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` (or stop()) is set; then finish the step in hand and return."""
        relay = asyncio.ensure_future(self._relay(stop)) if stop is not None else None
        stop = self._stop
        try:
            async with asyncio.TaskGroup() as tg:
                if self.endpoint is not None:
                    tg.create_task(self.endpoint.run(stop), name="alerts http")
                tg.create_task(self._watch_health(stop), name="alerts health")
                tg.create_task(self._main(stop, tg), name="alerts main")
        finally:
            if relay is not None:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
            await self._close()

    async def _watch_health(self, stop: asyncio.Event) -> None:
        """Ask PostgreSQL now and then, so that /readyz and sysmon_alerts_ready say the truth
        whether or not anyone asks, and whether or not there is anything to store."""
        while not await wait_or_stop(stop, HEALTH_EVERY_S):
            if self.pool is not None:
                try:
                    await self.pool.fetchval("SELECT 1", timeout=HEALTH_EVERY_S)
                    self._db_ok = True
                except DB_ERRORS as e:
                    if self._db_ok:
                        log.warning("PostgreSQL unavailable: %s", e)
                    self._db_ok = False
            self.readiness()

    async def _relay(self, outer: asyncio.Event) -> None:
        await outer.wait()
        self._stop.set()

    async def _main(self, stop: asyncio.Event, tg: asyncio.TaskGroup) -> None:
        if not await self._connect(stop):
            return
        assert self.pool is not None
        assert self.redis is not None
        feed = tg.create_task(self._supervise("rule feed", self.feed.run, stop), name="alerts rule feed")
        await wait_any(self._first_rules, stop)
        if stop.is_set():
            feed.cancel()
            return
        await self._restore(stop)
        if stop.is_set():
            feed.cancel()
            return
        self.http = httpx.AsyncClient(follow_redirects=False, limits=httpx.Limits(max_connections=100))
        self.am = AlertmanagerNotifier(self.http, self.settings.alertmanager_resend)
        notifiers: dict[str, Notifier] = {
            "webhook": WebhookNotifier(self.http, self.settings.external_url),
            "alertmanager": self.am,
            "log": LogNotifier(),
        }
        self.delivery = Delivery(self.pool, notifiers, RetryPolicy(
            initial=self.settings.retry_initial.total_seconds(), maximum=self.settings.retry_max.total_seconds(),
            give_up_after=self.settings.give_up_after,
        ))
        readers = [
            tg.create_task(self._supervise("bus reader", self._read_samples, stop), name="alerts bus reader"),
            tg.create_task(self._supervise("host events", self._read_hosts, stop), name="alerts host events"),
            feed,
        ]
        tg.create_task(self._supervise("evaluation", self._evaluate_loop, stop), name="alerts evaluation")
        tg.create_task(self._supervise("delivery", self.delivery.run, stop), name="alerts delivery")
        tg.create_task(self._supervise("alertmanager resend", self._resend_loop, stop), name="alerts am resend")
        tg.create_task(self._supervise("housekeeping", self._housekeeping, stop), name="alerts housekeeping")
        self.ready.set()
        self.readiness()
        log.info("alerts service ready: %d rules, %d alerts restored, consuming %s as %s/%s",
                 len(self.state.rules), len(self.state.alerts), busmod.SAMPLES, self.settings.consumer_group,
                 self.settings.consumer)
        await stop.wait()
        # Readers block on the network and hold nothing: cancel them. The rest finish their step.
        for t in readers:
            t.cancel()

    async def _supervise(self, name: str, fn: Callable[[asyncio.Event], Awaitable[None]],
                         stop: asyncio.Event) -> None:
        backoff = Backoff(initial=0.5, maximum=30.0)
        while not stop.is_set():
            try:
                await fn(stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = backoff.next_delay()
                log.exception("%s failed; restarting it in %.1fs", name, delay)
                await wait_or_stop(stop, delay)

    async def _connect(self, stop: asyncio.Event) -> bool:
        backoff = Backoff(initial=0.5, maximum=10.0)
        while not stop.is_set():
            try:
                if self.pool is None:
                    self.pool = await schema.create_pool(self.postgres_url, min_size=1, max_size=6, timeout=10,
                                                         command_timeout=60)
                if await store.schema_ready(self.pool):
                    self._db_ok = True
                    break
                reason = "the alert tables are not migrated yet (the aggregator migrates)"
            except DB_ERRORS as e:
                reason = str(e)
            delay = backoff.next_delay()
            log.warning("PostgreSQL not ready for alerts (%s); retrying in %.1fs", reason, delay)
            await wait_or_stop(stop, delay)
        backoff.reset()
        while not stop.is_set():
            try:
                self.redis = await busmod.connect_redis(self.redis_url, socket_timeout=10, socket_connect_timeout=5)
                break
            except REDIS_ERRORS as e:
                delay = backoff.next_delay()
                log.warning("Redis not reachable (%s); retrying in %.1fs", e, delay)
                await wait_or_stop(stop, delay)
        if stop.is_set():
            return False
        assert self.redis is not None
        self.bus = busmod.from_settings(self.settings, self.redis, client_id=f"sysmon-alerts-{self.settings.consumer}")
        self.hot = HotTier(self.redis)
        return True

    async def _close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
        telemetry.UP.set(0)

    # --- start-up: rules, stored alerts, windows ----------------------------------------------------

    def _on_rules(self, version: int, rules: dict[str, AlertRuleSpec]) -> None:
        # Taken up by the evaluation task, which alone changes the state.
        self._rules_update = self._latest_rules = (version, rules)
        self._first_rules.set()
        self._work.set()

    async def _restore(self, stop: asyncio.Event) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        while not stop.is_set():
            try:
                await self._restore_once()
                return
            except DB_ERRORS as e:
                delay = backoff.next_delay()
                log.warning("restoring alert state failed (%s); retrying in %.1fs", e, delay)
                await wait_or_stop(stop, delay)

    async def _restore_once(self) -> None:
        assert self.pool is not None
        assert self.hot is not None
        self.state = state = EvalState(options=options(self.settings))
        self._seen = dict.fromkeys(self._seen, 0)  # the new state counts from 0 (a rebalance restores again)
        state.watch_fleet = self._watches_fleet()
        now = now_ms()
        for r in await self.pool.fetch("SELECT host_id, labels FROM hosts"):
            evaluator.set_host_labels(state, r["host_id"], r["labels"] or {}, now)
            self._labels_known.add(r["host_id"])
        restored = [a for a in await store.load_alerts(self.pool)
                    if (self.owns(a.host_id) if a.host_id else state.watch_fleet)]
        evaluator.restore(state, restored)
        self._rules_update = self._latest_rules
        changes = self._apply_rules(now)
        seen = await backfill.last_seen(self.hot)
        forget = state.options.forget_ms
        hosts = [h for h, t in seen.items() if (not forget or now - t < forget) and self.owns(h)]
        for h in hosts:
            # Counted from now: a host gets no_data_after to report after we (and, as often, the
            # whole platform) restarted, so a restart raises no no-data alerts for the gap.
            evaluator.host_seen(state, h, now)
        if hosts:
            try:
                loaded, more = await backfill.from_hot_tier(self.hot, state, hosts, now)
            except REDIS_ERRORS as e:
                log.warning("windows from PostgreSQL's raw tier: Redis failed: %s", e)
                loaded, more = await backfill.from_postgres(self.pool, state, now)
        else:
            # A first start, or Redis came back empty: the raw tier has whatever there is.
            loaded, more = await backfill.from_postgres(self.pool, state, now)
            if loaded:
                log.warning("windows from PostgreSQL's raw tier: the hot tier holds no host, though "
                            "PostgreSQL has recent samples (Redis lost its data?)")
        changes += more
        if self._owned is not None:
            evaluator.release_hosts(state, self.owns)
            changes = [c for c in changes if not c.alert.host_id or self.owns(c.alert.host_id)]
        self._unsaved.extend(changes)
        log.info("restored %d alerts; windows of %d series from %d samples%s", len(restored),
                 sum(1 for s in state.series.values() if s.rules), loaded,
                 f"; {len(state.hosts)} hosts on partitions {sorted(self._owned)}" if self._owned is not None else "")

    def _apply_rules(self, now: int) -> list[Change]:
        if self._rules_update is None:
            return []
        version, specs = self._rules_update
        self._rules_update = None
        changes = evaluator.set_rules(self.state, compile_rules(specs), now)
        telemetry.RULES.set(len(self.state.rules))
        telemetry.CONFIG_VERSION.set(version)
        log.info("rules at version %d: %d in effect", version, len(self.state.rules))
        return changes

    # --- the bus ------------------------------------------------------------------------------------

    async def _read_samples(self, stop: asyncio.Event) -> None:
        assert self.bus is not None
        s = self.settings
        backoff = Backoff(initial=0.5, maximum=10.0)
        while not stop.is_set():
            try:
                self._subscribed = True
                async for m in self.bus.subscribe(busmod.SAMPLES, group=s.consumer_group, consumer=s.consumer,
                                                  batch=MAX_BATCH, on_assign=self._on_assign,
                                                  on_revoke=self._on_revoke):
                    await self._queue.put(m)
                    self._work.set()
                    backoff.reset()
            except REDIS_ERRORS as e:
                self._subscribed = False
                delay = backoff.next_delay()
                log.warning("bus unavailable (%s); reading again in %.1fs", e, delay)
                await wait_or_stop(stop, delay)

    async def _read_hosts(self, stop: asyncio.Event) -> None:
        assert self.redis is not None
        assert self.bus is not None
        # Short blocking reads: on Python 3.11 a cancelled read may finish its block first
        # (see bus._honour_cancellation), and a stop should not wait a whole second for it.
        bus = busmod.RedisBus(self.redis, block_ms=200) if isinstance(self.bus, busmod.RedisBus) else self.bus
        backoff = Backoff(initial=0.5, maximum=10.0)
        while not stop.is_set():
            try:
                async for m in bus.subscribe(busmod.HOSTS):
                    try:
                        ev = events_pb2.HostEvent.FromString(m.payload)
                    except DecodeError:
                        continue
                    if self.owns(ev.host_id):
                        self._label_updates[ev.host_id] = dict(ev.labels)
                    self._work.set()
            except REDIS_ERRORS as e:
                delay = backoff.next_delay()
                log.debug("host events unavailable (%s); again in %.1fs", e, delay)
                await wait_or_stop(stop, delay)

    # --- evaluation -----------------------------------------------------------------------------------

    def _clock(self) -> int:
        """Wall time, unless a backlog is being replayed: then the store time of the newest
        replayed batch, so `for`, repeats and no-data see the time as it was."""
        wall = now_ms()
        if self._last_stored and wall - self._last_stored > CATCHUP_MS and not self._queue.empty():
            return self._last_stored
        return wall

    async def _evaluate_loop(self, stop: asyncio.Event) -> None:
        tick = self.settings.tick.total_seconds()
        while not stop.is_set():
            idle = (self._queue.empty() and not self._unsaved and self._rules_update is None
                    and not self._label_updates and not self._reassigned)
            if idle or self._rebalancing:
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), timeout=tick)
            if self._rebalancing:
                continue  # nothing is evaluated while the hosts may be changing hands
            async with self._step:
                await self._one_step(stop)

    async def _one_step(self, stop: asyncio.Event) -> None:
        if self._reassigned:
            self._reassigned = False
            await self._take_ownership(stop)
        msgs: list[busmod.Message] = []
        while len(msgs) < MAX_BATCH and not self._queue.empty():
            msgs.append(self._queue.get_nowait())
        t0 = time.perf_counter()
        changes = self._unsaved
        self._unsaved = []
        changes += await self._updates()
        for m in msgs:
            changes += await self._process(m)
        _, more = evaluator.step(self.state, (), self._clock())
        changes += more
        await self._commit(changes, msgs, stop)
        if msgs:
            telemetry.STEP_SECONDS.observe(time.perf_counter() - t0)
        self._count()

    async def _updates(self) -> list[Change]:
        """Rules and host labels that changed since the last step."""
        now = now_ms()
        changes: list[Change] = []
        if self._rules_update is not None:
            unbound = {sid for sid, s in self.state.series.items() if not s.rules}
            changes += self._apply_rules(now)
            newly = {sid for sid in unbound if self.state.series[sid].rules}
            if newly:
                changes += await self._backfill({self.state.series[sid].host.id for sid in newly}, newly, now)
        if self._label_updates:
            updates, self._label_updates = self._label_updates, {}
            for host, labels in updates.items():
                self._labels_known.add(host)
                changes += evaluator.set_host_labels(self.state, host, labels, now)
        return changes

    async def _backfill(self, hosts: Iterable[str], only: set[int], now: int) -> list[Change]:
        """Windows for series a new rule selects, from the last minutes the hot tier holds."""
        assert self.hot is not None
        try:
            loaded, changes = await backfill.from_hot_tier(self.hot, self.state, hosts, now, only)
            log.info("windows of %d newly selected series from %d samples", len(only), loaded)
            return changes
        except REDIS_ERRORS as e:
            log.warning("windows for new rules start empty (hot tier unavailable: %s)", e)
            return []

    async def _process(self, m: busmod.Message) -> list[Change]:
        try:
            events = samples_events(m.payload)
        except DecodeError as e:
            telemetry.EVENTS.labels("undecodable").inc()
            log.warning("bus message %s is not a SamplesEvents (%s); skipped", m.id, e)
            return []
        changes: list[Change] = []
        for ev in events:
            changes += await self._process_event(ev)
        return changes

    async def _process_event(self, ev: events_pb2.SamplesEvent) -> list[Change]:
        state = self.state
        wall = now_ms()
        now = min(ev.stored_unix_ms, wall) if ev.stored_unix_ms > 0 else wall
        host = ev.host_id
        changes: list[Change] = []
        if not self.owns(host):
            return changes  # read before a rebalance moved it: its owner has it too
        if host not in self._labels_known:
            changes += await self._learn_host(host, now)
        for s in ev.series:
            if s.id not in state.series:
                changes += evaluator.add_series(
                    state, Series(s.id, host, s.name, dict(s.attributes), s.unit, s.kind), now)
        series = state.series
        if any(i not in series for f in ev.frames for i in f.series_ids):
            changes += await self._describe(host, now)
        batch = NormalizedBatch(host, ev.session_id, ev.seq, [], [f.time_unix_ms for f in ev.frames],
                                [f.series_ids for f in ev.frames], [f.values for f in ev.frames])
        _, more = evaluator.step(state, (batch,), now)
        changes += more
        self._last_stored = max(self._last_stored, now)
        telemetry.EVENTS.labels("evaluated").inc()
        return changes

    async def _learn_host(self, host: str, now: int) -> list[Change]:
        """A host first seen on the bus: its labels (for rules' host selectors) from PostgreSQL."""
        assert self.pool is not None
        try:
            labels = await self.pool.fetchval("SELECT labels FROM hosts WHERE host_id = $1", host)
        except DB_ERRORS as e:
            log.warning("labels of host %s unknown for now (%s)", host, e)
            return []
        self._labels_known.add(host)
        return evaluator.set_host_labels(self.state, host, labels or {}, now)

    async def _describe(self, host: str, now: int) -> list[Change]:
        """Series announced before we listened: the hot tier describes every series it holds."""
        assert self.hot is not None
        if now - self._described_at.get(host, -DESCRIBE_RETRY_MS) < DESCRIBE_RETRY_MS:
            return []
        self._described_at[host] = now
        try:
            return await backfill.describe_host(self.hot, self.state, host, now)
        except REDIS_ERRORS as e:
            log.warning("series of %s not described yet (%s)", host, e)
            return []

    async def _commit(self, changes: list[Change], msgs: list[busmod.Message], stop: asyncio.Event) -> None:
        """Store, then acknowledge, then tell: the order that makes a restart lose nothing."""
        assert self.pool is not None
        assert self.bus is not None
        if self._owned is not None:
            changes = self._still_ours(changes)
        if changes:
            backoff = Backoff(initial=0.2, maximum=10.0)
            while True:
                try:
                    async with self.pool.acquire() as conn:
                        saved = await store.save(conn, changes, external_url=self.settings.external_url)
                    self._db_ok = True
                    break
                except DB_ERRORS as e:
                    self._db_ok = False
                    telemetry.PERSIST_FAILURES.inc()
                    delay = backoff.next_delay()
                    log.warning("storing %d alert changes failed (%s); retrying in %.1fs", len(changes), e, delay)
                    if await wait_or_stop(stop, delay):
                        # Unacknowledged messages come back after a restart and cause these again.
                        return
            for c in changes:
                if not c.repeat:
                    telemetry.TRANSITIONS.labels(c.state).inc()
            if saved.notifications:
                telemetry.NOTIFICATIONS_QUEUED.inc(saved.notifications)
                assert self.delivery is not None
                self.delivery.wake()
        if msgs:
            try:
                await self.bus.ack_many(msgs, self.settings.consumer_group)
            except REDIS_ERRORS as e:
                # Unacknowledged: delivered again and evaluated again, which changes nothing.
                log.warning("acknowledging %d bus messages failed: %s", len(msgs), e)
        events = [alert_event(c).SerializeToString() for c in changes if not c.repeat]
        if events:
            try:
                await self.bus.publish_many(busmod.ALERTS, events)
            except REDIS_ERRORS as e:
                log.warning("%d alert events not published (the dashboard reads history instead): %s",
                            len(events), e)

    def _still_ours(self, changes: list[Change]) -> list[Change]:
        """The changes of hosts whose shard this replica still holds. A lease that ran out (paused
        past its ttl: SIGSTOP, a long GC) ends its say over the shard at once, before the bus
        reader has revoked it, and before another replica may take it over."""
        assert self.bus is not None
        group = self.settings.consumer_group

        def ours(c: Change) -> bool:
            p = self.bus.partition_of(busmod.SAMPLES, c.alert.host_id) if c.alert.host_id else 0
            return self.bus.holds(busmod.SAMPLES, group, p)

        kept = [c for c in changes if ours(c)]
        if len(kept) < len(changes):
            telemetry.FENCED.inc(len(changes) - len(kept))
            log.warning("%d alert changes not stored: their shard's lease ran out (its next owner evaluates "
                        "them again)", len(changes) - len(kept))
        return kept

    def _count(self) -> None:
        for name, metric in COUNTED:
            n = getattr(self.state, name)
            if n != self._seen[name]:
                metric.inc(n - self._seen[name])
                self._seen[name] = n
        if self._last_stored:
            telemetry.LAG_SECONDS.set(max(0.0, (now_ms() - self._last_stored) / 1000))

    # --- around evaluation --------------------------------------------------------------------------

    async def _resend_loop(self, stop: asyncio.Event) -> None:
        """Say again, every resend interval, which alerts still fire to each Alertmanager (as
        Prometheus does), or Alertmanager resolves them by itself when their endsAt passes."""
        every = self.settings.alertmanager_resend.total_seconds()
        while not await wait_or_stop(stop, every):
            await self.resend_to_alertmanagers()

    async def resend_to_alertmanagers(self) -> int:
        assert self.am is not None
        groups: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for a in self.state.alerts.values():
            if a.state != FIRING:
                continue
            for receiver, action in a.actions:
                if "alertmanager" in action:
                    groups.setdefault(receiver, (action["alertmanager"], []))[1].append(self._payload(a))
        sent = 0
        for action, alerts in groups.values():
            for i in range(0, len(alerts), AlertmanagerNotifier.max_alerts):
                part = alerts[i:i + AlertmanagerNotifier.max_alerts]
                outcome = await self.am.push(action, part)
                telemetry.KEEPALIVES.labels("sent" if outcome.ok else "failed").inc(len(part))
                sent += len(part) if outcome.ok else 0
        return sent

    def _payload(self, a: Alert) -> dict[str, Any]:
        return alert_json(status=FIRING, labels=a.labels, annotations=a.annotations, active_at=a.active_at,
                          resolved_at=None, fingerprint=a.fingerprint,
                          generator=generator_url(self.settings.external_url, a.rule))

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        assert self.pool is not None
        last_prune = 0.0
        last_flush = time.monotonic()
        while not await wait_or_stop(stop, GAUGES_EVERY_S):
            telemetry.ACTIVE.labels(FIRING).set(self.state.firing())
            telemetry.ACTIVE.labels(PENDING).set(self.state.pending())
            if time.monotonic() - last_flush < VALUE_FLUSH_S:
                continue
            last_flush = time.monotonic()
            dirty, self.state.dirty = self.state.dirty, {}
            try:
                await store.save_values(self.pool, dirty.values())
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    keep_days = self.settings.history_retention.total_seconds() / 86400
                    h, n = await store.prune(self.pool, history_days=keep_days,
                                             notifications_days=DELIVERED_RETENTION_DAYS)
                    if h or n:
                        log.info("retention: %d history rows and %d old notifications removed", h, n)
            except DB_ERRORS as e:
                log.debug("housekeeping deferred: %s", e)
