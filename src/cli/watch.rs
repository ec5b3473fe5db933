//! `adgate watch` (and `submit --watch`): one WatchProgress stream per batch, reconnected when
//! the gateway drains or the connection drops (the new snapshot loses nothing), merged into
//! one [`Tracker`]; at the end the batches' final state (BatchStatus), the results file and
//! the exit code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::output;
use super::progress::{Mode, Tracker};
use super::{Client, EXIT_JOBS_FAILED, EXIT_OK, Failure, WatchArgs};
use crate::pb;

/// How often the bars are redrawn.
const REDRAW: Duration = Duration::from_millis(200);
/// A stream that keeps failing this long without a message gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// Before any message arrived, a failing gateway is more likely a wrong --target than a
/// restart: give up sooner.
const FIRST_CONNECT_FOR: Duration = Duration::from_secs(3);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// How often the bars ask the gateway for its completion estimate (a BatchStatus per batch).
const GATEWAY_ETA_EVERY: Duration = Duration::from_secs(5);

pub fn mode(json: bool) -> Mode {
    if json {
        Mode::Json
    } else if std::io::stdout().is_terminal() {
        Mode::Bar
    } else {
        Mode::Plain
    }
}

pub async fn run_cmd(args: WatchArgs) -> Result<u8, Failure> {
    for b in &args.batches {
        super::status::check_batch_id(b)?;
    }
    let client = super::client(&args.conn)?;
    follow(
        &client,
        &args.batches,
        mode(args.conn.json),
        0,
        args.results.as_ref(),
    )
    .await
}

enum Update {
    Job(Box<pb::Job>),
    Done,
}

/// Follow `batches` until every job is terminal; write the results; the exit code.
pub async fn follow(
    client: &Client,
    batches: &[String],
    mode: Mode,
    expected: usize,
    results: Option<&PathBuf>,
) -> Result<u8, Failure> {
    let label = match batches {
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} +{} batch(es)", rest.len()),
        [] => return Ok(EXIT_OK),
    };
    let mut tracker = Tracker::new(mode, label, expected);
    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let mut tasks = JoinSet::new();
    for b in batches {
        tasks.spawn(stream_batch(client.clone(), b.clone(), tx.clone()));
    }
    drop(tx);
    let mut open = batches.len();
    let mut tick = tokio::time::interval(REDRAW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut eta_tick = tokio::time::interval(GATEWAY_ETA_EVERY);
    eta_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while open > 0 {
        tokio::select! {
            u = rx.recv() => match u {
                Some(Update::Job(job)) => tracker.update(&job),
                Some(Update::Done) => open -= 1,
                // Every stream task ended without finishing: one of them failed.
                None => break,
            },
            Some(done) = tasks.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(f)) => {
                    tracker.draw();
                    return Err(f);
                }
                Err(e) => return Err(Failure::gateway(format!("a watch task failed: {e}"))),
            },
            _ = tick.tick() => tracker.draw(),
            _ = eta_tick.tick(), if mode == Mode::Bar => {
                tracker.set_gateway_eta(gateway_eta(client, batches).await);
            }
        }
    }
    tracker.draw();
    let jobs = final_jobs(client, batches).await?;
    tracker.summary(&jobs);
    if let Some(path) = results {
        output::write_results(path, &jobs).map_err(|e| {
            Failure::usage(format!("cannot write results to {}: {e}", path.display()))
        })?;
    }
    Ok(exit_code(&jobs))
}

pub fn exit_code(jobs: &[pb::Job]) -> u8 {
    if jobs.iter().any(|j| output::is_failure(output::state(j))) {
        EXIT_JOBS_FAILED
    } else {
        EXIT_OK
    }
}

/// The latest `estimated_completion_time` of the batches, when the gateway gives one (a
/// gateway without it, or a failed call, leaves the local estimate from the rate).
async fn gateway_eta(client: &Client, batches: &[String]) -> Option<SystemTime> {
    let mut latest = None;
    for b in batches {
        let r = client
            .clone()
            .batch_status(pb::BatchStatusRequest {
                job_ids: Vec::new(),
                batch_id: b.clone(),
            })
            .await
            .ok()?
            .into_inner();
        let Some(t) = r.estimated_completion_time else {
            continue;
        };
        let t = SystemTime::try_from(t).ok()?;
        latest = latest.max(Some(t));
    }
    latest
}

/// Every job of `batches`, in batch and submission order.
pub async fn final_jobs(client: &Client, batches: &[String]) -> Result<Vec<pb::Job>, Failure> {
    let mut jobs = Vec::new();
    for b in batches {
        let r = client
            .clone()
            .batch_status(pb::BatchStatusRequest {
                job_ids: Vec::new(),
                batch_id: b.clone(),
            })
            .await
            .map_err(|st| Failure::rpc(&format!("BatchStatus {b}"), &st))?;
        jobs.extend(r.into_inner().jobs);
    }
    Ok(jobs)
}

/// A drain (UNAVAILABLE) or a broken connection: reconnecting may help.
fn retryable(st: &tonic::Status) -> bool {
    match st.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Internal => {
            let m = st.message();
            m.contains("h2") || m.contains("transport") || m.contains("connection")
        }
        _ => false,
    }
}

/// One batch's stream, reconnected while the gateway is unavailable (bounded).
async fn stream_batch(
    mut client: Client,
    batch: String,
    tx: mpsc::Sender<Update>,
) -> Result<(), Failure> {
    let mut failing_since: Option<Instant> = None;
    let mut answered = false;
    loop {
        let req = pb::WatchProgressRequest {
            job_ids: Vec::new(),
            batch_id: batch.clone(),
        };
        let err = match client.watch_progress(req).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            failing_since = None;
                            answered = true;
                            if let Some(pb::watch_progress_response::Event::Job(job)) = msg.event
                                && tx.send(Update::Job(Box::new(job))).await.is_err()
                            {
                                return Ok(());
                            }
                        }
                        Ok(None) => {
                            let _ = tx.send(Update::Done).await;
                            return Ok(());
                        }
                        Err(st) => break st,
                    }
                }
            }
            Err(st) => st,
        };
        if failing_since.is_none() && answered && retryable(&err) {
            // On stderr, so stdout stays one line (or one JSON object) per job change.
            eprintln!(
                "adgate: WatchProgress {batch} ended ({:?}: {}); reconnecting",
                err.code(),
                err.message()
            );
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        let patience = if answered {
            RECONNECT_FOR
        } else {
            FIRST_CONNECT_FOR
        };
        if !retryable(&err) || since.elapsed() > patience {
            return Err(Failure::rpc(&format!("WatchProgress {batch}"), &err));
        }
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}
