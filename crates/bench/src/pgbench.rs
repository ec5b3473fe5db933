//! Issue 16's pgbench baseline: what a small service that stores one row per request in
//! PostgreSQL achieves on this machine. A table shaped like the PostgreSQL `jobs` table, one
//! `INSERT` of a job-sized row per transaction (`synchronous_commit` left on), 64 clients,
//! `pgbench -M prepared`; measured in the same run as the gateway, like the echo baseline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;

use crate::Res;
use crate::pgdb::PgDb;
use crate::scenarios::{CALLERS, Ctx, MEASURE, WARMUP};
use crate::world;

/// The baseline's figures, kept in `Ctx` for the ratios of later scenarios.
#[derive(Debug, Clone, Copy)]
pub struct PgBaseline {
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The columns and primary key of the PostgreSQL `jobs` table after every migration
/// (`crates/store/migrations/postgres`). No secondary indexes and no foreign key to `batches`:
/// the baseline is the single-insert service a team would write, not adgate's schema.
const TABLE: &str = "CREATE TABLE jobs (
    pos                     BIGINT GENERATED ALWAYS AS IDENTITY,
    id                      TEXT   PRIMARY KEY,
    batch_id                TEXT   NOT NULL,
    seq                     BIGINT NOT NULL,
    provider                TEXT   NOT NULL,
    spec                    TEXT   NOT NULL,
    state                   BIGINT NOT NULL,
    provider_ref            TEXT,
    poll_key                TEXT,
    group_key               TEXT,
    correlation_key         TEXT,
    attempt_id              BIGINT,
    attempt_seq             BIGINT,
    progress                TEXT,
    outputs                 TEXT   NOT NULL DEFAULT '[]',
    error                   TEXT,
    client_ref              TEXT   NOT NULL,
    labels                  TEXT   NOT NULL,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL,
    completed_at            BIGINT,
    deadline_at             BIGINT NOT NULL,
    revision                BIGINT NOT NULL,
    owner                   TEXT,
    provider_result         TEXT,
    caller                  TEXT   NOT NULL DEFAULT 'anonymous',
    priority                BIGINT NOT NULL DEFAULT 2,
    cost_unit               TEXT,
    cost_micros             BIGINT,
    cost_per_output_micros  BIGINT,
    traceparent             TEXT
)";

/// One transaction = one INSERT (pgbench wraps each statement in its own transaction). Ids are
/// unique per client (`:client_id`) and random within it (a collision among ~10^6 draws from
/// 9·10^18 is negligible); the spec arrives as a bound parameter (`-D spec=…`), like a
/// service's prepared statement would send it.
const SCRIPT: &str = "\\set r random(1, 9000000000000000000)
\\set now 1764900000000
\\set deadline 1764986400000
INSERT INTO jobs (id, batch_id, seq, provider, spec, state, owner, client_ref, labels, created_at, updated_at, deadline_at, revision) VALUES ('job_' || :client_id || '_' || :r, 'bat_' || :client_id || '_' || :r, 0, 'staticadslab', :spec, 1, 'replica-1', 'bench-' || :r, '{}', :now, :now, :deadline, 1);
";

