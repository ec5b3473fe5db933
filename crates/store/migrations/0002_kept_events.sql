-- adgate job store, schema version 2: the inbox.
--
-- A verified provider event that matched no job when it arrived (a webhook before the submit's
-- answer, a callback for a job another replica has not recorded yet) is kept here, in the same
-- transaction as its delivery id, and applied once its job becomes known. `event` is the
-- engine's JSON; rows are deleted when applied or when `expires_at` passes.
CREATE TABLE kept_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    provider     TEXT    NOT NULL,
    delivery_id  TEXT,
    event        TEXT    NOT NULL,
    kept_at      INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX kept_events_provider ON kept_events (provider, id);
