//! Output custody's configuration: the `[custody]` table of the TOML file and the
//! `ADGATE_CUSTODY_*` variables (which win), resolved into [`CustodySettings`].
//!
//! Off by default. `store = "directory"` with `directory`, or `store = "s3"` with `s3_bucket`
//! (and optionally `s3_prefix`, `s3_endpoint`, `s3_region`); a `directory` or `s3_bucket`
//! alone chooses its store. S3 credentials are never configured here: `object_store` reads the
//! standard `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` variables
//! itself, so they never pass through the gateway's settings, logs or Debug output. The
//! sandbox turns custody on with a directory beside its database unless told otherwise.

use std::path::PathBuf;
use std::time::Duration;

use adgate_engine::{OutputStoreSpec, S3Settings};
use serde::Deserialize;

use crate::config::ConfigError;

pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The sandbox's copies: this directory beside its SQLite file.
pub const SANDBOX_DIRECTORY: &str = "adgate-outputs";

/// `[custody]` in the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileCustody {
    store: Option<String>,
    directory: Option<String>,
    s3_bucket: Option<String>,
    s3_prefix: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    max_bytes: Option<u64>,
    download_timeout_secs: Option<f64>,
    concurrency: Option<usize>,
    retry_initial_secs: Option<f64>,
    retry_max_secs: Option<f64>,
    retry_horizon_secs: Option<f64>,
    expired_after: Option<u32>,
}

/// Resolved custody settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CustodySettings {
    /// `None`: custody is off.
    pub store: Option<OutputStoreSpec>,
    /// Whether `store` was decided by the operator (`store = "off"` included), so that the
    /// sandbox leaves it alone.
    pub explicit: bool,
    pub max_bytes: u64,
    pub download_timeout: Duration,
    pub concurrency: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub retry_horizon: Duration,
    pub expired_after: u32,
}

impl Default for CustodySettings {
    fn default() -> Self {
        Self {
            store: None,
            explicit: false,
            max_bytes: DEFAULT_MAX_BYTES,
            download_timeout: DEFAULT_DOWNLOAD_TIMEOUT,
            concurrency: 8,
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            retry_horizon: Duration::from_secs(6 * 3600),
            expired_after: 3,
        }
    }
}

impl CustodySettings {
    /// The sandbox's default: a directory beside its SQLite database (the working directory
    /// for any other database), unless the operator configured custody.
    pub fn sandbox_default(&mut self, database_url: &str) {
        if self.explicit {
            return;
        }
        let file = database_url
            .strip_prefix("sqlite://")
            .or_else(|| database_url.strip_prefix("sqlite:"))
            .map(|rest| rest.split('?').next().unwrap_or_default())
            .filter(|path| !path.is_empty() && !path.starts_with(':'));
        let base = file
            .and_then(|f| std::path::Path::new(f).parent().map(PathBuf::from))
            .unwrap_or_default();
        self.store = Some(OutputStoreSpec::Directory(base.join(SANDBOX_DIRECTORY)));
    }

    /// The engine's configuration over an opened store.
    pub fn engine_config(&self, store: adgate_engine::OutputStore) -> adgate_engine::CustodyConfig {
        adgate_engine::CustodyConfig {
            max_bytes: self.max_bytes,
            download_timeout: self.download_timeout,
            concurrency: self.concurrency,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
            retry_horizon: self.retry_horizon,
            expired_after: self.expired_after,
            ..adgate_engine::CustodyConfig::new(store)
        }
    }
}

fn secs(name: &str, v: f64, at_least: Duration) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| *d >= at_least && *d <= Duration::from_secs(86_400 * 365))
        .ok_or_else(|| ConfigError::Invalid {
            name: name.to_owned(),
            value: v.to_string(),
            reason: format!("must be a number of seconds, at least {at_least:?}"),
        })
}

fn parse<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::Invalid {
        name: name.to_owned(),
        value: v.to_owned(),
        reason: "not a number".to_owned(),
    })
}

