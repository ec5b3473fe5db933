//! Applying job patches on PostgreSQL: one read and one write per `apply`, however many
//! patches it carries.
//!
//! A poll round answers for up to a hundred jobs at once, and each answer is a patch. Read and
//! update row by row, that is two round trips per job on the writer's one connection, which
//! every Submit waits behind. Here the rows are read in one `SELECT … = ANY`, the patches are
//! folded in memory in the order given (with exactly the per-patch rules of the op-by-op
//! version: terminal jobs never change, a patch that changes nothing is no revision), and the
//! jobs that changed are written back in one `UPDATE … FROM UNNEST`. A job patched twice with
//! two real changes gains two revisions, as it would patch by patch.

use std::collections::HashMap;
use std::sync::LazyLock;

use sqlx::postgres::PgConnection;

use super::rows::{J_JOB_COLUMNS, JOB_COLUMNS, db, job_from_row, to_json};
use crate::Result;
use crate::model::{JobPatch, JobRecord};

/// Locks the rows (already locked by the group's prelock; kept so this stays correct on its
/// own): another replica's writer cannot change a job between this read and the UPDATE below
/// (no lost update), it waits for this group's COMMIT instead.
static SELECT_JOBS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1) FOR UPDATE"));

static UPDATE_JOBS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs AS j SET state = t.state, provider_ref = t.provider_ref, \
         poll_key = t.poll_key, progress = t.progress, outputs = t.outputs, error = t.error, \
         updated_at = $1, completed_at = t.completed_at, deadline_at = t.deadline_at, \
         provider_result = t.provider_result, cost_micros = t.cost_micros, \
         revision = j.revision + t.bumps \
         FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::bigint[]) \
         AS t(id, state, provider_ref, poll_key, progress, outputs, error, completed_at, bumps, \
              deadline_at, provider_result, cost_micros) \
         WHERE j.id = t.id RETURNING {j_columns}",
        j_columns = *J_JOB_COLUMNS
    )
});

/// A job as the patches leave it, and how many of them changed it.
struct Folded {
    /// The state before these patches (a job that becomes terminal has an event).
    before: adgate_generator::JobState,
    /// Whether the job was COMPLETED before these patches (custody is queued on completion).
    was_completed: bool,
    next: JobRecord,
    bumps: i64,
    /// Where the job first changed among this apply's changes: the order of the answer.
    first_change: Option<usize>,
}

/// Applies `patches` in order; returns every job that changed, in the order of their first
/// change, as stored (new revision). `changes` gets (id, revision) of each.
pub(super) async fn apply(
    conn: &mut PgConnection,
    patches: &[JobPatch],
    now_ms: i64,
    changes: &mut Vec<(String, i64)>,
) -> Result<Vec<JobRecord>> {
    let mut ids: Vec<&str> = patches.iter().map(|p| p.job_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(&SELECT_JOBS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let mut jobs: HashMap<String, Folded> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let record = job_from_row(row)?;
        jobs.insert(
            record.id.clone(),
            Folded {
                before: record.state,
                was_completed: record.state == adgate_generator::JobState::Completed,
                next: record,
                bumps: 0,
                first_change: None,
            },
        );
    }

    let mut changed_order = 0usize;
    for patch in patches {
        let Some(job) = jobs.get_mut(&patch.job_id) else {
            continue; // unknown job
        };
        let Some(next) = job.next.patched(patch, now_ms) else {
            continue;
        };
        job.next = next;
        job.bumps += 1;
        if job.first_change.is_none() {
            job.first_change = Some(changed_order);
            changed_order += 1;
        }
    }
    if changed_order == 0 {
        return Ok(Vec::new());
    }

    let mut c = PatchColumns::default();
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(changed_order);
    for job in jobs.values() {
        let Some(first) = job.first_change else {
            continue;
        };
        let n = &job.next;
        position.insert(n.id.as_str(), first);
        c.ids.push(n.id.as_str());
        c.states.push(n.state.as_i64());
        c.provider_refs.push(n.provider_ref.as_deref());
        c.poll_keys.push(n.poll_key.as_deref());
        c.progress.push(
            n.progress
                .as_ref()
                .map(|p| to_json(p, "progress"))
                .transpose()?,
        );
        c.outputs.push(to_json(&n.outputs, "outputs")?);
        c.errors
            .push(n.error.as_ref().map(|e| to_json(e, "error")).transpose()?);
        c.completed_at.push(n.completed_at_ms);
        c.bumps.push(job.bumps);
        c.deadlines.push(n.deadline_at_ms);
        c.provider_results.push(
            n.provider_result
                .as_ref()
                .map(|r| to_json(r, "provider_result"))
                .transpose()?,
        );
        c.cost_micros.push(n.cost.as_ref().map(|c| c.micros));
    }
    let rows = sqlx::query(&UPDATE_JOBS)
        .bind(now_ms)
        .bind(&c.ids)
        .bind(&c.states)
        .bind(&c.provider_refs)
        .bind(&c.poll_keys)
        .bind(&c.progress)
        .bind(&c.outputs)
        .bind(&c.errors)
        .bind(&c.completed_at)
        .bind(&c.bumps)
        .bind(&c.deadlines)
        .bind(&c.provider_results)
        .bind(&c.cost_micros)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let mut stored: Vec<(usize, JobRecord)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let record = job_from_row(row)?;
        let at = position
            .get(record.id.as_str())
            .copied()
            .unwrap_or(usize::MAX);
        stored.push((at, record));
    }
    // Queued in this transaction: a completion on record always has its copy on record.
    let mut custody: Vec<&str> = Vec::new();
    for (_, record) in &stored {
        if let Some(job) = jobs.get(&record.id)
            && !job.was_completed
            && record.state == adgate_generator::JobState::Completed
            && record
                .outputs
                .iter()
                .any(|o| o.custody.state == adgate_generator::CustodyState::Pending)
        {
            custody.push(record.id.as_str());
        }
    }
    super::custody::queue(conn, &custody, now_ms).await?;
    stored.sort_by_key(|(at, _)| *at);
    let changed: Vec<JobRecord> = stored.into_iter().map(|(_, r)| r).collect();
    let finished: Vec<crate::notify::Finished> = changed
        .iter()
        .filter_map(|r| crate::notify::Finished::of(jobs.get(&r.id)?.before, r))
        .collect();
    super::notify::record_finished(conn, &finished, now_ms).await?;
    changes.extend(changed.iter().map(|r| (r.id.clone(), r.revision)));
    Ok(changed)
}

/// The columns of [`UPDATE_JOBS`], one array each.
#[derive(Default)]
struct PatchColumns<'a> {
    ids: Vec<&'a str>,
    states: Vec<i64>,
    provider_refs: Vec<Option<&'a str>>,
    poll_keys: Vec<Option<&'a str>>,
    progress: Vec<Option<String>>,
    outputs: Vec<String>,
    errors: Vec<Option<String>>,
    completed_at: Vec<Option<i64>>,
    bumps: Vec<i64>,
    deadlines: Vec<i64>,
    provider_results: Vec<Option<String>>,
    cost_micros: Vec<Option<i64>>,
}
