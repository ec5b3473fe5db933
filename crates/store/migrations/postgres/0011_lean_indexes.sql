-- adgate job store on PostgreSQL, schema version 11: fewer indexes on `jobs` (issue 16).
--
-- The same four as SQLite's version 9, for the same reasons: each was written by every
-- Submit (about 120 µs of server CPU per job went to the writes, most of it index entries)
-- and each has a stand-in: jobs_caller_created for spend_since, jobs_queue (same leading
-- columns) for the queue reads and the counts, jobs_created for a search by provider, and a
-- partial index for the rare states a search asks for (FAILED, CANCELLED), which no Submit
-- writes.
DROP INDEX jobs_caller_spend;
DROP INDEX jobs_provider_state;
DROP INDEX jobs_provider_created;
DROP INDEX jobs_state_created;
CREATE INDEX jobs_unsuccessful ON jobs (state, created_at, id) WHERE state IN (4, 5);
--
-- The foreign key from jobs to batches goes too: PostgreSQL checked it with a query per
-- inserted job row (a fifth of the database's CPU per Submit, profiled), for a rule the
-- writer keeps by construction: a batch and its jobs are inserted by one transaction, jobs
-- are never added to an existing batch, and retention deletes a batch only once none of its
-- jobs is left (`NOT EXISTS`).
ALTER TABLE jobs DROP CONSTRAINT jobs_batch_id_fkey;