/// Resolve `[custody]` and the `ADGATE_CUSTODY_*` variables.
pub(crate) fn resolve(
    file: Option<FileCustody>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CustodySettings, ConfigError> {
    let f = file.unwrap_or_default();
    let mut s = CustodySettings::default();
    let pick = |name: &str, file: Option<String>| env(name).or(file).filter(|v| !v.is_empty());

    let directory = pick("ADGATE_CUSTODY_DIR", f.directory);
    let bucket = pick("ADGATE_CUSTODY_S3_BUCKET", f.s3_bucket);
    let kind = pick("ADGATE_CUSTODY_STORE", f.store)
        .or_else(|| directory.as_ref().map(|_| "directory".to_owned()))
        .or_else(|| bucket.as_ref().map(|_| "s3".to_owned()));
    s.explicit = kind.is_some();
    s.store = match kind.as_deref() {
        None | Some("off") => None,
        Some("directory") => Some(OutputStoreSpec::Directory(PathBuf::from(
            directory.ok_or_else(|| {
                ConfigError::Other(
                    "custody store \"directory\" needs ADGATE_CUSTODY_DIR (custody.directory)"
                        .to_owned(),
                )
            })?,
        ))),
        Some("s3") => {
            let bucket = bucket.ok_or_else(|| {
                ConfigError::Other(
                    "custody store \"s3\" needs ADGATE_CUSTODY_S3_BUCKET (custody.s3_bucket)"
                        .to_owned(),
                )
            })?;
            let endpoint = pick("ADGATE_CUSTODY_S3_ENDPOINT", f.s3_endpoint);
            if let Some(e) = &endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err(ConfigError::Invalid {
                    name: "ADGATE_CUSTODY_S3_ENDPOINT".to_owned(),
                    value: e.clone(),
                    reason: "must be an http:// or https:// URL".to_owned(),
                });
            }
            Some(OutputStoreSpec::S3(S3Settings {
                bucket,
                prefix: pick("ADGATE_CUSTODY_S3_PREFIX", f.s3_prefix)
                    .unwrap_or_default()
                    .trim_matches('/')
                    .to_owned(),
                endpoint,
                region: pick("ADGATE_CUSTODY_S3_REGION", f.s3_region),
            }))
        }
        Some(other) => {
            return Err(ConfigError::Invalid {
                name: "ADGATE_CUSTODY_STORE".to_owned(),
                value: other.to_owned(),
                reason: "expected off, directory or s3".to_owned(),
            });
        }
    };

    if let Some(v) = env("ADGATE_CUSTODY_MAX_BYTES") {
        s.max_bytes = parse("ADGATE_CUSTODY_MAX_BYTES", &v)?;
    } else if let Some(v) = f.max_bytes {
        s.max_bytes = v;
    }
    if s.max_bytes == 0 {
        return Err(ConfigError::Invalid {
            name: "custody.max_bytes".to_owned(),
            value: "0".to_owned(),
            reason: "must be at least 1".to_owned(),
        });
    }
    let timeout = match env("ADGATE_CUSTODY_DOWNLOAD_TIMEOUT_SECS") {
        Some(v) => Some(parse::<f64>("ADGATE_CUSTODY_DOWNLOAD_TIMEOUT_SECS", &v)?),
        None => f.download_timeout_secs,
    };
    if let Some(t) = timeout {
        s.download_timeout = secs(
            "custody.download_timeout_secs",
            t,
            Duration::from_millis(100),
        )?;
    }
    if let Some(c) = f.concurrency {
        if c == 0 {
            return Err(ConfigError::Invalid {
                name: "custody.concurrency".to_owned(),
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        s.concurrency = c;
    }
    if let Some(v) = f.retry_initial_secs {
        s.retry_initial = secs("custody.retry_initial_secs", v, Duration::from_millis(10))?;
    }
    if let Some(v) = f.retry_max_secs {
        s.retry_max = secs("custody.retry_max_secs", v, s.retry_initial)?;
    }
    if let Some(v) = f.retry_horizon_secs {
        s.retry_horizon = secs("custody.retry_horizon_secs", v, Duration::ZERO)?;
    }
    if let Some(n) = f.expired_after {
        s.expired_after = n.max(1);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn file(toml_text: &str) -> Option<FileCustody> {
        #[derive(Deserialize)]
        struct Wrap {
            custody: FileCustody,
        }
        Some(toml::from_str::<Wrap>(toml_text).unwrap().custody)
    }

    #[test]
    fn off_by_default_and_the_sandbox_keeps_a_directory_beside_its_database() {
        let mut s = resolve(None, &env_of(&[])).unwrap();
        assert_eq!(s.store, None);
        assert_eq!(s.max_bytes, DEFAULT_MAX_BYTES);
        s.sandbox_default("sqlite:///var/lib/adgate/adgate.db");
        assert_eq!(
            s.store,
            Some(OutputStoreSpec::Directory(PathBuf::from(
                "/var/lib/adgate/adgate-outputs"
            )))
        );
        let mut s = resolve(None, &env_of(&[])).unwrap();
        s.sandbox_default("sqlite://adgate.db");
        assert_eq!(
            s.store,
            Some(OutputStoreSpec::Directory(PathBuf::from("adgate-outputs")))
        );
        // Turned off explicitly: the sandbox leaves it off.
        let mut s = resolve(None, &env_of(&[("ADGATE_CUSTODY_STORE", "off")])).unwrap();
        s.sandbox_default("sqlite://adgate.db");
        assert_eq!(s.store, None);
    }

    #[test]
    fn s3_from_file_and_environment() {
        let f = file(
            "[custody]\nstore = \"s3\"\ns3_bucket = \"b\"\ns3_prefix = \"/outs/\"\n\
             max_bytes = 1000\ndownload_timeout_secs = 5\n",
        );
        let s = resolve(
            f,
            &env_of(&[("ADGATE_CUSTODY_S3_ENDPOINT", "http://127.0.0.1:5000")]),
        )
        .unwrap();
        assert_eq!(
            s.store,
            Some(OutputStoreSpec::S3(S3Settings {
                bucket: "b".into(),
                prefix: "outs".into(),
                endpoint: Some("http://127.0.0.1:5000".into()),
                region: None,
            }))
        );
        assert_eq!(s.max_bytes, 1000);
        assert_eq!(s.download_timeout, Duration::from_secs(5));
        // The environment wins over the file.
        let f = file("[custody]\ndirectory = \"/a\"\n");
        let s = resolve(f, &env_of(&[("ADGATE_CUSTODY_DIR", "/b")])).unwrap();
        assert_eq!(s.store, Some(OutputStoreSpec::Directory("/b".into())));
    }

    #[test]
    fn bad_values_are_one_clear_line() {
        for (pairs, expect) in [
            (
                &[("ADGATE_CUSTODY_STORE", "ftp")][..],
                "invalid ADGATE_CUSTODY_STORE \"ftp\"",
            ),
            (
                &[("ADGATE_CUSTODY_STORE", "s3")][..],
                "needs ADGATE_CUSTODY_S3_BUCKET",
            ),
            (
                &[("ADGATE_CUSTODY_STORE", "directory")][..],
                "needs ADGATE_CUSTODY_DIR",
            ),
            (
                &[
                    ("ADGATE_CUSTODY_S3_BUCKET", "b"),
                    ("ADGATE_CUSTODY_S3_ENDPOINT", "minio:9000"),
                ][..],
                "invalid ADGATE_CUSTODY_S3_ENDPOINT",
            ),
            (
                &[("ADGATE_CUSTODY_MAX_BYTES", "lots")][..],
                "invalid ADGATE_CUSTODY_MAX_BYTES",
            ),
            (
                &[("ADGATE_CUSTODY_MAX_BYTES", "0")][..],
                "invalid custody.max_bytes",
            ),
        ] {
            let pairs: &'static [(&'static str, &'static str)] = pairs;
            let err = resolve(None, &env_of(pairs)).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // A misspelt key is refused, not ignored.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrap {
            custody: FileCustody,
        }
        assert!(toml::from_str::<Wrap>("[custody]\nbucket = \"x\"\n").is_err());
    }
}
