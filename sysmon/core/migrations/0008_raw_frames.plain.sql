-- The open area holds frames, not samples: one row per host and time, its series ids and values
-- as two arrays, as a collector samples them. A thousand collectors then cost PostgreSQL 200 rows
-- and 200 index entries a second instead of 12,000 of each: about half of its CPU at that load
-- went to the per-sample index (BENCHMARKS.md). One frame per host and time; a second one for the
-- same time is merged into it (the first value of a series wins), so a series still holds one
-- sample per time. `samples_raw` stays, as a view of the samples the frames hold.
CREATE TABLE raw_frames (
    host_id text NOT NULL,
    ts      timestamptz NOT NULL,
    ids     bigint[] NOT NULL,            -- series ids, each once
    vals    double precision[] NOT NULL   -- their values, in the same order
) PARTITION BY RANGE (ts);
CREATE UNIQUE INDEX raw_frames_host_ts ON raw_frames (host_id, ts);

-- The samples still open become frames (each hour's partition made first, named as the sealing
-- and retention jobs name them).
DO $$
DECLARE h timestamptz;
BEGIN
    FOR h IN SELECT DISTINCT date_trunc('hour', ts) FROM samples_raw LOOP
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF raw_frames FOR VALUES FROM (%L) TO (%L)',
                       'raw_frames_p' || to_char(h AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MI'), h, h + INTERVAL '1 hour');
    END LOOP;
END $$;
INSERT INTO raw_frames (host_id, ts, ids, vals)
SELECT s.host_id, r.ts, array_agg(r.series_id ORDER BY r.series_id), array_agg(r.value ORDER BY r.series_id)
FROM samples_raw r JOIN series s USING (series_id)
GROUP BY s.host_id, r.ts;
DROP TABLE samples_raw;

CREATE VIEW samples_raw AS
SELECT u.series_id, f.ts, u.value FROM raw_frames f, unnest(f.ids, f.vals) AS u(series_id, value);
