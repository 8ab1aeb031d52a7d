-- TimescaleDB: a hypertable for raw samples, hierarchical continuous aggregates for the
-- rollups, and policies for refresh, compression and retention (set from settings at start-up
-- by sysmon.core.storage.schema.apply_timescale_policies). Written against TimescaleDB 2.13+
-- (hierarchical continuous aggregates need 2.9, by_range 2.13).

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE samples_raw (
    series_id bigint NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL
);
SELECT create_hypertable('samples_raw', by_range('ts', INTERVAL '1 hour'));
CREATE INDEX samples_raw_series_ts ON samples_raw (series_id, ts);
ALTER TABLE samples_raw SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'series_id',
    timescaledb.compress_orderby = 'ts'
);

CREATE MATERIALIZED VIEW rollup_1m WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT series_id,
       time_bucket(INTERVAL '1 minute', ts) AS bucket,
       min(value) AS min,
       max(value) AS max,
       sum(value) AS sum,
       count(*)::integer AS count
FROM samples_raw
GROUP BY series_id, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;

CREATE MATERIALIZED VIEW rollup_1h WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT series_id,
       time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       min(min) AS min,
       max(max) AS max,
       sum(sum) AS sum,
       sum(count)::integer AS count
FROM rollup_1m
GROUP BY series_id, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;
