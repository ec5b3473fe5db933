//! `[notify]` and the callers' `notify_secret` / `[[callers.<name>.webhooks]]`: outbound
//! webhooks as the config file and the environment give them.

use std::time::Duration;

use adgate_engine::notify::{ConfiguredEndpoint, NotifyConfig, SigningSecret, event_mask};
use serde::Deserialize;

use super::{ConfigError, Secret, secs};

/// `[notify]` in the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileNotify {
    /// Signs deliveries to URLs named in Submits, for callers without their own secret.
    secret: Option<Secret>,
    allow_http: Option<bool>,
    allow_private: Option<bool>,
    disable_after: Option<u32>,
    timeout_secs: Option<f64>,
    concurrency: Option<usize>,
    retry_delays_secs: Option<Vec<f64>>,
}

/// `[[callers.<name>.webhooks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebhook {
    name: String,
    url: String,
    secret: Secret,
    #[serde(default)]
    events: Vec<String>,
}

/// The secret the Standard Webhooks examples use is not a good default; the sandbox's is
/// fixed and documented so that the README's receiver can verify deliveries.
pub const SANDBOX_NOTIFY_SECRET: &str = "whsec_YWRnYXRlLXNhbmRib3gtbm90aWZ5LXNlY3JldC0wMQ==";

fn secret(name: &str, s: &Secret) -> Result<SigningSecret, ConfigError> {
    SigningSecret::parse(s.expose()).map_err(|e| ConfigError::invalid(name, "[redacted]", e))
}

/// Resolves `[notify]` (with `ADGATE_NOTIFY_SECRET`, `ADGATE_NOTIFY_ALLOW_HTTP`,
/// `ADGATE_NOTIFY_ALLOW_PRIVATE`). In the sandbox, plain-HTTP and local receivers are
/// allowed and the documented sandbox secret signs unless others are set.
pub(super) fn resolve(
    sandbox: bool,
    file: FileNotify,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NotifyConfig, ConfigError> {
    let mut n = NotifyConfig::default();
    let flag = |name: &str, file: Option<bool>| -> Result<Option<bool>, ConfigError> {
        match env(name) {
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => Ok(Some(true)),
                "0" | "false" | "no" | "" => Ok(Some(false)),
                _ => Err(ConfigError::invalid(name, &v, "expected true or false")),
            },
            None => Ok(file),
        }
    };
    n.policy.allow_http = flag("ADGATE_NOTIFY_ALLOW_HTTP", file.allow_http)?.unwrap_or(sandbox);
    n.policy.allow_private =
        flag("ADGATE_NOTIFY_ALLOW_PRIVATE", file.allow_private)?.unwrap_or(sandbox);
    let text = env("ADGATE_NOTIFY_SECRET")
        .filter(|v| !v.is_empty())
        .map(Secret::new)
        .or(file.secret)
        .or_else(|| sandbox.then(|| Secret::new(SANDBOX_NOTIFY_SECRET)));
    if let Some(t) = &text {
        n.default_secret = Some(secret("notify.secret", t)?);
    }
    if let Some(d) = file.disable_after {
        if d == 0 {
            return Err(ConfigError::invalid(
                "notify.disable_after",
                "0",
                "must be at least 1",
            ));
        }
        n.disable_after = d;
    }
    if let Some(t) = file.timeout_secs {
        n.timeout = secs("notify.timeout_secs", t)?;
        if n.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "notify.timeout_secs",
                "0",
                "must be > 0",
            ));
        }
    }
    if let Some(c) = file.concurrency {
        if c == 0 || c > 1024 {
            return Err(ConfigError::invalid(
                "notify.concurrency",
                &c.to_string(),
                "must be in 1..=1024",
            ));
        }
        n.concurrency = c;
    }
    if let Some(delays) = file.retry_delays_secs {
        n.retry_delays = delays
            .iter()
            .map(|d| secs("notify.retry_delays_secs", *d))
            .collect::<Result<Vec<Duration>, _>>()?;
    }
    Ok(n)
}

