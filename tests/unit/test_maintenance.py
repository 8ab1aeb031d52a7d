"""The storage jobs' bookkeeping (sysmon.aggregator.maintenance.Jobs): what /metrics and the log say
about a job that fails, keeps failing, and works again. The jobs here are plain coroutines; the
same bookkeeping over real PostgreSQL failures is in tests/integration/test_storage_jobs.py."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from sysmon.aggregator import maintenance
from sysmon.aggregator.storage import Storage
from sysmon.core.settings import AggregatorSettings

TS_JOB = "timescaledb policy_retention on raw_frames (job 1001): disk full (3 failures)"


def failing(job: str) -> float | None:
    return REGISTRY.get_sample_value("sysmon_aggregator_storage_job_failing", {"job": job})


def runs(job: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("sysmon_aggregator_storage_job_runs_total",
                                     {"job": job, "outcome": outcome}) or 0.0


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def jobs() -> maintenance.Jobs:
    # Never connected: the jobs below do not touch it.
    return maintenance.Jobs(Storage("postgresql://unused", AggregatorSettings()))


async def test_a_job_that_failed_and_then_ran_well_is_no_longer_failing(
    jobs: maintenance.Jobs, caplog: pytest.LogCaptureFixture
) -> None:
    calls = iter([RuntimeError("boom"), RuntimeError("boom again"), "done"])

    async def job() -> str:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    errors_before, ok_before = runs("unit-job", "error"), runs("unit-job", "ok")
    with caplog.at_level(logging.INFO, logger="sysmon.aggregator.maintenance"):
        assert await jobs.run("unit-job", job) is None
        assert failing("unit-job") == 1.0
        assert await jobs.run("unit-job", job) is None
        assert failing("unit-job") == 1.0
        # Warned once while it keeps failing, not on every round.
        assert warnings(caplog) == ["storage job unit-job failed: RuntimeError: boom"]
        assert await jobs.run("unit-job", job) == "done"
    assert failing("unit-job") == 0.0
    assert (runs("unit-job", "error") - errors_before, runs("unit-job", "ok") - ok_before) == (2, 1)
    assert REGISTRY.get_sample_value("sysmon_aggregator_storage_job_last_success_timestamp_seconds",
                                     {"job": "unit-job"})
    assert "storage job unit-job works again" in [r.getMessage() for r in caplog.records]


async def test_timescaledb_jobs_failing_then_passing_clear_the_gauge(
    jobs: maintenance.Jobs, caplog: pytest.LogCaptureFixture
) -> None:
    """The TimescaleDB check itself succeeds; what it returns, TimescaleDB's jobs whose last run
    failed, fails the job; an empty answer clears it (as in maintenance.run)."""
    answers = iter([[TS_JOB], [], [TS_JOB]])

    async def check() -> list[str]:
        return next(answers)

    ok_before = runs("timescaledb", "ok")
    with caplog.at_level(logging.WARNING, logger="sysmon.aggregator.maintenance"):
        await jobs.run("timescaledb", check, errors=lambda failed: failed)
        assert failing("timescaledb") == 1.0
        assert warnings(caplog) == [f"storage job timescaledb failed: {TS_JOB}"]
        await jobs.run("timescaledb", check, errors=lambda failed: failed)
        assert failing("timescaledb") == 0.0
        assert runs("timescaledb", "ok") == ok_before + 1
        # Failing again after it worked: said again at once.
        await jobs.run("timescaledb", check, errors=lambda failed: failed)
    assert failing("timescaledb") == 1.0
    assert len(warnings(caplog)) == 2
