//! Submissions on PostgreSQL: a group's submissions coalesced into three statements, and the
//! op-by-op path that handles what the coalesced one leaves (a repeated request id) or cannot
//! do (a statement failed).
//!
//! Every statement is a round trip to the server, and one writer connection serialises them,
//! so a group of 64 one-job Submits done op by op (SAVEPOINT, batch, jobs, RELEASE) costs 256
//! round trips before its COMMIT; coalesced it costs five (SAVEPOINT, request ids, batches,
//! jobs, RELEASE), whatever the group's size. Columns travel as arrays and `UNNEST … WITH
//! ORDINALITY` turns them back into rows, so each statement text is fixed and prepared once.

use std::collections::HashSet;
use std::sync::LazyLock;

use adgate_generator::JobState;
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::rows::{db, to_json};
use crate::Result;
use crate::model::{NewSubmission, SubmitOutcome};

/// The jobs of any number of submissions in one statement. Rows are inserted in array order
/// (submission by submission, each in batch order), so `pos` — the queue's tie-breaker —
/// follows the order the callers were served in.
static INSERT_JOBS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO jobs (id, batch_id, seq, provider, spec, state, group_key, correlation_key, \
         outputs, client_ref, labels, created_at, updated_at, deadline_at, revision, caller, \
         priority, cost_unit, cost_micros, cost_per_output_micros, traceparent) \
         SELECT t.id, t.batch_id, t.seq, t.provider, t.spec, {queued}, t.group_key, \
         t.correlation_key, '[]', t.client_ref, t.labels, t.created_at, t.created_at, \
         t.deadline_at, 1, t.caller, t.priority, t.cost_unit, t.cost_micros, \
         t.cost_per_output_micros, t.traceparent \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::text[], \
         $13::bigint[], $14::text[], $15::bigint[], $16::bigint[], $17::text[]) WITH ORDINALITY \
         AS t(id, batch_id, seq, provider, spec, group_key, correlation_key, client_ref, labels, \
         deadline_at, created_at, caller, priority, cost_unit, cost_micros, \
         cost_per_output_micros, traceparent, n) \
         ORDER BY t.n",
        queued = JobState::Queued.as_i64()
    )
});

const INSERT_BATCHES: &str = "INSERT INTO batches (id, created_at, job_count, caller) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[])";

/// Claims request ids; the unique key decides (no read-then-write). An id another replica's
/// writer is inserting right now makes this statement wait for that commit, then skip it.
const CLAIM_REQUEST_IDS: &str = "INSERT INTO request_ids \
     (request_id, content_hash, batch_id, created_at) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) \
     ON CONFLICT (request_id) DO NOTHING RETURNING request_id";

/// Stores every submission it can in three statements (request ids, batches, jobs) and
/// returns, per submission, `Some(Created)` or `None` for one that must go the op-by-op way:
/// its request id was claimed before (a replay or a conflict, decided by [`submit`] against
/// the stored row) or repeats one earlier in the group. An error leaves partial writes behind:
/// the caller wraps this in a savepoint and redoes the group op by op.
pub(super) async fn submit_coalesced(
    conn: &mut PgConnection,
    submissions: &[&NewSubmission],
    changes: &mut Vec<(String, i64)>,
) -> Result<Vec<Option<SubmitOutcome>>> {
    let mut taken = vec![true; submissions.len()];

    let mut seen: HashSet<&str> = HashSet::new();
    let mut claim = RequestIdColumns::default();
    for (i, s) in submissions.iter().enumerate() {
        if let Some(request_id) = s.request_id.as_deref() {
            if seen.insert(request_id) {
                claim.push(s, request_id);
            } else {
                taken[i] = false;
            }
        }
    }
    if !claim.request_ids.is_empty() {
        let claimed: HashSet<String> = sqlx::query(CLAIM_REQUEST_IDS)
            .bind(&claim.request_ids)
            .bind(&claim.hashes)
            .bind(&claim.batch_ids)
            .bind(&claim.created_at)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.try_get::<String, _>(0).map_err(db))
            .collect::<Result<_>>()?;
        for (i, s) in submissions.iter().enumerate() {
            if let Some(request_id) = &s.request_id
                && !claimed.contains(request_id)
            {
                taken[i] = false;
            }
        }
    }

    let chosen: Vec<&NewSubmission> = submissions
        .iter()
        .zip(&taken)
        .filter(|(_, t)| **t)
        .map(|(s, _)| *s)
        .collect();
    insert_batches_and_jobs(conn, &chosen).await?;

    Ok(submissions
        .iter()
        .zip(taken)
        .map(|(s, taken)| {
            taken.then(|| {
                changes.extend(s.jobs.iter().map(|j| (j.id.clone(), 1)));
                created(s)
            })
        })
        .collect())
}

/// One submission on its own. A request id already stored (by another replica, or earlier in
/// this transaction) is a replay when the content matches and a conflict when it does not.
pub(super) async fn submit(
    conn: &mut PgConnection,
    s: &NewSubmission,
    changes: &mut Vec<(String, i64)>,
) -> Result<SubmitOutcome> {
    if let Some(request_id) = &s.request_id {
        let mut claim = RequestIdColumns::default();
        claim.push(s, request_id);
        let claimed = sqlx::query(CLAIM_REQUEST_IDS)
            .bind(&claim.request_ids)
            .bind(&claim.hashes)
            .bind(&claim.batch_ids)
            .bind(&claim.created_at)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        if claimed.is_none() {
            // READ COMMITTED: this statement sees the winner's committed row.
            return crate::writer::replay(conn, request_id, &s.content_hash).await;
        }
    }
    insert_batches_and_jobs(conn, &[s]).await?;
    changes.extend(s.jobs.iter().map(|j| (j.id.clone(), 1)));
    Ok(created(s))
}

