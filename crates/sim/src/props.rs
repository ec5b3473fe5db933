//! Property-test support shared by the adapters' `tests/props.rs` (feature `props`): JSON
//! generators biased toward a provider's field names, the invariants every parsed update must
//! hold, and a one-request HTTP server answering arbitrary statuses and bodies.
//!
//! Test-support code: failed expectations panic, as assertions do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use adgate_generator::{ProviderUpdate, RemoteState};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Arbitrary JSON biased toward the field names and values the provider's documents use, so
/// cases reach deep into the parser instead of failing at the first unknown shape.
pub fn arb_json(
    keys: &'static [&'static str],
    words: &'static [&'static str],
) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![
            any::<f64>(),
            Just(0.5),
            Just(100.0),
            Just(-1.0),
            Just(1e300),
            Just(f64::MAX)
        ]
        .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(words).prop_map(|s| Value::String(s.to_owned())),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(keys), inner), 0..7).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
    .boxed()
}

/// What every update must satisfy whatever the provider sent.
pub fn check_update(u: &ProviderUpdate) {
    if let Some(p) = &u.progress {
        assert!(
            p.percentage.is_finite() && (0.0..=100.0).contains(&p.percentage),
            "progress {} out of 0–100: {u:?}",
            p.percentage
        );
    }
    if u.state == RemoteState::Completed {
        assert!(!u.outputs.is_empty(), "Completed without outputs: {u:?}");
        assert!(
            u.outputs.iter().all(|o| !o.url.is_empty()),
            "empty URL: {u:?}"
        );
    }
    if u.state == RemoteState::Failed {
        assert!(u.error.is_some(), "Failed without an error: {u:?}");
    }
}

/// A one-request HTTP server answering `status` with `body`; returns its base URL.
pub async fn serve_once(status: u16, body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            // Drain a request body if one was announced (submit calls).
            let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                let have = buf.len() - head.find("\r\n\r\n").map_or(buf.len(), |i| i + 4);
                let mut left = len.saturating_sub(have);
                while left > 0 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            }
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
            let _ = sock.shutdown().await;
        }
    });
    format!("http://{addr}")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn statuses() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(200u16),
        Just(200),
        Just(202),
        Just(400),
        Just(401),
        Just(402),
        Just(404),
        Just(410),
        Just(422),
        Just(429),
        Just(500),
        Just(503),
        200u16..600,
    ]
}
