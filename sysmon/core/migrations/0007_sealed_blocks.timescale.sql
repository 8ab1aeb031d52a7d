-- The same sealed blocks as on plain PostgreSQL (0007_sealed_blocks.plain.sql): one code path.
-- Not run here (no TimescaleDB on the development machine); written against the documented API
-- (TimescaleDB 2.13+). Measured on the same data, TimescaleDB's native compression stores about
-- 6 bytes a sample where sealed blocks store less (BENCHMARKS.md, bench/storage.py), so its
-- compression is turned off and the sealing job seals samples_raw's hour chunks instead.
SELECT remove_compression_policy('samples_raw', if_exists => true);
SELECT decompress_chunk(c, true) FROM show_chunks('samples_raw') AS c;
ALTER TABLE samples_raw SET (timescaledb.compress = false);

-- Continuous aggregates read samples_raw, which no longer holds an hour once it is sealed: the
-- rollups become hypertables kept by the rollup job of the plain path (an invalidation log
-- written with every commit), with exact sums. Their history is carried over.
CREATE TABLE rollup_1m_next (
    series_id bigint NOT NULL,
    bucket    timestamptz NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    sum       numeric NOT NULL,
    count     integer NOT NULL,
    PRIMARY KEY (series_id, bucket)
);
SELECT create_hypertable('rollup_1m_next', by_range('bucket', INTERVAL '1 day'));
INSERT INTO rollup_1m_next SELECT series_id, bucket, min, max, sum::text::numeric, count FROM rollup_1m;

CREATE TABLE rollup_1h_next (LIKE rollup_1m_next INCLUDING ALL);
SELECT create_hypertable('rollup_1h_next', by_range('bucket', INTERVAL '30 days'));
INSERT INTO rollup_1h_next SELECT series_id, bucket, min, max, sum::text::numeric, count FROM rollup_1h;

DROP MATERIALIZED VIEW rollup_1h;
DROP MATERIALIZED VIEW rollup_1m;
ALTER TABLE rollup_1m_next RENAME TO rollup_1m;
ALTER TABLE rollup_1h_next RENAME TO rollup_1h;

CREATE TABLE rollup_invalidations (
    tier text NOT NULL,
    lo   timestamptz NOT NULL,
    hi   timestamptz NOT NULL
);
-- What is raw now is rolled up by the job (the continuous aggregates covered up to their lag).
INSERT INTO rollup_invalidations SELECT '1m', min(ts), max(ts) + INTERVAL '1 millisecond' FROM samples_raw
HAVING count(*) > 0;

CREATE TABLE samples_sealed (
    series_id   bigint NOT NULL,
    block_start timestamptz NOT NULL,
    count       integer NOT NULL,
    t_first     timestamptz NOT NULL,
    t_last      timestamptz NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    sum         double precision NOT NULL,
    last        double precision NOT NULL,
    ts_data     bytea NOT NULL,
    val_data    bytea NOT NULL,
    PRIMARY KEY (series_id, block_start)
);
SELECT create_hypertable('samples_sealed', by_range('block_start', INTERVAL '1 hour'));
ALTER TABLE samples_sealed ALTER COLUMN ts_data SET STORAGE EXTERNAL, ALTER COLUMN val_data SET STORAGE EXTERNAL;

CREATE TABLE raw_sealed_hours (
    hour          timestamptz PRIMARY KEY,
    sealed_at     timestamptz NOT NULL DEFAULT now(),
    series        integer NOT NULL,
    samples       bigint NOT NULL,
    encoded_bytes bigint NOT NULL,
    merges        integer NOT NULL DEFAULT 0
);
