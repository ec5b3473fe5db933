//! Where custody keeps its copies: a local directory or an S3-compatible bucket, through the
//! `object_store` crate so that both are one API (streamed writes, streamed reads).
//!
//! Keys are `<prefix>/<job id>/<output index>`: derived from ids the gateway minted, never
//! from anything a provider or caller sent, so no key can escape the prefix.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

/// S3-compatible storage settings. Credentials are not here: they come from the standard
/// `AWS_*` environment variables (read by `object_store`), so they never pass through the
/// gateway's config, logs or Debug output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix inside the bucket (without leading or trailing `/`); may be empty.
    pub prefix: String,
    /// e.g. `http://127.0.0.1:5000` for moto or MinIO; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
}

/// Where copies go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputStoreSpec {
    Directory(PathBuf),
    S3(S3Settings),
}

/// An opened output store.
#[derive(Clone)]
pub struct OutputStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    description: String,
}

impl std::fmt::Debug for OutputStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputStore")
            .field("at", &self.description)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputStoreError {
    #[error("output store: {0}")]
    Open(String),
    #[error("no stored output under {0}")]
    NotFound(String),
    #[error("output store: {0}")]
    Io(String),
}

impl From<object_store::Error> for OutputStoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => OutputStoreError::NotFound(path),
            other => OutputStoreError::Io(other.to_string()),
        }
    }
}

/// An object being read: its size and its bytes, streamed.
pub struct StoredObject {
    pub size: u64,
    pub bytes: BoxStream<'static, Result<Bytes, OutputStoreError>>,
}

/// A copy being written: small outputs are buffered and written with one request, larger ones
/// go out as a multipart upload in parts of [`PART_SIZE`], so memory stays bounded by a few
/// parts whatever the output's size.
pub(crate) struct Upload {
    store: OutputStore,
    path: Path,
    buffered: Vec<u8>,
    multipart: Option<WriteMultipart>,
}

/// S3's smallest multipart part (except the last) is 5 MiB.
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts uploaded at once by one copy.
const PARTS_IN_FLIGHT: usize = 2;

impl OutputStore {
    /// Opens (for a directory: creates) the store. S3 is not contacted here; the first copy
    /// or read reports a wrong bucket or credentials.
    pub fn open(spec: &OutputStoreSpec) -> Result<Self, OutputStoreError> {
        match spec {
            OutputStoreSpec::Directory(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    OutputStoreError::Open(format!("cannot create {}: {e}", dir.display()))
                })?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| OutputStoreError::Open(e.to_string()))?;
                Ok(Self {
                    inner: Arc::new(fs),
                    prefix: Path::default(),
                    description: format!("directory {}", dir.display()),
                })
            }
            OutputStoreSpec::S3(s3) => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(&s3.bucket);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let region = s3.region.clone().or_else(|| {
                    std::env::var("AWS_REGION")
                        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                        .ok()
                });
                builder = builder.with_region(region.unwrap_or_else(|| "us-east-1".to_owned()));
                let s3_store = builder
                    .build()
                    .map_err(|e| OutputStoreError::Open(e.to_string()))?;
                Ok(Self {
                    inner: Arc::new(s3_store),
                    prefix: Path::from(s3.prefix.trim_matches('/')),
                    description: format!("s3://{}/{}", s3.bucket, s3.prefix.trim_matches('/')),
                })
            }
        }
    }

    /// The key of a job's output (also what its `Custody::key` records).
    pub fn key(job_id: &str, index: usize) -> String {
        format!("{job_id}/{index}")
    }

    fn path(&self, key: &str) -> Path {
        key.split('/')
            .fold(self.prefix.clone(), |p, part| p.child(part))
    }

    pub(crate) fn upload(&self, key: &str) -> Upload {
        Upload {
            store: self.clone(),
            path: self.path(key),
            buffered: Vec::new(),
            multipart: None,
        }
    }

    /// The stored copy under `key`, streamed.
    pub async fn get(&self, key: &str) -> Result<StoredObject, OutputStoreError> {
        use futures_util::StreamExt;
        let got = self.inner.get(&self.path(key)).await?;
        let size = got.meta.size;
        let bytes = got
            .into_stream()
            .map(|chunk| chunk.map_err(OutputStoreError::from))
            .boxed();
        Ok(StoredObject { size, bytes })
    }
}

impl Upload {
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), OutputStoreError> {
        if let Some(multipart) = &mut self.multipart {
            multipart.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            multipart.write(chunk);
            return Ok(());
        }
        if self.buffered.len() + chunk.len() <= PART_SIZE {
            self.buffered.extend_from_slice(chunk);
            return Ok(());
        }
        let upload = self.store.inner.put_multipart(&self.path).await?;
        let mut multipart = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        multipart.write(&std::mem::take(&mut self.buffered));
        multipart.write(chunk);
        self.multipart = Some(multipart);
        Ok(())
    }

    pub(crate) async fn finish(self) -> Result<(), OutputStoreError> {
        match self.multipart {
            Some(multipart) => multipart.finish().await.map(drop)?,
            None => self
                .store
                .inner
                .put(&self.path, PutPayload::from(Bytes::from(self.buffered)))
                .await
                .map(drop)?,
        }
        Ok(())
    }

    /// Give the upload up (a multipart upload's parts are deleted; nothing was written else).
    pub(crate) async fn abort(self) {
        if let Some(multipart) = self.multipart
            && let Err(e) = multipart.abort().await
        {
            tracing::warn!(error = %e, "aborting a custody upload failed");
        }
    }
}
