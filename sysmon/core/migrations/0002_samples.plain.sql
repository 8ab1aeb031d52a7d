-- Plain PostgreSQL: time-range partitions (created and dropped by sysmon.core.storage.partitions),
-- rollups maintained by a job from an invalidation log, retention by dropping partitions.

CREATE TABLE samples_raw (
    series_id bigint NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX samples_raw_series_ts ON samples_raw (series_id, ts);

CREATE TABLE rollup_1m (
    series_id bigint NOT NULL,
    bucket    timestamptz NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    sum       double precision NOT NULL,
    count     integer NOT NULL,
    PRIMARY KEY (series_id, bucket)
) PARTITION BY RANGE (bucket);

CREATE TABLE rollup_1h (
    series_id bigint NOT NULL,
    bucket    timestamptz NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    sum       double precision NOT NULL,
    count     integer NOT NULL,
    PRIMARY KEY (series_id, bucket)
) PARTITION BY RANGE (bucket);

-- Time ranges [lo, hi) whose buckets in `tier` must be (re)computed: every commit of raw
-- samples logs its range for '1m', and every 1-minute recompute logs its range for '1h'.
-- Late samples (a collector replaying hours of buffer) therefore correct old buckets too.
CREATE TABLE rollup_invalidations (
    tier text NOT NULL,
    lo   timestamptz NOT NULL,
    hi   timestamptz NOT NULL
);
