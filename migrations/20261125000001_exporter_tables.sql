-- Tables owned by okr-exporter (DESIGN §3.2).

-- One row per follow-up whose creation was timed by the client
-- (POST /api/okr/creation-time); the primary key makes retries idempotent.
CREATE TABLE IF NOT EXISTS okr_creation_time (
    followup_id       uuid PRIMARY KEY,
    started_at        timestamptz,
    published_at      timestamptz NOT NULL,
    duration_seconds  double precision NOT NULL CHECK (duration_seconds >= 0),
    status            text NOT NULL DEFAULT 'published',
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
-- Windowed creation-time quantiles scan a range of published_at.
CREATE INDEX IF NOT EXISTS okr_creation_time_published_at_idx
    ON okr_creation_time (published_at) INCLUDE (duration_seconds);

-- First next action after publishing, one row per follow-up
-- (POST /api/okr/next-action).
CREATE TABLE IF NOT EXISTS okr_next_actions (
    followup_id     uuid PRIMARY KEY,
    action_at       timestamptz NOT NULL,
    published_at    timestamptz NOT NULL,
    days_to_action  double precision NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (action_at >= published_at)
);
CREATE INDEX IF NOT EXISTS okr_next_actions_action_at_idx
    ON okr_next_actions (action_at) INCLUDE (published_at);

-- Daily rollups maintained by the collector, so history outlives Prometheus
-- retention and feeds the report. `day` is a UTC calendar day.
CREATE TABLE IF NOT EXISTS okr_draft_completions (
    day          date PRIMARY KEY,
    created      bigint NOT NULL,
    published    bigint NOT NULL,
    deleted      bigint NOT NULL,
    open         bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS okr_engagement (
    day                 date PRIMARY KEY,
    followups           bigint NOT NULL,
    unique_visitors     bigint NOT NULL,
    engaged_followups   bigint NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS okr_mobile_usage (
    day       date PRIMARY KEY,
    sessions  bigint NOT NULL,
    mobile    bigint NOT NULL,
    tablet    bigint NOT NULL,
    desktop   bigint NOT NULL,
    other     bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Opt-in request log (`--request-log`), the original plan's table.
CREATE TABLE IF NOT EXISTS performance_metrics (
    id                bigserial PRIMARY KEY,
    "timestamp"       timestamptz NOT NULL,
    endpoint          text NOT NULL,
    method            text NOT NULL,
    response_time_ms  double precision NOT NULL,
    status_code       integer NOT NULL,
    user_id           text
);
CREATE INDEX IF NOT EXISTS performance_metrics_timestamp_idx
    ON performance_metrics ("timestamp");