/// `pgbench` on PATH, else the Debian/Ubuntu location of the server's binaries.
fn find_pgbench() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("pgbench"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin/pgbench"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

fn run_pgbench(bin: &Path, db: &str, script: &Path, secs: u64, log: Option<&Path>) -> Res<String> {
    let spec = world::sal_spec_json(1);
    let mut cmd = Command::new(bin);
    cmd.args([
        "-n",
        "-M",
        "prepared",
        "-j",
        "2",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
    ])
    .arg("-c")
    .arg(CALLERS.to_string())
    .arg("-T")
    .arg(secs.to_string())
    .arg("-f")
    .arg(script)
    .arg("-D")
    .arg(format!("spec={spec}"));
    if let Some(prefix) = log {
        cmd.arg("-l")
            .arg(format!("--log-prefix={}", prefix.display()));
    }
    let out = cmd.arg(db).output()?;
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Per-transaction latencies (µs) from pgbench's logs (one file per thread, named
/// `<prefix>.<pid>[.<thread>]`), and the number of lines that were not a finished transaction.
fn read_logs(dir: &Path, stem: &str) -> Res<(Vec<u64>, u64)> {
    let mut lat = Vec::new();
    let mut failed = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{stem}.")));
        if !is_log {
            continue;
        }
        // client_id transaction_no time script_no time_epoch time_us [...]; `time` is the
        // transaction's latency in µs, or `failed`/`skipped`.
        for line in std::fs::read_to_string(&path)?.lines() {
            match line.split_whitespace().nth(2).map(str::parse::<u64>) {
                Some(Ok(us)) => lat.push(us),
                _ => failed += 1,
            }
        }
    }
    lat.sort_unstable();
    Ok((lat, failed))
}

/// `tps = 11395.02 (without initial connection time)` from pgbench's summary.
fn parse_tps(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Runs the baseline, reports its row, and stores it in `ctx`.
pub async fn pgbench(ctx: &mut Ctx) -> Res<()> {
    ctx.pgbench_tried = true;
    let bin =
        find_pgbench().ok_or("pgbench not found (not on PATH nor in /usr/lib/postgresql/*/bin)")?;
    let db = PgDb::create("pgbench").await?;
    let r = measure(&bin, &db).await;
    db.drop_db().await;
    let (base, n, failed, spec_len) = r?;
    ctx.pgbench = Some(base);
    ctx.report.row(
        "pgbench",
        "one INSERT per transaction, 64 clients",
        format!(
            "{:.0} inserts/s; p50 {:.2} ms, p99 {:.2} ms ({n} transactions in {} s, {failed} failed; {spec_len}-byte spec, synchronous_commit on)",
            base.tps,
            base.p50_ms,
            base.p99_ms,
            MEASURE.as_secs(),
        ),
        "-",
        crate::report::Verdict::Info,
    );
    Ok(())
}

async fn measure(bin: &Path, db: &PgDb) -> Res<(PgBaseline, usize, u64, usize)> {
    let mut conn = sqlx::PgConnection::connect(&db.url()).await?;
    sqlx::query(TABLE).execute(&mut conn).await?;
    conn.close().await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, SCRIPT)?;
    let stem = "tx";
    let prefix = dir.path().join(stem);
    let (bin, name) = (bin.to_path_buf(), db.name().to_owned());
    let (warm, secs) = (WARMUP.as_secs().max(1), MEASURE.as_secs().max(1));
    // pgbench blocks; keep it off the runtime's two workers.
    let stdout = tokio::task::spawn_blocking(move || -> Res<String> {
        run_pgbench(&bin, &name, &script, warm, None)?;
        run_pgbench(&bin, &name, &script, secs, Some(&prefix))
    })
    .await??;
    let (lat, failed) = read_logs(dir.path(), stem)?;
    if lat.is_empty() {
        return Err("pgbench logged no transaction".into());
    }
    let ms = |q: f64| crate::load::percentile(&lat, q) as f64 / 1000.0;
    let base = PgBaseline {
        // pgbench's own rate excludes the 64 connections' set-up (~0.3 s here); the count of
        // logged transactions over the nominal duration is the fallback.
        tps: parse_tps(&stdout)
            .unwrap_or(lat.len() as f64 / Duration::from_secs(secs).as_secs_f64()),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    };
    Ok((base, lat.len(), failed, world::sal_spec_json(1).len()))
}

/// Runs the baseline once per run, before the first scenario that needs it; a failure becomes
/// an error row (the scenarios then report the pgbench ratio as unavailable).
pub async fn ensure_pgbench(ctx: &mut Ctx) {
    if ctx.pgbench_tried {
        return;
    }
    if let Err(e) = pgbench(ctx).await {
        ctx.report.row(
            "pgbench",
            "scenario failed",
            e.to_string(),
            "-",
            crate::report::Verdict::Missed,
        );
    }
}
