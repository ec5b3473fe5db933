//! The provider registry: one row per provider, and the only place in `src/` that names one.
//! Adding a provider takes its adapter crate (which exports `NAME`, `DEFAULT_BASE_URL` and
//! `build`), its simulator (one line in `adgate_sim::SIMULATORS`), its message in the proto's
//! `JobSpec.provider` oneof, and one row here: configuration (`ADGATE_<NAME>_API_KEY` /
//! `_BASE_URL` / `_WEBHOOK_SECRET`, `[providers.<name>]`), help text, validation messages, the
//! sandbox and `adgate sim` all follow from the registry.

use std::time::Duration;

use adgate_engine::ProviderSetup;
use adgate_generator::{Build, Limits, ProviderContext};

use crate::config::{ConfigError, LimitOverrides, Settings};

/// One registered provider.
pub struct Entry {
    pub name: &'static str,
    pub default_base_url: &'static str,
    build: Build,
}

macro_rules! provider {
    ($krate:ident) => {
        Entry {
            name: $krate::NAME,
            default_base_url: $krate::DEFAULT_BASE_URL,
            build: $krate::build,
        }
    };
}

/// The registry.
pub const REGISTRY: &[Entry] = &[
    provider!(adgate_staticadslab),
    provider!(adgate_pictify),
    provider!(adgate_abyssale),
    provider!(adgate_bannerbear),
];

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Names of every registered provider.
pub fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|e| e.name)
}

