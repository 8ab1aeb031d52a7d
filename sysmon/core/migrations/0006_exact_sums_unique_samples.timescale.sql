-- See 0006_exact_sums_unique_samples.plain.sql for why. Not run here (no TimescaleDB on the
-- development machine); written against the documented API (TimescaleDB 2.13+).
--
-- A continuous aggregate's columns cannot change type, so both are made again with exact sums;
-- their refresh policies are set again at start-up (schema.apply_timescale_policies) and refill
-- them from the raw tier. Rollups older than the raw retention are not carried over.
DROP MATERIALIZED VIEW rollup_1h;
DROP MATERIALIZED VIEW rollup_1m;

CREATE MATERIALIZED VIEW rollup_1m WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT series_id,
       time_bucket(INTERVAL '1 minute', ts) AS bucket,
       min(value) AS min,
       max(value) AS max,
       sum(value::text::numeric) AS sum,
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

-- Unique indexes on a hypertable must include its time column; this one does.
WITH dup AS (
    SELECT series_id, ts, min(ctid) AS first FROM samples_raw GROUP BY series_id, ts HAVING count(*) > 1
)
DELETE FROM samples_raw s USING dup d
WHERE s.series_id = d.series_id AND s.ts = d.ts AND s.ctid <> d.first;
CREATE UNIQUE INDEX samples_raw_series_ts_unique ON samples_raw (series_id, ts) INCLUDE (value);
DROP INDEX samples_raw_series_ts_value;
