-- Source tables of the Follow-Up application (DESIGN §3.1).
-- The application owns them in production; this file creates them only for
-- the test suite and `okr-exporter demo`. It is kept apart from migrations/.
CREATE TABLE IF NOT EXISTS followups (
    id              uuid PRIMARY KEY,
    creator_id      text NOT NULL,
    company         text,
    meeting_type    text,
    creator_region  text,
    status          text NOT NULL,
    created_at      timestamptz NOT NULL,
    published_at    timestamptz,
    deleted_at      timestamptz
);

CREATE TABLE IF NOT EXISTS analytics_sessions (
    id           bigserial PRIMARY KEY,
    followup_id  uuid NOT NULL,
    visitor_id   text NOT NULL,
    device_type  text NOT NULL,
    started_at   timestamptz NOT NULL
);
