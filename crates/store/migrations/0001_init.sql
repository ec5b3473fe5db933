-- adgate job store, schema version 1.
--
-- States are stored as small integers (JobState::as_i64): 1 QUEUED, 2 PROCESSING,
-- 3 COMPLETED, 4 FAILED, 5 CANCELLED. Non-terminal means `state IN (1, 2)`; queries spell it
-- exactly that way so the partial index below applies. Times are Unix milliseconds.
-- JSON columns hold serde_json text; `outputs` is always a JSON array ('[]' when empty).

CREATE TABLE batches (
    id          TEXT    PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL,
    job_count   INTEGER NOT NULL
);

CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    provider         TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL
);

CREATE TABLE jobs (
    id               TEXT    PRIMARY KEY NOT NULL,
    batch_id         TEXT    NOT NULL REFERENCES batches (id),
    seq              INTEGER NOT NULL,          -- position within the batch
    provider         TEXT    NOT NULL,
    spec             TEXT    NOT NULL,          -- JSON
    state            INTEGER NOT NULL,
    provider_ref     TEXT,
    poll_key         TEXT,
    group_key        TEXT,
    correlation_key  TEXT,
    attempt_id       INTEGER REFERENCES attempts (id),
    attempt_seq      INTEGER,                   -- position within the attempt
    progress         TEXT,                      -- JSON or NULL
    outputs          TEXT    NOT NULL DEFAULT '[]',
    error            TEXT,                      -- JSON or NULL
    client_ref       TEXT    NOT NULL,
    labels           TEXT    NOT NULL,          -- JSON object
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    completed_at     INTEGER,
    deadline_at      INTEGER NOT NULL,
    revision         INTEGER NOT NULL
);

CREATE UNIQUE INDEX jobs_batch_seq ON jobs (batch_id, seq);
-- queued_unassigned (provider, state = 1, attempt_id IS NULL, ordered by created_at),
-- active_jobs (provider, state IN (1, 2)) and count_by_state (covering).
CREATE INDEX jobs_provider_state ON jobs (provider, state, attempt_id, created_at);
CREATE INDEX jobs_attempt ON jobs (attempt_id) WHERE attempt_id IS NOT NULL;
CREATE INDEX jobs_provider_ref ON jobs (provider, provider_ref) WHERE provider_ref IS NOT NULL;
-- find_by_correlation: only live jobs, so a correlation key repeated over months of history
-- never makes the lookup scan finished jobs.
CREATE INDEX jobs_correlation ON jobs (provider, correlation_key, created_at)
    WHERE state IN (1, 2) AND correlation_key IS NOT NULL;
-- active_jobs: the jobs being tracked, however many finished jobs a provider has.
CREATE INDEX jobs_tracked ON jobs (provider, created_at)
    WHERE state IN (1, 2) AND provider_ref IS NOT NULL;
CREATE INDEX jobs_poll_key ON jobs (provider, poll_key) WHERE poll_key IS NOT NULL;
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE state IN (1, 2);

CREATE TABLE request_ids (
    request_id    TEXT    PRIMARY KEY NOT NULL,
    content_hash  TEXT    NOT NULL,
    -- No foreign key: the request id is claimed before its batch row is written, in the
    -- same savepoint, so the two appear together or not at all.
    batch_id      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    provider     TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (provider, delivery_id)
) WITHOUT ROWID;
