-- See 0006_exact_sums_unique_samples.plain.sql for why. Not run here (no TimescaleDB on the
-- development machine); written against the documented API (TimescaleDB 2.13+). The rollups'
-- exact sums come with 0007, which replaces the continuous aggregates.

-- Unique indexes on a hypertable must include its time column; this one does.
WITH dup AS (
    SELECT series_id, ts, min(ctid) AS first FROM samples_raw GROUP BY series_id, ts HAVING count(*) > 1
)
DELETE FROM samples_raw s USING dup d
WHERE s.series_id = d.series_id AND s.ts = d.ts AND s.ctid <> d.first;
CREATE UNIQUE INDEX samples_raw_series_ts_unique ON samples_raw (series_id, ts) INCLUDE (value);
DROP INDEX samples_raw_series_ts_value;
