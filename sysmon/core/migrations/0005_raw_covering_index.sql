-- Raw-tier reads ask for one series over a time range, and its values. A series' samples are
-- spread over every heap page written in that range (rows arrive in time order, interleaved with
-- every other series), so with (series_id, ts) alone a day of one series visits ~17,000 heap
-- pages. With the value in the index, PostgreSQL answers from the index alone (an index-only scan
-- over the pages that vacuum has marked all-visible, which autovacuum does for insert-only tables).
CREATE INDEX samples_raw_series_ts_value ON samples_raw (series_id, ts) INCLUDE (value);
DROP INDEX samples_raw_series_ts;
