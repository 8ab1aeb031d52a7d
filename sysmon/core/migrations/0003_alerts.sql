-- Alerts: the state of every active alert, the history of its transitions, and the outbox of
-- notifications still to deliver. Written by `sysmon alerts`, read by the gateway.

-- One row per alert that is pending or firing; an alert is keyed by the fingerprint of its label
-- set (alertname, host, series attributes, rule labels), as in Prometheus.
CREATE TABLE alert_state (
    rule          text NOT NULL,
    fingerprint   text NOT NULL,
    host_id       text NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'firing')),
    severity      text NOT NULL DEFAULT 'warning',
    labels        jsonb NOT NULL DEFAULT '{}',
    annotations   jsonb NOT NULL DEFAULT '{}',
    value         double precision,
    active_at     timestamptz NOT NULL,
    fired_at      timestamptz,
    last_eval_at  timestamptz NOT NULL,
    last_sent_at  timestamptz,
    PRIMARY KEY (rule, fingerprint)
);
CREATE INDEX alert_state_host ON alert_state (host_id);

-- Every transition (pending, firing, resolved), newest first when read.
CREATE TABLE alert_history (
    id            bigserial PRIMARY KEY,
    rule          text NOT NULL,
    fingerprint   text NOT NULL,
    host_id       text NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'firing', 'resolved', 'inactive')),
    previous      text NOT NULL DEFAULT 'inactive',
    severity      text NOT NULL DEFAULT 'warning',
    labels        jsonb NOT NULL DEFAULT '{}',
    annotations   jsonb NOT NULL DEFAULT '{}',
    value         double precision,
    active_at     timestamptz,
    at            timestamptz NOT NULL
);
CREATE INDEX alert_history_at ON alert_history (at DESC, id DESC);
CREATE INDEX alert_history_rule_at ON alert_history (rule, at DESC);
CREATE INDEX alert_history_host_at ON alert_history (host_id, at DESC);

-- Notifications written in the same transaction as the transition that caused them, then
-- delivered with retries: one notification per transition and receiver, never lost, never
-- sent twice after a restart (an idempotency key per row).
CREATE TABLE alert_notifications (
    id            bigserial PRIMARY KEY,
    rule          text NOT NULL,
    fingerprint   text NOT NULL,
    receiver      text NOT NULL,          -- e.g. "webhook:http://receiver:9000/hook"
    action        jsonb NOT NULL,         -- the rule's action as applied
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    next_attempt  timestamptz NOT NULL DEFAULT now(),
    last_error    text,
    delivered_at  timestamptz,
    gave_up_at    timestamptz
);
CREATE INDEX alert_notifications_due ON alert_notifications (next_attempt)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
