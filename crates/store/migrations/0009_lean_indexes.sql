-- adgate job store, schema version 9: fewer indexes on `jobs` (issue 16).
--
-- Every Submit wrote an entry in ten indexes of `jobs`, and every retained job kept thirteen:
-- about half the bytes a retained job costs, and most of the writer's page work per job.
-- Four of them had a cheaper stand-in:
-- - jobs_caller_spend (caller, provider, created_at): spend_since reads the caller's jobs
--   since the start of the day through jobs_caller_created instead and filters the provider
--   (it reads each of those rows for its cost anyway).
-- - jobs_provider_state (provider, state, attempt_id, created_at): jobs_queue starts with the
--   same three columns; the queue reads sort what it finds by age, and count_by_state still
--   counts from an index alone.
-- - jobs_provider_created (provider, created_at, id): a search by provider walks
--   jobs_created newest first and keeps the provider's rows; there are a handful of
--   providers, so a page is found after a few pages' worth of rows.
-- - jobs_state_created (state, created_at, id): COMPLETED is most jobs and QUEUED or
--   PROCESSING are the newest ones, so a search for them walks jobs_created and finds its
--   page early. FAILED and CANCELLED can be rare; they keep an index of their own, which no
--   Submit writes (the search spells `state IN (4, 5)` so SQLite may use it).
DROP INDEX jobs_caller_spend;
DROP INDEX jobs_provider_state;
DROP INDEX jobs_provider_created;
DROP INDEX jobs_state_created;
CREATE INDEX jobs_unsuccessful ON jobs (state, created_at, id) WHERE state IN (4, 5);
