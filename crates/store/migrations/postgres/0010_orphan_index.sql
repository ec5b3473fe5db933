-- adgate job store on PostgreSQL, schema version 10: orphans found by index (issue 16).
--
-- claim_orphans used to read a provider's live tracked jobs through jobs_provider_owner
-- (provider, owner) and keep those whose owner had lapsed or was missing: with 100,000 jobs
-- in flight at healthy replicas, every takeover pass walked all of them to find a few. It now
-- starts from the lapsed replicas (few) and reads, per lapsed owner, only that owner's
-- tracked jobs or open attempts of the provider, oldest first; the unowned ones (a replica
-- released them, or none ever claimed them) have a partial index of their own. Both are
-- ordered like the claim (created_at, pos), so a claim reads its LIMIT rows off them.
CREATE INDEX jobs_orphans_owned ON jobs (owner, provider, created_at, pos)
    WHERE state IN (1, 2) AND owner IS NOT NULL
      AND (provider_ref IS NOT NULL OR attempt_id IS NOT NULL);
CREATE INDEX jobs_orphans_unowned ON jobs (provider, created_at, pos)
    WHERE state IN (1, 2) AND owner IS NULL
      AND (provider_ref IS NOT NULL OR attempt_id IS NOT NULL);
-- claim_orphans was jobs_provider_owner's only reader (claim_own reads jobs_orphans_owned
-- now too): one index less to maintain on every job write.
DROP INDEX jobs_provider_owner;
