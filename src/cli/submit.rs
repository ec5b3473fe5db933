//! `adgate submit FILE`: read every job first (nothing is sent if any row is bad), have the
//! gateway validate every chunk (`validate_only`: nothing is stored if any spec is refused),
//! then Submit them in chunks, each with a request id derived from the chunk's own content and
//! position, so re-running the command after any failure replays what was stored instead of
//! creating it twice; then, with `--watch`, follow the created batches.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::input::{self, Format, Row};
use super::output::{self, Costs};
use super::progress::Mode;
use super::rpc_error::describe_with;
use super::{Client, EXIT_OK, Failure, Priority, SubmitArgs, watch};
use crate::pb;

/// Most problems listed when the file has many bad rows.
const MAX_PROBLEMS_SHOWN: usize = 20;
/// Attempts of one chunk while the gateway is unavailable (safe: the request id is fixed).
const SUBMIT_ATTEMPTS: u32 = 5;
const SUBMIT_BACKOFF: Duration = Duration::from_millis(500);

pub async fn run(args: SubmitArgs) -> Result<u8, Failure> {
    let name = args.file.display().to_string();
    let bytes = std::fs::read(&args.file)
        .map_err(|e| Failure::usage(format!("cannot read {name}: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("{name} is not UTF-8 text")))?;
    let format = args.format.unwrap_or_else(|| Format::of(&args.file));
    let input = input::read(&text, format, &args.columns).map_err(|problems| {
        let mut lines: Vec<String> = problems
            .iter()
            .take(MAX_PROBLEMS_SHOWN)
            .map(|p| match p.strip_prefix("line ") {
                Some(rest) => format!("  {name}:{rest}"),
                None => format!("  {name}: {p}"),
            })
            .collect();
        if problems.len() > MAX_PROBLEMS_SHOWN {
            lines.push(format!(
                "  … and {} more",
                problems.len() - MAX_PROBLEMS_SHOWN
            ));
        }
        Failure::usage(format!(
            "{name}: {} problem(s); nothing was sent\n{}",
            problems.len(),
            lines.join("\n")
        ))
    })?;
    let client = super::client(&args.conn)?;
    let mode = watch::mode(args.conn.json);
    let priority = args
        .priority
        .map_or(pb::Priority::Unspecified, Priority::proto);
    let mut context = input.context.clone();
    if let Some(p) = args.priority {
        context.push_str(&format!("\npriority={p:?}"));
    }
    // Part of each request's id: the same file sent with another endpoint is another request.
    if let Some(url) = &args.notify_url {
        context.push_str(&format!("\nnotify={url}"));
    }
    let notify = args.notify_url.as_ref().map(|url| pb::Notify {
        url: url.clone(),
        events: Vec::new(),
    });
    let requests: Vec<(&[Row], pb::SubmitRequest)> = input
        .rows
        .chunks(args.chunk as usize)
        .enumerate()
        .map(|(i, chunk)| {
            let req = pb::SubmitRequest {
                request_id: request_id(format, &context, i, chunk),
                jobs: chunk.iter().map(|r| r.spec.clone()).collect(),
                priority: priority as i32,
                notify: notify.clone(),
                ..Default::default()
            };
            (chunk, req)
        })
        .collect();
    // Every chunk is validated before any is stored, so one bad row anywhere stores nothing.
    // The check carries the real request id: a gateway too old to know `validate_only`
    // stores the chunk, and the real call below then replays it instead of doubling it.
    let mut estimate = Costs::default();
    let mut refused: Option<Failure> = None;
    for (chunk, req) in &requests {
        let check = pb::SubmitRequest {
            validate_only: true,
            ..req.clone()
        };
        match submit_chunk(&client, check).await {
            Ok(reply) => {
                for c in &reply.estimated_cost {
                    estimate.add(Some(c));
                }
            }
            // Bad specs: keep checking the other chunks, so one run lists every bad row.
            Err(st) if st.code() == tonic::Code::InvalidArgument => {
                let f = chunk_failure(&name, &st, chunk);
                match &mut refused {
                    Some(first) => first.message.push_str(&format!("\n{}", f.message)),
                    None => refused = Some(f),
                }
            }
            Err(st) => return Err(chunk_failure(&name, &st, chunk)),
        }
    }
    if let Some(f) = refused {
        return Err(f);
    }
    if mode != Mode::Json {
        output::line(&format!(
            "{} job(s) in {} chunk(s), valid; estimated cost {estimate}",
            input.rows.len(),
            requests.len()
        ));
    }
    let mut batches = Vec::with_capacity(requests.len());
    let mut total = 0;
    for (i, (chunk, req)) in requests.iter().enumerate() {
        let reply = submit_chunk(&client, req.clone())
            .await
            .map_err(|st| stored_so_far(chunk_failure(&name, &st, chunk), &batches))?;
        let (first, last) = (
            chunk.first().map_or(0, |r| r.line),
            chunk.last().map_or(0, |r| r.line),
        );
        if mode == Mode::Json {
            output::emit(&json!({
                "event": "submitted",
                "chunk": i,
                "first_line": first,
                "last_line": last,
                "batch_id": reply.batch_id,
                "job_ids": reply.job_ids,
                "replayed": reply.replayed,
            }));
        } else {
            output::line(&format!(
                "chunk {}/{} (lines {first}-{last}): batch {}, {} job(s){}",
                i + 1,
                requests.len(),
                reply.batch_id,
                reply.job_ids.len(),
                if reply.replayed {
                    " (already submitted: replayed, nothing created)"
                } else {
                    " created"
                }
            ));
        }
        total += reply.job_ids.len();
        batches.push(reply.batch_id);
    }
    if !args.watch {
        return Ok(EXIT_OK);
    }
    watch::follow(&client, &batches, mode, total, args.results.as_ref()).await
}

/// `adgate-cli-<hash>-<chunk>`: the hash covers the input format, the CSV header and column
/// mapping, the chunk's position and its rows' text. Fixing a bad row changes only its own
/// chunk's id, so the chunks stored before it replay on the next run.
pub fn request_id(format: Format, context: &str, index: usize, rows: &[Row]) -> String {
    let mut h = Sha256::new();
    h.update(b"adgate submit v1\0");
    h.update(format!("{format:?}\0{index}\0").as_bytes());
    h.update(context.as_bytes());
    for r in rows {
        h.update(b"\0");
        h.update(r.raw.as_bytes());
    }
    let digest = h.finalize();
    format!("adgate-cli-{}-{index}", hex::encode(&digest[..16]))
}

async fn submit_chunk(
    client: &Client,
    req: pb::SubmitRequest,
) -> Result<pb::SubmitResponse, tonic::Status> {
    let mut attempt = 1;
    loop {
        match client.clone().submit(req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(st) if st.code() == tonic::Code::Unavailable && attempt < SUBMIT_ATTEMPTS => {
                tokio::time::sleep(SUBMIT_BACKOFF * 2u32.pow(attempt - 1)).await;
                attempt += 1;
            }
            Err(st) => return Err(st),
        }
    }
}

/// The gateway refused a chunk: its violations name file lines.
fn chunk_failure(name: &str, st: &tonic::Status, chunk: &[Row]) -> Failure {
    let field = |f: &str| match job_index(f) {
        Some((i, rest)) if i < chunk.len() => {
            format!("{name}:{}: {rest}", chunk[i].line)
        }
        _ => f.to_owned(),
    };
    let mut f = Failure::rpc("Submit", st);
    f.message = format!("Submit: {}", describe_with(st, &field));
    f
}

/// A failure after some chunks were stored (the gateway went away mid-file): say which, and
/// that re-running is safe.
fn stored_so_far(mut f: Failure, stored: &[String]) -> Failure {
    if !stored.is_empty() {
        f.message.push_str(&format!(
            "\nearlier chunks were stored as {}; re-running the same command (same file, same \
             --chunk) replays them, it does not create them again",
            stored.join(", ")
        ));
    }
    f
}

/// `jobs[3].staticadslab.brand_id` → (3, `staticadslab.brand_id`).
fn job_index(field: &str) -> Option<(usize, &str)> {
    let rest = field.strip_prefix("jobs[")?;
    let (n, rest) = rest.split_once(']')?;
    Some((n.parse().ok()?, rest.strip_prefix('.').unwrap_or(rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(raw: &str) -> Row {
        Row {
            line: 1,
            spec: pb::JobSpec::default(),
            raw: raw.to_owned(),
        }
    }

    #[test]
    fn request_ids_follow_content_and_position() {
        let a = [row("x"), row("y")];
        let id = request_id(Format::Jsonl, "", 0, &a);
        assert!(id.starts_with("adgate-cli-") && id.ends_with("-0") && id.len() <= 128);
        assert_eq!(id, request_id(Format::Jsonl, "", 0, &a));
        assert_ne!(id, request_id(Format::Jsonl, "", 1, &a));
        assert_ne!(id, request_id(Format::Jsonl, "", 0, &[row("x"), row("z")]));
        assert_ne!(id, request_id(Format::Csv, "h", 0, &a));
        // Row boundaries count: ["xy"] is not ["x", "y"].
        assert_ne!(id, request_id(Format::Jsonl, "", 0, &[row("xy")]));
    }

    #[test]
    fn violation_fields_name_their_job() {
        assert_eq!(
            job_index("jobs[12].staticadslab.brand_id"),
            Some((12, "staticadslab.brand_id"))
        );
        assert_eq!(job_index("jobs[0]"), Some((0, "")));
        assert_eq!(job_index("request_id"), None);
    }
}
