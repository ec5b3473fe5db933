//! `adgate download BATCH --dir DIR`: every output of every COMPLETED job, named by
//! client_ref (sanitised; the job id when empty; `-1`, `-2` … when a job has several outputs),
//! each fetched within a time bound and checked against its Content-Length before it is moved
//! into place, so a file in DIR is always whole.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use super::output::{self, state, state_name};
use super::progress::Mode;
use super::{DownloadArgs, EXIT_JOBS_FAILED, EXIT_OK, Failure, watch};
use crate::pb;

/// Longest file name stem taken from a client_ref.
const MAX_STEM: usize = 100;

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub job_id: String,
    pub client_ref: String,
    pub url: String,
    pub file: String,
}

pub async fn run(args: DownloadArgs) -> Result<u8, Failure> {
    for b in &args.batches {
        super::status::check_batch_id(b)?;
    }
    let client = super::client(&args.conn)?;
    let jobs = watch::final_jobs(&client, &args.batches).await?;
    let mode = watch::mode(args.conn.json);
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", args.dir.display())))?;
    let mut unfinished = 0;
    for j in &jobs {
        let s = state(j);
        if s != pb::JobState::Completed {
            unfinished += 1;
            let what = format!("skipped {} {}: {}", j.id, j.client_ref, state_name(s));
            report(
                mode,
                &what,
                json!({"event": "skipped", "job_id": j.id,
                "client_ref": j.client_ref, "state": state_name(s)}),
            );
        }
    }
    let planned = plan(&jobs);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()
        .map_err(|e| Failure::gateway(format!("cannot build an HTTP client: {e}")))?;
    let dir = args.dir.clone();
    let results: Vec<(Planned, Result<u64, String>)> =
        futures_util::stream::iter(planned.into_iter().map(|p| {
            let http = http.clone();
            let path = dir.join(&p.file);
            async move {
                let r = fetch(&http, &p.url, &path).await;
                (p, r)
            }
        }))
        .buffer_unordered(args.parallel as usize)
        .collect()
        .await;
    let mut failed = 0;
    let mut bytes = 0;
    for (p, r) in &results {
        let path = dir.join(&p.file);
        match r {
            Ok(n) => {
                bytes += n;
                report(
                    mode,
                    &format!("wrote {} ({n} bytes)", path.display()),
                    json!({"event": "downloaded", "job_id": p.job_id, "client_ref": p.client_ref,
                        "url": p.url, "path": path, "bytes": n}),
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("adgate: {} ({}): {e}", p.url, p.job_id);
                if mode == Mode::Json {
                    output::emit(&json!({"event": "download_failed", "job_id": p.job_id,
                        "client_ref": p.client_ref, "url": p.url, "error": e}));
                }
            }
        }
    }
    let summary = format!(
        "{} file(s), {bytes} bytes in {}; {failed} failed; {unfinished} job(s) not COMPLETED",
        results.len() - failed,
        dir.display()
    );
    report(
        mode,
        &summary,
        json!({"event": "summary", "files": results.len() - failed, "bytes": bytes,
            "failed": failed, "not_completed": unfinished}),
    );
    Ok(
        if failed > 0 || jobs.iter().any(|j| output::is_failure(state(j))) {
            EXIT_JOBS_FAILED
        } else {
            EXIT_OK
        },
    )
}

fn report(mode: Mode, text: &str, value: serde_json::Value) {
    if mode == Mode::Json {
        output::emit(&value);
    } else {
        output::line(text);
    }
}

/// File names for every output of the COMPLETED jobs, unique within the download.
pub fn plan(jobs: &[pb::Job]) -> Vec<Planned> {
    let mut used = HashSet::new();
    let mut out = Vec::new();
    for j in jobs.iter().filter(|j| state(j) == pb::JobState::Completed) {
        let mut stem = sanitise(&j.client_ref);
        if stem.is_empty() {
            stem = sanitise(&j.id);
        }
        let several = j.outputs.len() > 1;
        // Two jobs with one client_ref: the later one also carries its job id.
        let taken = j.outputs.iter().enumerate().any(|(i, o)| {
            used.contains(&name(&stem, several.then_some(i + 1), &extension(o)).to_lowercase())
        });
        if taken {
            stem = format!("{stem}-{}", sanitise(&j.id));
        }
        for (i, o) in j.outputs.iter().enumerate() {
            let file = name(&stem, several.then_some(i + 1), &extension(o));
            used.insert(file.to_lowercase());
            out.push(Planned {
                job_id: j.id.clone(),
                client_ref: j.client_ref.clone(),
                url: o.url.clone(),
                file,
            });
        }
    }
    out
}

fn name(stem: &str, index: Option<usize>, ext: &str) -> String {
    match index {
        Some(i) => format!("{stem}-{i}.{ext}"),
        None => format!("{stem}.{ext}"),
    }
}

/// Letters, digits, `-`, `_` and `.` kept; anything else becomes `_`; no leading dot.
pub fn sanitise(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_STEM)
        .collect();
    while out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    out
}

