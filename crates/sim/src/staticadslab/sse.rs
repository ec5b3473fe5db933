//! `GET /v1/image-ads/{id}`: the JSON view, or the SSE stream of one ad.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::gateway::with_rate_headers;
use super::{HEARTBEAT, Sim, Status};

// ---------------------------------------------------------------------------------------------
// GET /v1/image-ads/{id} (JSON or SSE)
// ---------------------------------------------------------------------------------------------

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

pub(super) async fn get_ad(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let sse = wants_sse(&headers);
    let endpoint = if sse {
        "SSE /v1/image-ads/:id"
    } else {
        "GET /v1/image-ads/:id"
    };
    let ctx = match sim.gate(&headers, endpoint).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = match sim.view(&id) {
        None => sim.error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Image ad {id} not found"),
        ),
        Some((data, ..)) if !sse => sim.success(StatusCode::OK, data),
        Some(_) => {
            tokio::time::sleep(ctx.faults.latency).await;
            if ctx.drop {
                return sim.finish(&ctx, Response::new(Body::empty()), true).await;
            }
            let stream = sse_stream(sim.clone(), id, ctx.faults.sse_drop_after);
            let mut resp = Response::new(Body::from_stream(stream));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return with_rate_headers(resp, &ctx.rate);
        }
    };
    sim.finish(&ctx, resp, false).await
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Start,
    Running,
    Done,
}

struct SseState {
    sim: Arc<Sim>,
    id: String,
    phase: Phase,
    sent: u32,
    drop_after: Option<u32>,
    last_progress: Option<(usize, u32)>,
    next_heartbeat: Instant,
    heartbeat: Duration,
}

fn frame(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// One SSE stream: `started`, then `progress` on each step or 10 % change, `heartbeat` every
/// 15 s (scaled) with empty data, and `complete`/`error`, after which the server closes
/// ([SEED-1]; closing after the terminal event is the stricter reading of open question 6).
fn sse_stream(
    sim: Arc<Sim>,
    id: String,
    drop_after: Option<u32>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let heartbeat = sim.scaled(HEARTBEAT).max(Duration::from_millis(1));
    let state = SseState {
        sim,
        id,
        phase: Phase::Start,
        sent: 0,
        drop_after,
        last_progress: None,
        next_heartbeat: Instant::now() + heartbeat,
        heartbeat,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.phase == Phase::Done {
            return None;
        }
        if st.drop_after.is_some_and(|n| st.sent >= n) {
            st.phase = Phase::Done;
            st.sim.ledger.dropped();
            // Let hyper flush the events already yielded before the connection is aborted.
            tokio::time::sleep(Duration::from_millis(5)).await;
            return Some((Err(std::io::Error::other("sse stream dropped")), st));
        }
        let chunk = next_event(&mut st).await;
        st.sent += 1;
        Some((Ok(chunk), st))
    })
}

async fn next_event(st: &mut SseState) -> Bytes {
    if st.phase == Phase::Start {
        st.phase = Phase::Running;
        return frame("started", &json!({"id": st.id}).to_string());
    }
    loop {
        let Some((data, status, idx, pct, due)) = st.sim.view(&st.id) else {
            st.phase = Phase::Done;
            return frame(
                "error",
                &json!({"code": "NOT_FOUND", "message": "Image ad not found"}).to_string(),
            );
        };
        match status {
            Status::Completed => {
                st.phase = Phase::Done;
                return frame("complete", &json!({"id": st.id}).to_string());
            }
            Status::Failed => {
                st.phase = Phase::Done;
                return frame("error", &data["error"].to_string());
            }
            Status::Processing => {}
        }
        let key = (idx, (pct * 10.0) as u32);
        if st.last_progress != Some(key) {
            st.last_progress = Some(key);
            return frame("progress", &data["progress"].to_string());
        }
        let now = Instant::now();
        if now >= st.next_heartbeat {
            st.next_heartbeat = now + st.heartbeat;
            return frame("heartbeat", "");
        }
        // Wake for the next heartbeat, the finish, or a progress tick, whichever is first.
        let tick = st
            .sim
            .scaled(st.sim.cfg.job_duration.0 / 20)
            .clamp(Duration::from_millis(2), Duration::from_millis(500));
        let wake = st.next_heartbeat.min(due).min(now + tick);
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
}