/// Adds one caller's `notify_secret` and webhooks.
pub(super) fn add_caller(
    n: &mut NotifyConfig,
    caller: &str,
    notify_secret: Option<&Secret>,
    webhooks: Vec<FileWebhook>,
) -> Result<(), ConfigError> {
    if let Some(s) = notify_secret {
        n.caller_secrets.insert(
            caller.to_owned(),
            secret(&format!("callers.{caller}.notify_secret"), s)?,
        );
    }
    for w in webhooks {
        let at = format!("callers.{caller}.webhooks.{}", w.name);
        if !crate::auth::is_caller_name(&w.name) {
            return Err(ConfigError::invalid(
                &format!("callers.{caller}.webhooks.name"),
                &w.name,
                "a webhook name is 1-63 of a-z 0-9 - _ .",
            ));
        }
        let id = format!("cfg:{caller}:{}", w.name);
        if n.endpoints.iter().any(|e| e.id == id) {
            return Err(ConfigError::invalid(&at, &w.name, "is named twice"));
        }
        adgate_engine::notify::target::check_url(&w.url, n.policy)
            .map_err(|why| ConfigError::invalid(&format!("{at}.url"), &w.url, why))?;
        let events = event_mask(&w.events).map_err(|unknown| {
            ConfigError::invalid(
                &format!("{at}.events"),
                &unknown,
                "expected job.completed, job.failed, job.cancelled or batch.completed",
            )
        })?;
        n.endpoints.push(ConfiguredEndpoint {
            id,
            caller: caller.to_owned(),
            url: w.url,
            events,
            secret: secret(&format!("{at}.secret"), &w.secret)?,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Settings;

    const SECRET: &str = "whsec_dGVzdC1vdXRib3VuZC13ZWJob29rLXNlY3JldC0wMDE=";

    fn load(sandbox: bool, toml: &str) -> Result<Settings, String> {
        Settings::from_toml(sandbox, toml, &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn endpoints_and_secrets_are_read() {
        let s = load(
            false,
            &format!(
                "[notify]\nsecret = \"{SECRET}\"\ndisable_after = 3\n\
                 [callers.growth]\nnotify_secret = \"{SECRET}\"\n\
                 [[callers.growth.webhooks]]\nname = \"crm\"\n\
                 url = \"https://crm.example.com/h\"\nsecret = \"{SECRET}\"\n\
                 events = [\"batch.completed\", \"job.failed\"]\n"
            ),
        )
        .unwrap();
        let n = &s.notify;
        assert!(n.default_secret.is_some() && n.caller_secrets.contains_key("growth"));
        assert_eq!(n.disable_after, 3);
        assert!(!n.policy.allow_http && !n.policy.allow_private);
        assert_eq!(n.endpoints.len(), 1);
        assert_eq!(n.endpoints[0].id, "cfg:growth:crm");
        assert_eq!(
            n.endpoints[0].events,
            adgate_store::notify::BATCH_COMPLETED | adgate_store::notify::JOB_FAILED
        );
        // The secrets never show in a dump of the settings.
        assert!(!format!("{s:?}").contains(SECRET.trim_start_matches("whsec_")));
    }

    #[test]
    fn the_sandbox_allows_local_receivers_and_signs_with_the_documented_secret() {
        let s = load(true, "").unwrap();
        assert!(s.notify.policy.allow_http && s.notify.policy.allow_private);
        assert_eq!(
            s.notify.default_secret,
            adgate_engine::notify::SigningSecret::parse(super::SANDBOX_NOTIFY_SECRET).ok()
        );
        assert!(load(false, "").unwrap().notify.default_secret.is_none());
    }

    #[test]
    fn mistakes_are_named_without_echoing_secrets() {
        for (toml, names) in [
            (
                "[notify]\nsecret = \"hunter2-not-whsec\"\n",
                "notify.secret",
            ),
            ("[notify]\ndisable_after = 0\n", "notify.disable_after"),
            (
                "[callers.g]\n[[callers.g.webhooks]]\nname = \"a\"\nurl = \"https://10.0.0.1/\"\nsecret = \"whsec_dGVzdC1vdXRib3VuZC13ZWJob29rLXNlY3JldC0wMDE=\"\n",
                "callers.g.webhooks.a.url",
            ),
            (
                "[callers.g]\n[[callers.g.webhooks]]\nname = \"a\"\nurl = \"https://x.example/\"\nsecret = \"whsec_dGVzdC1vdXRib3VuZC13ZWJob29rLXNlY3JldC0wMDE=\"\nevents = [\"job.started\"]\n",
                "callers.g.webhooks.a.events",
            ),
        ] {
            let e = load(false, toml).unwrap_err();
            assert!(e.contains(names), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
