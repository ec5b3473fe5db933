-- adgate job store, schema version 3: the provider's own result fields (issue 20).
--
-- `provider_result` is the provider's job-level result object as JSON text, verbatim minus the
-- fields the gateway maps to typed fields (e.g. a StaticAdsLab ad's `current_json_tree`,
-- `figma_render_url`, `sku_code`, `duration_ms` [SEED-2]). Nullable: rows stored before this
-- version, and jobs whose provider said nothing more, have NULL.
ALTER TABLE jobs ADD COLUMN provider_result TEXT;
