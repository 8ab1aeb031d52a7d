-- Alerts, second step: what the alerts service needs to resume after a restart, and to deliver
-- each notification exactly once and in order per receiver.

-- The series an alert follows (0 for a host's no-data alert), so that a restored alert
-- re-attaches to its state machine.
ALTER TABLE alert_state
    ADD COLUMN series_id bigint NOT NULL DEFAULT 0,
    -- The receivers its firing went to, as [[receiver, action], ...]: its resolved goes to them
    -- too, even when the rule was changed or deleted meanwhile.
    ADD COLUMN actions jsonb NOT NULL DEFAULT '[]';

-- A notification is for one transition (its alert_history row) or a repeat of a firing alert
-- (no history row), to one receiver. The unique index makes a second notification for the same
-- transition and receiver impossible, whatever happens around a restart.
ALTER TABLE alert_notifications
    ADD COLUMN history_id bigint REFERENCES alert_history (id) ON DELETE SET NULL,
    ADD COLUMN status     text NOT NULL DEFAULT 'firing' CHECK (status IN ('firing', 'resolved')),
    ADD COLUMN repeat     boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX alert_notifications_once ON alert_notifications (history_id, receiver)
    WHERE history_id IS NOT NULL;

-- Delivery takes each receiver's undelivered notifications oldest first (a firing is never
-- overtaken by its own resolved).
DROP INDEX alert_notifications_due;
CREATE INDEX alert_notifications_undelivered ON alert_notifications (receiver, id)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX alert_notifications_created ON alert_notifications (created_at);
