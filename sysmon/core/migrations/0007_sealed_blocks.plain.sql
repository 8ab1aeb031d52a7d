-- The raw tier at Prometheus density: samples arrive in samples_raw (one row each, hourly
-- partitions: the open area), and once an hour has closed, its rollups are computed and its
-- samples are sealed into one row per series here, timestamps and values encoded with pcodec
-- (sysmon.core.storage.codec, sysmon.core.storage.sealing). The hour's raw partition is emptied in
-- the same transaction: a sample is in one place or the other, never both, never neither.
CREATE TABLE samples_sealed (
    series_id   bigint NOT NULL,
    block_start timestamptz NOT NULL,
    count       integer NOT NULL,
    t_first     timestamptz NOT NULL,
    t_last      timestamptz NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    sum         double precision NOT NULL,   -- correctly rounded, saturating at the float64 range
    last        double precision NOT NULL,
    ts_data     bytea NOT NULL,              -- pcodec, int64 Unix ms
    val_data    bytea NOT NULL,              -- pcodec, float64
    PRIMARY KEY (series_id, block_start)
) PARTITION BY RANGE (block_start);

-- Hours whose samples are sealed. Samples that arrive for such an hour later (a collector
-- replaying its buffer) land in its emptied raw partition and are merged into the blocks.
CREATE TABLE raw_sealed_hours (
    hour          timestamptz PRIMARY KEY,
    sealed_at     timestamptz NOT NULL DEFAULT now(),
    series        integer NOT NULL,
    samples       bigint NOT NULL,
    encoded_bytes bigint NOT NULL,
    merges        integer NOT NULL DEFAULT 0
);

-- Encoded streams are incompressible: never try pglz on them; out of line (TOAST) when a row
-- is large, which packs pages better than wide inline rows.
ALTER TABLE samples_sealed ALTER COLUMN ts_data SET STORAGE EXTERNAL, ALTER COLUMN val_data SET STORAGE EXTERNAL;
