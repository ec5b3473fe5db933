-- adgate job store on PostgreSQL, schema version 9: retention (issue 16).
--
-- The same indexes as SQLite's 0008_retention.sql, for the same reason: every retention step
-- is a range scan over the oldest few hundred rows, never a scan of the table.
CREATE INDEX jobs_retention ON jobs (completed_at) WHERE state IN (3, 4, 5);
CREATE INDEX request_ids_created ON request_ids (created_at);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

-- Autovacuum reclaims what retention deletes. With the default scale factor (0.2), a jobs
-- table holding 30 days of 1,000,000 jobs a day would collect 6,000,000 dead rows (six days
-- of deletes) before being vacuumed; at 0.02 it is vacuumed about every 600,000 dead rows,
-- so the table stays within a few percent of what the retained rows need. Everything else
-- (autovacuum on, the cost limits, the naptime) stays at the server's settings.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE attempts SET (autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE batches SET (autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE request_ids SET (autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0.02);
