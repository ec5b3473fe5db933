-- adgate job store (PostgreSQL), schema version 3: the inbox.
--
-- A verified provider event that matched no job when it arrived (a webhook before the submit's
-- answer, a callback for a job another replica has not recorded yet) is kept here, in the same
-- transaction as its delivery id, and applied once its job becomes known, by whichever replica
-- sees it first. `event` is the engine's JSON; rows are deleted when applied or expired.
CREATE TABLE kept_events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider     TEXT    NOT NULL,
    delivery_id  TEXT,
    event        TEXT    NOT NULL,
    kept_at      BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL
);
CREATE INDEX kept_events_provider ON kept_events (provider, id);
