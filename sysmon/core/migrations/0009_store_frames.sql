-- A group commit in one round trip. The aggregator's writer calls sysmon_store_frames in
-- autocommit, so what was five to seven statements in a transaction (BEGIN, session locks, COPY,
-- the committed seqs and the rollup log, COMMIT), each a round trip with its Python, is one
-- statement: at a thousand collectors that was most of the writer's CPU in the aggregator and a
-- good part of PostgreSQL's. Same guarantees: the sessions' rows are locked in one order before
-- their committed seqs are read (two aggregators holding streams of one session commit one after
-- the other), a batch whose seq is committed is not stored again, and nothing is committed
-- unless all of it is.
--
-- Arguments, all arrays (a batch is a position in the b_ arrays, 1-based):
--   b_host, b_session, b_seq         each batch's identity
--   f_batch, f_ts, f_len             each non-empty frame: its batch, its time (Unix ms), its sample count
--   s_ids, s_vals                    every frame's series ids and values, frame after frame, as
--                                    matrices read row by row (the last row padded with NULL)
--   span_lo, span_hi                 time spans (Unix ms, [lo, hi)) the batches touch, for the rollup job
--   stale_hosts                      hosts whose last_seen is to be moved (once a minute each)
--   new_sessions                     some session may not have a row yet
--   new_hosts, ser_*                 hosts and series the writer has not registered yet
--   merge                            a frame's (host, time) may be stored already (or twice in this
--                                    group): merge into it, the first value of a series kept
-- Returns the batches already committed (not stored again) and, with merge, the samples skipped
-- because their series already had a value at that time.
CREATE FUNCTION sysmon_store_frames(
    b_host text[], b_session text[], b_seq int8[],
    f_batch int4[], f_ts int8[], f_len int4[], s_ids int8[][], s_vals float8[][],
    span_lo int8[], span_hi int8[], stale_hosts text[], new_sessions boolean,
    new_hosts text[], ser_id int8[], ser_host text[], ser_name text[], ser_attrs text[], ser_unit text[],
    ser_kind int2[], merge boolean,
    OUT dup int4[], OUT skipped int8
) LANGUAGE plpgsql AS $$
DECLARE
    -- The samples in order, one-dimensional (sliced frame by frame below).
    flat_ids int8[] := ARRAY(SELECT x FROM unnest(s_ids) WITH ORDINALITY AS u(x, o) ORDER BY o);
    flat_vals float8[] := ARRAY(SELECT x FROM unnest(s_vals) WITH ORDINALITY AS u(x, o) ORDER BY o);
BEGIN
    skipped := 0;
    IF new_sessions THEN
        INSERT INTO ingest_sessions (host_id, session_id)
        SELECT DISTINCT h, s FROM unnest(b_host, b_session) AS u(h, s)
        ON CONFLICT DO NOTHING;
    END IF;
    PERFORM 1 FROM ingest_sessions
    WHERE (host_id, session_id) IN (SELECT * FROM unnest(b_host, b_session))
    ORDER BY host_id, session_id
    FOR UPDATE;
    SELECT coalesce(array_agg(u.i), '{}') INTO dup
    FROM unnest(b_host, b_session, b_seq) WITH ORDINALITY AS u(h, s, q, i)
    JOIN ingest_sessions x ON x.host_id = u.h AND x.session_id = u.s
    WHERE x.committed @> u.q;
    IF cardinality(dup) = cardinality(b_seq) THEN
        RETURN;
    END IF;

    IF cardinality(new_hosts) > 0 THEN
        INSERT INTO hosts (host_id) SELECT unnest(new_hosts) ON CONFLICT DO NOTHING;
    END IF;
    IF cardinality(ser_id) > 0 THEN
        INSERT INTO series (series_id, host_id, name, attributes, unit, kind)
        SELECT i, h, n, a::jsonb, u, k
        FROM unnest(ser_id, ser_host, ser_name, ser_attrs, ser_unit, ser_kind) AS t(i, h, n, a, u, k)
        ON CONFLICT (series_id) DO NOTHING;
    END IF;

    IF NOT merge THEN
        INSERT INTO raw_frames (host_id, ts, ids, vals)
        SELECT b_host[f.b], 'epoch'::timestamptz + f.t * INTERVAL '1 millisecond',
               flat_ids[f.o + 1 : f.o + f.n], flat_vals[f.o + 1 : f.o + f.n]
        FROM (SELECT b, t, n, (sum(n) OVER (ORDER BY k) - n)::int4 AS o
              FROM unnest(f_batch, f_ts, f_len) WITH ORDINALITY AS u(b, t, n, k)) f
        WHERE f.b <> ALL (dup);
    ELSE
        WITH s AS (
            -- Every sample of the batches to store, in the order it arrived.
            SELECT b_host[f.b] AS h, f.t, x.i, x.v, f.o + x.j AS ord
            FROM (SELECT b, t, n, (sum(n) OVER (ORDER BY k) - n)::int4 AS o
                  FROM unnest(f_batch, f_ts, f_len) WITH ORDINALITY AS u(b, t, n, k)) f,
                 unnest(flat_ids[f.o + 1 : f.o + f.n], flat_vals[f.o + 1 : f.o + f.n]) WITH ORDINALITY AS x(i, v, j)
            WHERE f.b <> ALL (dup)
        ), firsts AS (
            SELECT DISTINCT ON (h, t, i) h, t, i, v, ord FROM s ORDER BY h, t, i, ord
        ), frames AS (
            SELECT h, 'epoch'::timestamptz + t * INTERVAL '1 millisecond' AS ts,
                   array_agg(i ORDER BY ord) AS ids, array_agg(v ORDER BY ord) AS vals
            FROM firsts GROUP BY h, t
        ), stored AS (
            -- Every sub-statement sees the table as it was before this one: these were there already.
            SELECT count(*) AS n FROM frames f
            JOIN raw_frames r ON r.host_id = f.h AND r.ts = f.ts, unnest(f.ids) AS i
            WHERE i = ANY (r.ids)
        ), ins AS (
            INSERT INTO raw_frames AS r (host_id, ts, ids, vals)
            SELECT h, ts, ids, vals FROM frames
            ON CONFLICT (host_id, ts) DO UPDATE SET (ids, vals) = (
                SELECT r.ids || coalesce(array_agg(e.i ORDER BY e.o), '{}'),
                       r.vals || coalesce(array_agg(e.v ORDER BY e.o), '{}')
                FROM unnest(EXCLUDED.ids, EXCLUDED.vals) WITH ORDINALITY AS e(i, v, o)
                WHERE e.i <> ALL (r.ids))
        )
        SELECT (SELECT count(*) FROM s) - (SELECT count(*) FROM firsts) + (SELECT n FROM stored) INTO skipped;
    END IF;

    INSERT INTO rollup_invalidations
    SELECT '1m', 'epoch'::timestamptz + lo * INTERVAL '1 millisecond', 'epoch'::timestamptz + hi * INTERVAL '1 millisecond'
    FROM unnest(span_lo, span_hi) AS t(lo, hi);
    IF cardinality(stale_hosts) > 0 THEN
        UPDATE hosts SET last_seen = now() WHERE host_id = ANY (stale_hosts);
    END IF;
    UPDATE ingest_sessions x SET committed = x.committed + u.add, updated_at = now()
    FROM (SELECT h, s, range_agg(int8range(q, q + 1)) AS add
          FROM unnest(b_host, b_session, b_seq) WITH ORDINALITY AS t(h, s, q, i)
          WHERE i <> ALL (dup)
          GROUP BY h, s) u
    WHERE x.host_id = u.h AND x.session_id = u.s;
END
$$;
