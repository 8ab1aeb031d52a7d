-- Every finite float64 is a valid sample, and a float8 sum of a few values near 1.8e308 overflows:
-- PostgreSQL then raises, and one client's extreme values stopped the rollup job for every host.
-- Rollup sums become exact numerics (their means are always within float64); the cast through text
-- keeps every digit (float8::numeric would keep 15).
ALTER TABLE rollup_1m ALTER COLUMN sum TYPE numeric USING sum::text::numeric;
ALTER TABLE rollup_1h ALTER COLUMN sum TYPE numeric USING sum::text::numeric;

-- One sample per series and time. Batches were already stored once per (host, session, seq); the
-- same (series, time) sent again from another session (a second collector with the same host id,
-- a client retrying under a new session) was stored twice. Duplicates already stored are removed,
-- keeping the first written.
WITH dup AS (
    SELECT series_id, ts, min(ctid) AS first FROM samples_raw GROUP BY series_id, ts HAVING count(*) > 1
)
DELETE FROM samples_raw s USING dup d
WHERE s.series_id = d.series_id AND s.ts = d.ts AND s.ctid <> d.first;
CREATE UNIQUE INDEX samples_raw_series_ts_unique ON samples_raw (series_id, ts) INCLUDE (value);
DROP INDEX samples_raw_series_ts_value;
