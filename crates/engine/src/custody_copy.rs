//! One custody copy: a provider URL streamed into the output store, bounded in size and time,
//! hashed (SHA-256) and typed (from its first bytes) on the way.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::custody::CustodyRuntime;
use crate::sniff::{SNIFF_LEN, media_type};

/// A stored copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copied {
    pub sha256: String,
    pub size_bytes: u64,
    pub mime_type: &'static str,
}

/// Why a copy failed. Messages never carry the URL (a provider's URL may embed a signature).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    /// 404 or 410: the provider's copy is gone (or not there yet).
    #[error("the provider's URL answered {0}")]
    Gone(u16),
    #[error("the output is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the provider's URL answered {0}")]
    Status(u16),
    #[error("downloading failed: {0}")]
    Network(String),
    #[error("no copy within {0:?}")]
    Timeout(std::time::Duration),
    #[error("writing the copy failed: {0}")]
    Store(String),
}

/// Copy `url` to `key`. A failed copy leaves nothing under `key` (a multipart upload is
/// aborted; a single write happens only once every byte is in).
pub(crate) async fn copy_output(
    custody: &CustodyRuntime,
    url: &str,
    key: &str,
) -> Result<Copied, CopyError> {
    let timeout = custody.config.download_timeout;
    let mut upload = custody.config.store.upload(key);
    let copied = tokio::time::timeout(timeout, stream_into(custody, url, &mut upload)).await;
    match copied {
        Ok(Ok(copied)) => {
            // The last write (a whole small output, or the final part and the completion)
            // gets its own bound: the download's time is spent.
            match tokio::time::timeout(timeout, upload.finish()).await {
                Ok(Ok(())) => Ok(copied),
                Ok(Err(e)) => Err(CopyError::Store(e.to_string())),
                Err(_) => Err(CopyError::Timeout(timeout)),
            }
        }
        Ok(Err(e)) => {
            upload.abort().await;
            Err(e)
        }
        Err(_) => {
            upload.abort().await;
            Err(CopyError::Timeout(timeout))
        }
    }
}

