-- adgate job store (PostgreSQL), schema version 8: output custody (issue 18).
--
-- One row per COMPLETED job whose outputs still wait for the gateway's copy, written in the
-- transaction that completes the job. Replicas claim rows with `FOR UPDATE SKIP LOCKED` and
-- push `next_at` to the end of their claim, so one job is copied by one replica at a time and
-- a replica that dies mid-copy leaves the row due again once its claim has run out.
CREATE TABLE custody_queue (
    job_id     TEXT PRIMARY KEY REFERENCES jobs (id),
    attempts   INTEGER NOT NULL DEFAULT 0,
    queued_at  BIGINT NOT NULL,
    next_at    BIGINT NOT NULL,
    claimed_by TEXT
);
CREATE INDEX custody_queue_next ON custody_queue (next_at);