/// From the MIME type, else the URL's own extension, else `bin`.
fn extension(o: &pb::Output) -> String {
    let by_mime = match o.mime_type.split(';').next().unwrap_or("").trim() {
        "image/png" => Some("png"),
        "image/jpeg" => Some("jpg"),
        "image/webp" => Some("webp"),
        "image/gif" => Some("gif"),
        "image/avif" => Some("avif"),
        "image/svg+xml" => Some("svg"),
        "application/pdf" => Some("pdf"),
        "video/mp4" => Some("mp4"),
        "video/webm" => Some("webm"),
        "text/html" => Some("html"),
        "application/zip" => Some("zip"),
        _ => None,
    };
    if let Some(e) = by_mime {
        return e.to_owned();
    }
    let path = o.url.split(['?', '#']).next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    match last.rsplit_once('.') {
        Some((_, e))
            if (1..=5).contains(&e.len()) && e.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            e.to_ascii_lowercase()
        }
        _ => "bin".to_owned(),
    }
}

/// Fetch `url` into `path` (through `path.part`); the byte count.
async fn fetch(http: &reqwest::Client, url: &str, path: &Path) -> Result<u64, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("not an http(s) URL".to_owned());
    }
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let expected = resp.content_length();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let got = body.len() as u64;
    if let Some(n) = expected
        && n != got
    {
        return Err(format!("got {got} bytes, Content-Length said {n}"));
    }
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    std::fs::write(&part, &body).map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    std::fs::rename(&part, path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, client_ref: &str, outputs: &[(&str, &str)]) -> pb::Job {
        pb::Job {
            id: id.into(),
            client_ref: client_ref.into(),
            state: pb::JobState::Completed as i32,
            outputs: outputs
                .iter()
                .map(|(url, mime)| pb::Output {
                    url: (*url).into(),
                    mime_type: (*mime).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_client_ref_index_and_stay_unique() {
        let jobs = [
            job("job_1", "spring/ad 1", &[("http://x/a.png", "image/png")]),
            job("job_2", "", &[("http://x/b", "image/jpeg")]),
            job(
                "job_3",
                "banners",
                &[("http://x/c.webp?sig=1", ""), ("http://x/d", "")],
            ),
            job("job_4", "spring/ad 1", &[("http://x/e.png", "image/png")]),
            job("job_5", "..hidden", &[("http://x/f.png", "image/png")]),
        ];
        let files: Vec<String> = plan(&jobs).into_iter().map(|p| p.file).collect();
        assert_eq!(
            files,
            [
                "spring_ad_1.png",
                "job_2.jpg",
                "banners-1.webp",
                "banners-2.bin",
                "spring_ad_1-job_4.png",
                "_.hidden.png",
            ]
        );
    }

    #[test]
    fn unfinished_jobs_are_not_planned() {
        let mut j = job("job_1", "a", &[("http://x/a.png", "image/png")]);
        j.state = pb::JobState::Failed as i32;
        assert!(plan(&[j]).is_empty());
    }
}
