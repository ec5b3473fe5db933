-- adgate job store, schema version 5: search (ListJobs, ListBatches; issue 17).
--
-- Pages are newest first by (created_at, id) and continue below the previous page's last
-- row, so each index ends in (created_at, id): an equality on its leading column, then a
-- backwards range scan that stops after one page.
CREATE INDEX jobs_created ON jobs (created_at, id);
CREATE INDEX jobs_caller_created ON jobs (caller, created_at, id);
CREATE INDEX jobs_state_created ON jobs (state, created_at, id);
CREATE INDEX jobs_provider_created ON jobs (provider, created_at, id);
CREATE INDEX batches_created ON batches (created_at, id);
CREATE INDEX batches_caller_created ON batches (caller, created_at, id);
