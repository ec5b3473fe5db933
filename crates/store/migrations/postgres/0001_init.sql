-- adgate job store on PostgreSQL, schema version 1.
--
-- The same tables and columns as the SQLite schema (migrations/0001_init.sql), plus what
-- several replicas need: job ownership by lease, a heartbeat per replica and the fleet-wide
-- provider budget. States are small integers (JobState::as_i64): 1 QUEUED, 2 PROCESSING,
-- 3 COMPLETED, 4 FAILED, 5 CANCELLED; non-terminal is spelt `state IN (1, 2)` everywhere so the
-- partial indexes apply. Times are Unix milliseconds (BIGINT). JSON columns hold serde_json
-- text; `outputs` is always a JSON array ('[]' when empty). Integers are BIGINT throughout so
-- they decode as i64.

CREATE TABLE batches (
    id          TEXT   PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    job_count   BIGINT NOT NULL
);

CREATE TABLE attempts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider         TEXT   NOT NULL,
    idempotency_key  TEXT   NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL
);

CREATE TABLE jobs (
    -- Insertion order: the tie-breaker SQLite gets from `rowid` (queue order is created_at,
    -- then the order jobs were stored).
    pos              BIGINT GENERATED ALWAYS AS IDENTITY,
    id               TEXT   PRIMARY KEY,
    batch_id         TEXT   NOT NULL REFERENCES batches (id),
    seq              BIGINT NOT NULL,          -- position within the batch
    provider         TEXT   NOT NULL,
    spec             TEXT   NOT NULL,          -- JSON
    state            BIGINT NOT NULL,
    provider_ref     TEXT,
    poll_key         TEXT,
    group_key        TEXT,
    correlation_key  TEXT,
    attempt_id       BIGINT REFERENCES attempts (id),
    attempt_seq      BIGINT,                   -- position within the attempt
    progress         TEXT,                     -- JSON or NULL
    outputs          TEXT   NOT NULL DEFAULT '[]',
    error            TEXT,                     -- JSON or NULL
    client_ref       TEXT   NOT NULL,
    labels           TEXT   NOT NULL,          -- JSON object
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    completed_at     BIGINT,
    deadline_at      BIGINT NOT NULL,
    revision         BIGINT NOT NULL,
    -- The replica that works on the job, and until when its claim holds without renewal.
    owner            TEXT,
    lease_until      BIGINT
);

CREATE UNIQUE INDEX jobs_batch_seq ON jobs (batch_id, seq);
-- queued_unassigned / claim_queued (provider, state = 1, attempt_id IS NULL, by created_at)
-- and count_by_state.
CREATE INDEX jobs_provider_state ON jobs (provider, state, attempt_id, created_at);
CREATE INDEX jobs_attempt ON jobs (attempt_id) WHERE attempt_id IS NOT NULL;
CREATE INDEX jobs_provider_ref ON jobs (provider, provider_ref) WHERE provider_ref IS NOT NULL;
CREATE INDEX jobs_correlation ON jobs (provider, correlation_key, created_at)
    WHERE state IN (1, 2) AND correlation_key IS NOT NULL;
CREATE INDEX jobs_tracked ON jobs (provider, created_at)
    WHERE state IN (1, 2) AND provider_ref IS NOT NULL;
CREATE INDEX jobs_poll_key ON jobs (provider, poll_key) WHERE poll_key IS NOT NULL;
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE state IN (1, 2);
-- renew_leases: the live jobs a replica owns.
CREATE INDEX jobs_owner ON jobs (owner) WHERE state IN (1, 2);
-- claim_orphans: live jobs of a provider by lease expiry.
CREATE INDEX jobs_lease ON jobs (provider, lease_until) WHERE state IN (1, 2);

CREATE TABLE request_ids (
    request_id    TEXT   PRIMARY KEY,
    content_hash  TEXT   NOT NULL,
    -- No foreign key: the request id is claimed before its batch row is written, in the
    -- same savepoint, so the two appear together or not at all.
    batch_id      TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    provider     TEXT   NOT NULL,
    delivery_id  TEXT   NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (provider, delivery_id)
);

-- One row per live (or once live) replica; `renew_leases` is its heartbeat.
CREATE TABLE replicas (
    id            TEXT   PRIMARY KEY,
    heartbeat_at  BIGINT NOT NULL
);

-- The fleet-wide request budget of each provider: an exact rolling window. The `budget` row is
-- the lock that serialises every replica's decision; `budget_hits` holds the requests granted
-- in (about) the last two windows. See `adgate_take_budget` and the module docs of
-- `postgres.rs` for why this design and not a token bucket or leased shares.
CREATE TABLE budget (
    provider       TEXT   PRIMARY KEY,
    blocked_until  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE budget_hits (
    provider  TEXT   NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX budget_hits_provider_at ON budget_hits (provider, at);

-- Count one request against `p_provider`'s rolling window of `p_limit` requests per
-- `p_window` ms at time `p_now`. Returns 0 when granted (the request is recorded), otherwise
-- how many ms to wait: until a block ends, or until enough old requests leave the window.
-- One statement, so one round trip; the row lock on `budget` makes it atomic across replicas.
CREATE FUNCTION adgate_take_budget(p_provider TEXT, p_limit BIGINT, p_window BIGINT, p_now BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_blocked  BIGINT;
    v_count    BIGINT;
    v_leaving  BIGINT;
BEGIN
    SELECT blocked_until INTO v_blocked FROM budget WHERE provider = p_provider FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO budget (provider, blocked_until) VALUES (p_provider, 0)
            ON CONFLICT (provider) DO NOTHING;
        SELECT blocked_until INTO v_blocked FROM budget WHERE provider = p_provider FOR UPDATE;
    END IF;
    IF v_blocked > p_now THEN
        RETURN v_blocked - p_now;
    END IF;
    -- Forget requests older than two windows. Keeping one extra window means a caller whose
    -- clock (or request) lags another's by less than a window still sees every request that
    -- is inside its own window.
    DELETE FROM budget_hits WHERE provider = p_provider AND at <= p_now - 2 * p_window;
    SELECT count(*) INTO v_count
        FROM budget_hits WHERE provider = p_provider AND at > p_now - p_window;
    IF v_count < p_limit THEN
        INSERT INTO budget_hits (provider, at) VALUES (p_provider, p_now);
        RETURN 0;
    END IF;
    IF p_limit <= 0 THEN
        RETURN GREATEST(p_window, 1);
    END IF;
    -- Full: one more request fits once the (count - limit + 1)th oldest one has left.
    SELECT at INTO v_leaving
        FROM budget_hits WHERE provider = p_provider AND at > p_now - p_window
        ORDER BY at OFFSET v_count - p_limit LIMIT 1;
    RETURN GREATEST(v_leaving + p_window - p_now, 1);
END
$$;
