-- adgate job store, schema version 8: retention (issue 16).
--
-- Retention deletes, oldest first and a few hundred rows per transaction, terminal jobs by
-- the time they became terminal, request ids by the time they were claimed and webhook
-- delivery ids by the time they were first received. Each index below turns one of those
-- steps into a range scan that stops after its few hundred rows; without them every step
-- would scan the whole table. Attempts and batches are found from the deleted jobs
-- (`jobs_attempt`, `jobs_batch_seq`), so they need no index of their own.
--
-- Partial on terminal states, spelt as `state IN (3, 4, 5)` exactly as the delete spells it,
-- so live jobs (the ones Submit and the tracker write most) never touch this index.
CREATE INDEX jobs_retention ON jobs (completed_at) WHERE state IN (3, 4, 5);
CREATE INDEX request_ids_created ON request_ids (created_at);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
