-- adgate job store, schema version 7: output custody (issue 18).
--
-- One row per COMPLETED job whose outputs still wait for the gateway's copy. It is written in
-- the transaction that completes the job, so a crash between the completion and the copy
-- loses nothing: the row is still there after a restart. `next_at` is when the job is due:
-- a retry's time, or, while a worker holds it, the end of that worker's claim.
CREATE TABLE custody_queue (
    job_id     TEXT PRIMARY KEY NOT NULL REFERENCES jobs (id),
    attempts   INTEGER NOT NULL DEFAULT 0,
    queued_at  INTEGER NOT NULL,
    next_at    INTEGER NOT NULL,
    claimed_by TEXT
);
CREATE INDEX custody_queue_next ON custody_queue (next_at);
