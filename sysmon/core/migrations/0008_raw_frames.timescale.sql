-- See 0008_raw_frames.plain.sql. Not run here (no TimescaleDB on the development machine); written
-- against the documented API (TimescaleDB 2.13+).
CREATE TABLE raw_frames (
    host_id text NOT NULL,
    ts      timestamptz NOT NULL,
    ids     bigint[] NOT NULL,
    vals    double precision[] NOT NULL
);
SELECT create_hypertable('raw_frames', by_range('ts', INTERVAL '1 hour'));
CREATE UNIQUE INDEX raw_frames_host_ts ON raw_frames (host_id, ts);
INSERT INTO raw_frames (host_id, ts, ids, vals)
SELECT s.host_id, r.ts, array_agg(r.series_id ORDER BY r.series_id), array_agg(r.value ORDER BY r.series_id)
FROM samples_raw r JOIN series s USING (series_id)
GROUP BY s.host_id, r.ts;
SELECT remove_retention_policy('samples_raw', if_exists => true);
DROP TABLE samples_raw;

CREATE VIEW samples_raw AS
SELECT u.series_id, f.ts, u.value FROM raw_frames f, unnest(f.ids, f.vals) AS u(series_id, value);