/// The registry row for `name`.
pub fn entry(name: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// Build every provider that has an API key, with its limits (documented defaults, then the
/// configured overrides, then `time_scale`).
pub fn build(settings: &Settings) -> Result<Vec<ProviderSetup>, ConfigError> {
    let mut out = Vec::new();
    for entry in REGISTRY {
        let Some(p) = settings.providers.get(entry.name) else {
            continue;
        };
        let Some(key) = &p.api_key else {
            continue;
        };
        let cx = ProviderContext {
            api_key: key.expose(),
            base_url: p.base_url.as_deref().unwrap_or(entry.default_base_url),
            webhook_secret: p.webhook_secret.as_ref().map(|s| s.expose()),
            webhook_secrets: p
                .webhook_secrets
                .iter()
                .map(|(e, s)| (e.as_str(), s.expose()))
                .collect(),
            plan: p.plan.as_deref(),
            resume_subscriptions: p.resume_subscriptions,
            manage_subscriptions: p.manage_subscriptions,
            webhook_url: settings
                .public_url
                .as_ref()
                .map(|u| format!("{u}/webhooks/{}", entry.name)),
            request_timeout: p.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            requests: p.limits.requests,
            window: p
                .limits
                .window_secs
                .and_then(|s| Duration::try_from_secs_f64(s).ok()),
            max_items_per_submit: p.limits.max_items_per_submit,
            max_keys_per_poll: p.limits.max_keys_per_poll,
        };
        // Adapter errors describe configuration fields, never their secret values.
        let generator = (entry.build)(&cx).map_err(|e| {
            ConfigError::Other(format!("cannot configure provider {}: {e}", entry.name))
        })?;
        let limits = apply_overrides(generator.limits(), &p.limits, settings.time_scale());
        out.push(ProviderSetup {
            generator,
            limits,
            prices: p.prices.clone(),
        });
    }
    Ok(out)
}

/// Apply configured overrides, then scale every duration except the job deadline.
pub fn apply_overrides(mut l: Limits, o: &LimitOverrides, time_scale: f64) -> Limits {
    let ms = Duration::from_millis;
    if let Some(v) = o.requests {
        l.budget.requests = v;
    }
    if let Some(v) = o
        .window_secs
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        l.budget.per = v;
    }
    if let Some(v) = o.max_concurrent_submits {
        l.max_concurrent_submits = v;
    }
    if let Some(v) = o.poll_interval_ms {
        l.poll_interval = ms(v);
    }
    if let Some(v) = o.min_poll_interval_ms {
        l.min_poll_interval = ms(v);
    }
    if let Some(v) = o.max_keys_per_poll {
        l.max_keys_per_poll = v;
    }
    if let Some(v) = o.max_items_per_submit {
        l.max_items_per_submit = v;
    }
    if let Some(v) = o.first_poll_after_ms {
        l.first_poll_after = ms(v);
    }
    if let Some(v) = o.deadline_secs {
        l.default_deadline = Duration::from_secs(v);
    }
    if let Some(v) = o
        .typical_job_secs
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        l.typical_job_duration = v;
    }
    if let Some(v) = o
        .longest_job_secs
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        l.longest_job_duration = v;
    }
    if let Some(v) = o.max_running_poll_keys {
        l.max_running_poll_keys = Some(v);
    }
    if let Some(v) = o.daily_requests {
        l.daily_budget = Some(adgate_generator::RequestBudget {
            requests: v,
            per: Duration::from_secs(24 * 3600),
        });
    }
    if let Some(v) = o
        .push_check_secs
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        l.push_check_interval = (!v.is_zero()).then_some(v);
    }
    if l.min_poll_interval > l.poll_interval {
        l.poll_interval = l.min_poll_interval;
    }
    if (time_scale - 1.0).abs() > f64::EPSILON {
        let scale = |d: Duration| d.mul_f64(time_scale);
        l.budget.per = scale(l.budget.per);
        l.poll_interval = scale(l.poll_interval);
        l.min_poll_interval = scale(l.min_poll_interval);
        l.max_poll_interval = l.max_poll_interval.map(scale);
        l.first_poll_after = scale(l.first_poll_after);
        l.default_retry_after = scale(l.default_retry_after);
        l.typical_job_duration = scale(l.typical_job_duration);
        l.longest_job_duration = scale(l.longest_job_duration);
        l.lost_push_bound = scale(l.lost_push_bound);
        if let Some(d) = &mut l.daily_budget {
            d.per = scale(d.per);
        }
        l.push_check_interval = l.push_check_interval.map(scale);
    }
    l
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use adgate_generator::{CancelSupport, PushChannels, RequestBudget};

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_items_per_submit: 100,
            max_keys_per_poll: 1,
            min_poll_interval: Duration::from_secs(2),
            poll_interval: Duration::from_secs(4),
            max_poll_interval: Some(Duration::from_secs(30)),
            first_poll_after: Duration::from_secs(3),
            budget: RequestBudget {
                requests: 100,
                per: Duration::from_secs(60),
            },
            default_retry_after: Duration::from_secs(1),
            max_concurrent_submits: 4,
            idempotency: true,
            push: PushChannels::default(),
            cancel: CancelSupport::None,
            default_deadline: Duration::from_secs(900),
            typical_job_duration: Duration::from_secs(30),
            longest_job_duration: Duration::from_secs(600),
            lost_push_bound: adgate_generator::LOST_PUSH_BOUND,
            max_running_poll_keys: None,
            daily_budget: None,
            push_check_interval: None,
        }
    }

    #[test]
    fn overrides_then_scale_except_deadline() {
        let o = LimitOverrides {
            requests: Some(10),
            poll_interval_ms: Some(8000),
            max_items_per_submit: Some(20),
            ..LimitOverrides::default()
        };
        let l = apply_overrides(limits(), &o, 0.5);
        assert_eq!(l.budget.requests, 10);
        assert_eq!(l.budget.per, Duration::from_secs(30));
        assert_eq!(l.poll_interval, Duration::from_secs(4));
        assert_eq!(l.min_poll_interval, Duration::from_secs(1));
        assert_eq!(l.max_poll_interval, Some(Duration::from_secs(15)));
        assert_eq!(l.max_items_per_submit, 20);
        assert_eq!(l.lost_push_bound, Duration::from_secs(30));
        assert_eq!(
            l.default_deadline,
            Duration::from_secs(900),
            "deadline is never scaled"
        );
        assert_eq!(
            apply_overrides(limits(), &LimitOverrides::default(), 1.0),
            limits()
        );
    }

    /// Issue 21: the Pictify plan and per-event secrets come from the TOML file; a bad plan or
    /// an empty secret fails at start-up; secrets never show in a dump.
    #[test]
    fn pictify_plan_and_per_event_secrets() {
        let env = |k: &str| (k == "ADGATE_PICTIFY_API_KEY").then(|| "pk_test".to_owned());
        let toml = "[providers.pictify]\nplan = \"pro\"\n\
                    webhook_secrets = { \"render.completed\" = \"whsec_topsecret_a\" }\n";
        let s = Settings::from_toml(false, toml, &env).unwrap();
        assert!(!format!("{s:?}").contains("whsec_topsecret_a"));
        let l = &build(&s).unwrap()[0].limits;
        assert_eq!(
            (
                l.max_running_poll_keys,
                l.max_items_per_submit,
                l.budget.requests,
                l.daily_budget.map(|b| b.requests)
            ),
            (Some(3), 100, 300, Some(10_000))
        );
        let over = "[providers.pictify]\nmax_running_poll_keys = 2\ndaily_requests = 50\n";
        let l = &build(&Settings::from_toml(false, over, &env).unwrap()).unwrap()[0].limits;
        assert_eq!(
            (l.max_running_poll_keys, l.daily_budget.map(|b| b.requests)),
            (Some(2), Some(50))
        );
        let bad = Settings::from_toml(false, "[providers.pictify]\nplan = \"gold\"\n", &env);
        assert!(build(&bad.unwrap()).is_err());
        let empty = "[providers.pictify]\nwebhook_secrets = { \"render.completed\" = \"\" }\n";
        assert!(Settings::from_toml(false, empty, &env).is_err());
        let zero = "[providers.pictify]\nmax_running_poll_keys = 0\n";
        assert!(Settings::from_toml(false, zero, &env).is_err());
        let never = "[providers.pictify]\npush_check_secs = 0\n";
        let l = &build(&Settings::from_toml(false, never, &env).unwrap()).unwrap()[0].limits;
        assert_eq!(l.push_check_interval, None);
    }

    #[test]
    fn only_providers_with_keys_are_built() {
        let env = |k: &str| (k == "ADGATE_PICTIFY_API_KEY").then(|| "pk_test".to_owned());
        let s =
            Settings::from_toml(false, "[providers.pictify]\ndeadline_secs = 60", &env).unwrap();
        let setups = build(&s).unwrap();
        assert_eq!(setups.len(), 1);
        assert_eq!(setups[0].generator.name(), "pictify");
        assert_eq!(setups[0].limits.default_deadline, Duration::from_secs(60));
        assert!(names().all(|n| entry(n).is_some()));
    }
}
