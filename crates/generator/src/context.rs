//! What a provider's builder gets, as plain data, so that a registry row is one line: each
//! adapter crate exports `NAME`, `DEFAULT_BASE_URL` and a [`Build`] function named `build`.

use std::sync::Arc;
use std::time::Duration;

use crate::error::GenError;
use crate::generator::Generator;

/// One provider's resolved settings. Secrets are borrowed, never copied into logs: the type
/// has no `Debug`.
pub struct ProviderContext<'a> {
    pub api_key: &'a str,
    /// The configured base URL, or the adapter's `DEFAULT_BASE_URL`.
    pub base_url: &'a str,
    /// The default webhook secret, for every event without its own.
    pub webhook_secret: Option<&'a str>,
    /// Per-event webhook secrets, `(event, secret)`, for providers whose subscriptions are one
    /// per event with a secret each (Pictify). Empty = the default covers every event.
    pub webhook_secrets: Vec<(&'a str, &'a str)>,
    /// The provider plan the account is on (`free`, `pro`, …), when the provider's limits
    /// depend on it. `None` = the adapter's documented default plan.
    pub plan: Option<&'a str>,
    /// Whether the adapter asks the provider to resume a push subscription it finds paused.
    pub resume_subscriptions: bool,
    /// Whether the adapter creates the push subscriptions it needs (and keeps their secrets in
    /// memory) instead of using ones made by the operator.
    pub manage_subscriptions: bool,
    /// `{ADGATE_PUBLIC_URL}/webhooks/<name>` when a public URL is configured: where the
    /// provider can reach the gateway.
    pub webhook_url: Option<String>,
    pub request_timeout: Duration,
    /// Configured overrides an adapter may need to know itself (its published [`Limits`] are
    /// overridden by the engine's configuration either way). `None` = documented default.
    ///
    /// [`Limits`]: crate::Limits
    pub requests: Option<u32>,
    pub window: Option<Duration>,
    pub max_items_per_submit: Option<usize>,
    pub max_keys_per_poll: Option<usize>,
}

/// The builder every adapter crate exports as `build`.
pub type Build = fn(&ProviderContext<'_>) -> Result<Arc<dyn Generator>, GenError>;
