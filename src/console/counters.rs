//! Counters for the provider page, read from the same registry `/metrics` serves, so the
//! console and a Prometheus scrape always agree (and reading creates no series).

use std::collections::BTreeMap;

use prometheus_client::registry::Registry;

/// One encoding of the registry: `(metric name, labels, value)` per sample line.
#[derive(Debug, Default)]
pub struct Counters {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Counters {
    pub fn read(registry: &Registry) -> Self {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
            return Self::default();
        }
        Self::parse(&text)
    }

    /// Sample lines of the OpenMetrics text; comments and unparsable lines are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(sample)
            .collect();
        Self { samples }
    }

    /// `metric{provider="…",outcome="…"}` summed per outcome for one provider.
    pub fn by_outcome(&self, metric: &str, provider: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (name, labels, value) in &self.samples {
            if name != metric || labels.get("provider").map(String::as_str) != Some(provider) {
                continue;
            }
            if let Some(outcome) = labels.get("outcome") {
                *out.entry(outcome.clone()).or_default() += *value as u64;
            }
        }
        out
    }
}

/// `name{k="v",…} value` (label values as prometheus-client escapes them: `\"`, `\\`, `\n`).
fn sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head.to_owned(), BTreeMap::new(), value));
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), val);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some((name.to_owned(), labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_providers_counters_by_outcome() {
        let text = "# HELP adgate_webhooks Webhooks.\n\
            # TYPE adgate_webhooks counter\n\
            adgate_webhooks_total{provider=\"pictify\",outcome=\"applied\"} 7\n\
            adgate_webhooks_total{outcome=\"refused\",provider=\"pictify\"} 2\n\
            adgate_webhooks_total{provider=\"abyssale\",outcome=\"applied\"} 3\n\
            adgate_provider_requests_total{provider=\"pictify\",endpoint=\"a,b\",outcome=\"ok\"} 4\n\
            adgate_provider_requests_total{provider=\"pictify\",endpoint=\"say \\\"hi\\\"\",outcome=\"ok\"} 1\n\
            adgate_active_watchers 0\n";
        let c = Counters::parse(text);
        let w = c.by_outcome("adgate_webhooks_total", "pictify");
        assert_eq!(w.get("applied"), Some(&7));
        assert_eq!(w.get("refused"), Some(&2));
        assert_eq!(w.len(), 2);
        let r = c.by_outcome("adgate_provider_requests_total", "pictify");
        assert_eq!(r.get("ok"), Some(&5));
        assert!(
            c.by_outcome("adgate_webhooks_total", "bannerbear")
                .is_empty()
        );
    }

    #[test]
    fn a_real_registry_is_read() {
        let metrics = adgate_engine::EngineMetrics::default();
        let mut reg = Registry::default();
        metrics.register(&mut reg);
        metrics.webhook("abyssale", "duplicate");
        metrics.webhook("abyssale", "duplicate");
        let c = Counters::read(&reg);
        let w = c.by_outcome("adgate_webhooks_total", "abyssale");
        assert_eq!(w.get("duplicate"), Some(&2));
    }
}
