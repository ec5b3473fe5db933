-- adgate job store, schema version 4: callers, priority, cost and trace context (issue 17).
--
-- `caller` is the name of the token that submitted the job ('anonymous' without auth; rows
-- stored before this version were all anonymous). `priority` orders one caller's queued jobs:
-- 1 interactive, 2 normal, 3 bulk. The cost columns hold what the job costs in its
-- provider's unit: the estimate while it may run (what a spend limit counts as reserved),
-- settled at completion (`cost_per_output_micros` × outputs when priced per output), 0 once
-- failed or cancelled; NULL where nothing is priced. `traceparent` is the W3C trace context
-- of the Submit that created the job.
ALTER TABLE jobs ADD COLUMN caller TEXT NOT NULL DEFAULT 'anonymous';
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 2;
ALTER TABLE jobs ADD COLUMN cost_unit TEXT;
ALTER TABLE jobs ADD COLUMN cost_micros BIGINT;
ALTER TABLE jobs ADD COLUMN cost_per_output_micros BIGINT;
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
ALTER TABLE batches ADD COLUMN caller TEXT NOT NULL DEFAULT 'anonymous';
-- Spend so far today of one caller at one provider (spend limits), an index range.
CREATE INDEX jobs_caller_spend ON jobs (caller, provider, created_at);
-- The dispatcher's fair-share claim ranks each caller's queued jobs by (priority, age).
CREATE INDEX jobs_queue ON jobs (provider, state, attempt_id, caller, priority, created_at, pos);

-- Requests refused by the fleet budget wait in line: each refused request is a waiter
-- (`p_waiter`, one id per request, kept across its retries), and a free slot goes to the
-- oldest live waiter. Without it the free slot went to whichever replica's retry came first,
-- so a caller's job on one replica could lose the race to another replica's backlog slot
-- after slot, whatever order each replica's dispatcher keeps. A waiter is told when to come
-- back (`due_at`); one that has not come back a second after that stopped waiting (its
-- request was abandoned, or its replica died) and is forgotten, so it never holds the line.
CREATE TABLE budget_waiters (
    provider  TEXT   NOT NULL,
    waiter    TEXT   NOT NULL,
    first_at  BIGINT NOT NULL,
    seen_at   BIGINT NOT NULL,
    due_at    BIGINT NOT NULL,
    PRIMARY KEY (provider, waiter)
);

-- The budget also paces requests once its window is half used: each waits until the
-- previous one is window / limit old. A rolling window alone lets the whole limit through in
-- one burst the moment it frees, so a job arriving just after a burst waited a full window
-- however fair the order; paced, the next request is never more than one slot away, and a
-- busy window still carries exactly `limit` requests.
CREATE FUNCTION adgate_take_budget(p_provider TEXT, p_limit BIGINT, p_window BIGINT, p_now BIGINT,
                                   p_waiter TEXT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_blocked  BIGINT;
    v_count    BIGINT;
    v_leaving  BIGINT;
    v_last     BIGINT;
    v_spacing  BIGINT;
    v_wait     BIGINT;
    v_mine     BIGINT;
BEGIN
    SELECT blocked_until INTO v_blocked FROM budget WHERE provider = p_provider FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO budget (provider, blocked_until) VALUES (p_provider, 0)
            ON CONFLICT (provider) DO NOTHING;
        SELECT blocked_until INTO v_blocked FROM budget WHERE provider = p_provider FOR UPDATE;
    END IF;
    IF p_limit <= 0 THEN
        RETURN GREATEST(p_window, 1);
    END IF;
    v_spacing := GREATEST(p_window / p_limit, 1);
    DELETE FROM budget_waiters WHERE provider = p_provider AND due_at < p_now - 1000;
    SELECT first_at INTO v_mine FROM budget_waiters
        WHERE provider = p_provider AND waiter = p_waiter;
    v_wait := 0;
    IF v_blocked > p_now THEN
        v_wait := v_blocked - p_now;
    ELSE
        DELETE FROM budget_hits WHERE provider = p_provider AND at <= p_now - 2 * p_window;
        SELECT count(*), max(at) INTO v_count, v_last
            FROM budget_hits WHERE provider = p_provider AND at > p_now - p_window;
        IF v_count >= p_limit THEN
            SELECT at INTO v_leaving
                FROM budget_hits WHERE provider = p_provider AND at > p_now - p_window
                ORDER BY at OFFSET v_count - p_limit LIMIT 1;
            v_wait := GREATEST(v_leaving + p_window - p_now, 1);
        END IF;
        -- A daily cap (key `<provider>@daily`) is never paced: pacing spreads the burst of a
        -- short window; it must not spread a day's requests over the day.
        IF p_provider NOT LIKE '%@daily' AND 2 * v_count >= p_limit AND v_last IS NOT NULL
           AND p_now - v_last < v_spacing THEN
            v_wait := GREATEST(v_wait, v_last + v_spacing - p_now);
        END IF;
        -- A slot is free: it is this request's only if no older request is waiting for one.
        IF v_wait = 0 AND EXISTS (
            SELECT 1 FROM budget_waiters
            WHERE provider = p_provider AND waiter <> p_waiter
              AND first_at < COALESCE(v_mine, p_now)) THEN
            v_wait := LEAST(v_spacing, 50);
        END IF;
    END IF;
    IF v_wait = 0 THEN
        INSERT INTO budget_hits (provider, at) VALUES (p_provider, p_now);
        DELETE FROM budget_waiters WHERE provider = p_provider AND waiter = p_waiter;
        RETURN 0;
    END IF;
    INSERT INTO budget_waiters (provider, waiter, first_at, seen_at, due_at)
        VALUES (p_provider, p_waiter, p_now, p_now, p_now + v_wait)
        ON CONFLICT (provider, waiter)
        DO UPDATE SET seen_at = EXCLUDED.seen_at, due_at = EXCLUDED.due_at;
    RETURN v_wait;
END
$$;
