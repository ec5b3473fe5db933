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
