-- Tables shared by both storage paths.

CREATE TABLE hosts (
    host_id            text PRIMARY KEY,
    hostname           text NOT NULL DEFAULT '',
    labels             jsonb NOT NULL DEFAULT '{}',
    agent_version      text NOT NULL DEFAULT '',
    os                 text NOT NULL DEFAULT '',
    cpu_count          integer,
    memory_total_bytes bigint,
    boot_time          timestamptz,
    interval_ms        integer,
    first_seen         timestamptz NOT NULL DEFAULT now(),
    last_seen          timestamptz NOT NULL DEFAULT now()
);

-- series_id is derived from (host_id, name, attributes): see sysmon.core.metrics.series_id.
CREATE TABLE series (
    series_id  bigint PRIMARY KEY,
    host_id    text NOT NULL,
    name       text NOT NULL,
    attributes jsonb NOT NULL DEFAULT '{}',
    unit       text NOT NULL DEFAULT '',
    kind       smallint NOT NULL DEFAULT 1,
    first_seen timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX series_name_host ON series (name, host_id);

-- Exactly-once storage: the batch sequence numbers each collector session has committed,
-- as a multirange so that a session that never loses a batch is one range [1, n+1).
CREATE TABLE ingest_sessions (
    host_id    text NOT NULL,
    session_id text NOT NULL,
    committed  int8multirange NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, session_id)
);

-- Configuration applied through ConfigService.Apply (CollectorConfig, AlertRule, ...).
CREATE TABLE config_resources (
    kind       text NOT NULL,
    name       text NOT NULL,
    generation bigint NOT NULL,
    spec       jsonb NOT NULL,
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
CREATE TABLE config_state (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO config_state (version) VALUES (0);
