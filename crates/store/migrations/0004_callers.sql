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
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 2;
ALTER TABLE jobs ADD COLUMN cost_unit TEXT;
ALTER TABLE jobs ADD COLUMN cost_micros INTEGER;
ALTER TABLE jobs ADD COLUMN cost_per_output_micros INTEGER;
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
ALTER TABLE batches ADD COLUMN caller TEXT NOT NULL DEFAULT 'anonymous';
-- Spend so far today of one caller at one provider (spend limits), an index range.
CREATE INDEX jobs_caller_spend ON jobs (caller, provider, created_at);
-- The dispatcher's fair-share claim ranks each caller's queued jobs by (priority, age).
CREATE INDEX jobs_queue ON jobs (provider, state, attempt_id, caller, priority, created_at);
