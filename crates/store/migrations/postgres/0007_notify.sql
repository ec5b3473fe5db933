-- adgate job store on PostgreSQL, schema version 7: outbound webhooks (issue 18).
--
-- A batch whose events go somewhere (`notify` = 1: an endpoint named in its Submit, or its
-- caller's configured endpoints) counts its unfinished jobs in `open_jobs`, so the change that
-- finishes the last one knows, in the same transaction, that `batch.completed` is due.
-- `notify_url` / `notify_url_events` are the Submit's endpoint and its event filter (a bit
-- mask: 1 job.completed, 2 job.failed, 4 job.cancelled, 8 batch.completed).
ALTER TABLE batches ADD COLUMN notify_url TEXT;
ALTER TABLE batches ADD COLUMN notify_url_events BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN notify BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN open_jobs BIGINT NOT NULL DEFAULT 0;
-- The callers' configured endpoints, written from the config at start-up, so that the
-- transaction that finishes a job can address every endpoint of its caller.
CREATE TABLE notify_endpoints (
    id TEXT PRIMARY KEY,
    caller TEXT NOT NULL,
    url TEXT NOT NULL,
    events BIGINT NOT NULL
);
CREATE INDEX notify_endpoints_caller ON notify_endpoints (caller);
-- The outbox: one row per (event, endpoint), written in the transaction of the change that
-- caused the event. `event_id` is the `webhook-id`, the same on every retry and redelivery.
-- state: 0 due at `next_at`, 1 delivered, 2 given up, 3 parked (endpoint disabled).
CREATE TABLE notify_outbox (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    url TEXT NOT NULL,
    kind BIGINT NOT NULL,
    job_id TEXT,
    batch_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    state BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (event_id, endpoint)
);
CREATE INDEX notify_outbox_due ON notify_outbox (next_at) WHERE state = 0;
CREATE INDEX notify_outbox_batch ON notify_outbox (batch_id);
CREATE INDEX notify_outbox_endpoint ON notify_outbox (endpoint, state);
-- Endpoints switched off after a run of failed deliveries (until RedeliverEvents).
CREATE TABLE notify_disabled (
    endpoint TEXT PRIMARY KEY,
    disabled_at BIGINT NOT NULL,
    reason TEXT NOT NULL
);