fn created(s: &NewSubmission) -> SubmitOutcome {
    SubmitOutcome::Created {
        batch_id: s.batch_id.clone(),
        job_ids: s.jobs.iter().map(|j| j.id.clone()).collect(),
    }
}

#[derive(Default)]
struct RequestIdColumns<'a> {
    request_ids: Vec<&'a str>,
    hashes: Vec<&'a str>,
    batch_ids: Vec<&'a str>,
    created_at: Vec<i64>,
}

impl<'a> RequestIdColumns<'a> {
    fn push(&mut self, s: &'a NewSubmission, request_id: &'a str) {
        self.request_ids.push(request_id);
        self.hashes.push(&s.content_hash);
        self.batch_ids.push(&s.batch_id);
        self.created_at.push(s.now_ms);
    }
}

async fn insert_batches_and_jobs(
    conn: &mut PgConnection,
    submissions: &[&NewSubmission],
) -> Result<()> {
    if submissions.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = submissions.iter().map(|s| s.batch_id.as_str()).collect();
    let created_at: Vec<i64> = submissions.iter().map(|s| s.now_ms).collect();
    let counts: Vec<i64> = submissions
        .iter()
        .map(|s| i64::try_from(s.jobs.len()).unwrap_or(i64::MAX))
        .collect();
    let callers: Vec<&str> = submissions.iter().map(|s| s.caller.as_str()).collect();
    sqlx::query(INSERT_BATCHES)
        .bind(&ids)
        .bind(&created_at)
        .bind(&counts)
        .bind(&callers)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    let notifying: Vec<(&str, &crate::notify::BatchNotify)> = submissions
        .iter()
        .filter_map(|s| Some((s.batch_id.as_str(), s.notify.as_ref()?)))
        .collect();
    crate::notify::mark_batches(conn, &notifying).await?;

    let n: usize = submissions.iter().map(|s| s.jobs.len()).sum();
    if n == 0 {
        return Ok(());
    }
    let mut c = JobColumns::with_capacity(n);
    for s in submissions {
        for (seq, job) in s.jobs.iter().enumerate() {
            c.ids.push(job.id.as_str());
            c.batch_ids.push(s.batch_id.as_str());
            c.seqs.push(i64::try_from(seq).unwrap_or(i64::MAX));
            c.providers.push(job.provider.as_str());
            c.specs.push(to_json(&job.spec, "spec")?);
            c.group_keys.push(job.group_key.as_deref());
            c.correlation_keys.push(job.correlation_key.as_deref());
            c.client_refs.push(job.client_ref.as_str());
            c.labels.push(to_json(&job.labels, "labels")?);
            c.deadlines.push(job.deadline_at_ms);
            c.created_at.push(s.now_ms);
            c.callers.push(s.caller.as_str());
            c.priorities.push(job.priority);
            c.cost_units
                .push(job.cost.as_ref().map(|c| c.unit.as_str()));
            c.cost_micros.push(job.cost.as_ref().map(|c| c.micros));
            c.cost_per_output
                .push(job.cost.as_ref().and_then(|c| c.per_output_micros));
            c.traceparents.push(job.traceparent.as_deref());
        }
    }
    sqlx::query(&INSERT_JOBS)
        .bind(&c.ids)
        .bind(&c.batch_ids)
        .bind(&c.seqs)
        .bind(&c.providers)
        .bind(&c.specs)
        .bind(&c.group_keys)
        .bind(&c.correlation_keys)
        .bind(&c.client_refs)
        .bind(&c.labels)
        .bind(&c.deadlines)
        .bind(&c.created_at)
        .bind(&c.callers)
        .bind(&c.priorities)
        .bind(&c.cost_units)
        .bind(&c.cost_micros)
        .bind(&c.cost_per_output)
        .bind(&c.traceparents)
        .execute(&mut *conn)
        .await
        .map_err(db)
        .map(drop)
}

/// The columns of [`INSERT_JOBS`], one array each.
struct JobColumns<'a> {
    ids: Vec<&'a str>,
    batch_ids: Vec<&'a str>,
    seqs: Vec<i64>,
    providers: Vec<&'a str>,
    specs: Vec<String>,
    group_keys: Vec<Option<&'a str>>,
    correlation_keys: Vec<Option<&'a str>>,
    client_refs: Vec<&'a str>,
    labels: Vec<String>,
    deadlines: Vec<i64>,
    created_at: Vec<i64>,
    callers: Vec<&'a str>,
    priorities: Vec<i64>,
    cost_units: Vec<Option<&'a str>>,
    cost_micros: Vec<Option<i64>>,
    cost_per_output: Vec<Option<i64>>,
    traceparents: Vec<Option<&'a str>>,
}

impl JobColumns<'_> {
    fn with_capacity(n: usize) -> Self {
        JobColumns {
            ids: Vec::with_capacity(n),
            batch_ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            providers: Vec::with_capacity(n),
            specs: Vec::with_capacity(n),
            group_keys: Vec::with_capacity(n),
            correlation_keys: Vec::with_capacity(n),
            client_refs: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            deadlines: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            callers: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            cost_units: Vec::with_capacity(n),
            cost_micros: Vec::with_capacity(n),
            cost_per_output: Vec::with_capacity(n),
            traceparents: Vec::with_capacity(n),
        }
    }
}