async fn stream_into(
    custody: &CustodyRuntime,
    url: &str,
    upload: &mut crate::output_store::Upload,
) -> Result<Copied, CopyError> {
    let limit = custody.config.max_bytes;
    let response = custody
        .client
        .get(url)
        .send()
        .await
        .map_err(|e| CopyError::Network(e.without_url().to_string()))?;
    let status = response.status().as_u16();
    match status {
        200..=299 => {}
        404 | 410 => return Err(CopyError::Gone(status)),
        _ => return Err(CopyError::Status(status)),
    }
    // A declared length over the limit is refused before a byte is read; the count below
    // catches bodies that declare none or lie.
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(CopyError::TooLarge { limit });
    }
    let mut body = response.bytes_stream();
    let mut hasher = Sha256::new();
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_LEN);
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| CopyError::Network(e.without_url().to_string()))?;
        size = size.saturating_add(chunk.len() as u64);
        if size > limit {
            return Err(CopyError::TooLarge { limit });
        }
        if head.len() < SNIFF_LEN {
            let take = (SNIFF_LEN - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        hasher.update(&chunk);
        upload
            .write(&chunk)
            .await
            .map_err(|e| CopyError::Store(e.to_string()))?;
    }
    Ok(Copied {
        sha256: hex::encode(hasher.finalize()),
        size_bytes: size,
        mime_type: media_type(&head),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::custody::{CustodyConfig, CustodyRuntime};
    use crate::output_store::{OutputStore, OutputStoreSpec};

    /// What the test server answers: a status, a Content-Length to declare (or chunked), the
    /// body, and how long to stall after the headers.
    #[derive(Clone)]
    struct Answer {
        status: u16,
        declared: Option<usize>,
        body: Vec<u8>,
        stall: Duration,
    }

    async fn serve(answer: Answer) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let a = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let length = match a.declared {
                        Some(n) => format!("content-length: {n}\r\n"),
                        None => "transfer-encoding: chunked\r\n".to_owned(),
                    };
                    let head = format!("HTTP/1.1 {} X\r\n{length}\r\n", a.status);
                    let _ = sock.write_all(head.as_bytes()).await;
                    tokio::time::sleep(a.stall).await;
                    for part in a.body.chunks(64 * 1024) {
                        let ok = if a.declared.is_some() {
                            sock.write_all(part).await
                        } else {
                            let size = format!("{:x}\r\n", part.len());
                            let mut chunk = size.into_bytes();
                            chunk.extend_from_slice(part);
                            chunk.extend_from_slice(b"\r\n");
                            sock.write_all(&chunk).await
                        };
                        if ok.is_err() {
                            return; // the client gave up (too large)
                        }
                    }
                    if a.declared.is_none() {
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                });
            }
        });
        format!("http://{addr}/out.bin")
    }

    fn runtime(dir: &std::path::Path, max_bytes: u64) -> CustodyRuntime {
        let store = OutputStore::open(&OutputStoreSpec::Directory(dir.to_owned())).unwrap();
        CustodyRuntime::new(CustodyConfig {
            max_bytes,
            download_timeout: Duration::from_secs(2),
            ..CustodyConfig::new(store)
        })
        .unwrap()
    }

    fn ok(body: Vec<u8>, chunked: bool) -> Answer {
        Answer {
            status: 200,
            declared: (!chunked).then_some(body.len()),
            body,
            stall: Duration::ZERO,
        }
    }

    fn png(len: usize) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend((0..len).map(|i| (i * 31 % 251) as u8));
        b
    }

    #[tokio::test]
    async fn a_copy_has_the_bytes_checksum_size_and_sniffed_type() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), 64 << 20);
        // Small (one write) and larger than a multipart part (streamed in parts), chunked.
        for (len, chunked) in [(1000, false), (12 << 20, true)] {
            let body = png(len);
            let url = serve(ok(body.clone(), chunked)).await;
            let key = format!("job_a/{len}");
            let copied = copy_output(&rt, &url, &key).await.unwrap();
            assert_eq!(copied.sha256, hex::encode(Sha256::digest(&body)));
            assert_eq!(copied.size_bytes, body.len() as u64);
            assert_eq!(copied.mime_type, "image/png");
            let on_disk = std::fs::read(dir.path().join("job_a").join(len.to_string())).unwrap();
            assert_eq!(on_disk, body);
        }
    }

    #[tokio::test]
    async fn too_large_is_refused_declared_or_not_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), 100_000);
        for chunked in [false, true] {
            let url = serve(ok(png(8 << 20), chunked)).await;
            let e = copy_output(&rt, &url, "job_b/0").await.unwrap_err();
            assert!(matches!(e, CopyError::TooLarge { limit: 100_000 }), "{e}");
        }
        // Exactly at the limit is fine.
        let url = serve(ok(vec![7u8; 100_000], true)).await;
        let copied = copy_output(&rt, &url, "job_b/1").await.unwrap();
        assert_eq!(copied.size_bytes, 100_000);
        assert_eq!(copied.mime_type, "application/octet-stream");
        assert!(!dir.path().join("job_b").join("0").exists());
    }

    #[tokio::test]
    async fn statuses_and_stalls_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), 1 << 20);
        for (status, gone) in [(404, true), (410, true), (500, false), (403, false)] {
            let url = serve(Answer {
                status,
                declared: Some(0),
                body: Vec::new(),
                stall: Duration::ZERO,
            })
            .await;
            let e = copy_output(&rt, &url, "job_c/0").await.unwrap_err();
            match e {
                CopyError::Gone(s) => assert!(gone && s == status),
                CopyError::Status(s) => assert!(!gone && s == status),
                other => panic!("{status}: {other}"),
            }
        }
        let url = serve(Answer {
            stall: Duration::from_secs(30),
            ..ok(png(10), false)
        })
        .await;
        let e = copy_output(&rt, &url, "job_c/1").await.unwrap_err();
        assert!(matches!(e, CopyError::Timeout(_)), "{e}");
        // Nothing listening: a network error, without the URL in its message.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/secret-token-in-path");
        let e = copy_output(&rt, &url, "job_c/2").await.unwrap_err();
        assert!(matches!(e, CopyError::Network(_)), "{e}");
        assert!(!e.to_string().contains("secret-token"), "{e}");
        assert!(!dir.path().join("job_c").exists());
    }
}
