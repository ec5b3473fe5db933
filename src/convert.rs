//! Conversions between the public proto messages and the engine's model: job envelopes and
//! `Struct`s in, job records → `adgate.v1.Job` out. Provider messages → spec JSON is generic,
//! in [`crate::spec_json`].

use std::collections::BTreeMap;
use std::time::Duration;

use adgate_engine::JobRecord;
use adgate_engine::ProviderStatus;
use adgate_generator::JobState;
use serde_json::{Map, Number, Value};

use crate::errors::Violation;
use crate::pb;

/// `google.protobuf.Struct` → a JSON object. Integral numbers become JSON integers (protobuf
/// has only doubles); non-finite numbers are reported, since JSON cannot hold them.
pub fn struct_to_json(s: &prost_types::Struct, path: &str, out: &mut Vec<Violation>) -> Value {
    let mut o = Map::new();
    for (k, v) in &s.fields {
        o.insert(k.clone(), value_to_json(v, &format!("{path}.{k}"), out));
    }
    Value::Object(o)
}

fn value_to_json(v: &prost_types::Value, path: &str, out: &mut Vec<Violation>) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            // 2^53: beyond it an f64 no longer holds every integer exactly.
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                Value::from(*n as i64)
            } else if let Some(num) = Number::from_f64(*n) {
                Value::Number(num)
            } else {
                out.push(Violation::new(path.to_owned(), "must be a finite number"));
                Value::Null
            }
        }
        Some(Kind::StructValue(s)) => struct_to_json(s, path, out),
        Some(Kind::ListValue(l)) => Value::Array(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v, &format!("{path}[{i}]"), out))
                .collect(),
        ),
    }
}

/// A JSON object → `google.protobuf.Struct`, the inverse of [`struct_to_json`]. Numbers
/// become doubles (protobuf has no other number type).
pub fn json_to_struct(o: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(*b),
        // Every JSON number has an f64 reading (large integers lose precision, as in JSON
        // readers everywhere).
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The `provider_result` keys a StaticAdsLab job maps to [`pb::StaticAdsLabAd`] [SEED-2].
const STATICADSLAB_TYPED: [&str; 9] = [
    "version_id",
    "current_version_id",
    "sku_code",
    "editable",
    "current_json_tree",
    "figma_render_url",
    "initial_figma_render_url",
    "duration_ms",
    "batch_id",
];

/// The typed StaticAdsLab fields of a job, from the ad resource the adapter kept [SEED-2].
fn staticadslab_ad(o: &Map<String, Value>) -> pb::StaticAdsLabAd {
    let text = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    pb::StaticAdsLabAd {
        sku_code: text("sku_code"),
        editable: o.get("editable").and_then(Value::as_bool).unwrap_or(false),
        // `null` until the ad completes [SEED-2]: unset then.
        current_json_tree: o
            .get("current_json_tree")
            .and_then(Value::as_object)
            .map(json_to_struct),
        figma_render_url: text("figma_render_url"),
        initial_figma_render_url: text("initial_figma_render_url"),
        duration: o
            .get("duration_ms")
            .and_then(Value::as_f64)
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| duration(Duration::from_secs_f64((ms / 1000.0).min(1e12)))),
        batch_id: text("batch_id"),
        // `current_version_id` is not a documented field (providers.md); an edit job records
        // its own version as `version_id`.
        version_id: Some(text("version_id"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| text("current_version_id")),
    }
}

/// A job's `provider_result` and, for StaticAdsLab, the typed ad fields taken out of it.
fn provider_result(r: &JobRecord) -> (Option<prost_types::Struct>, Option<pb::StaticAdsLabAd>) {
    let Some(Value::Object(o)) = &r.provider_result else {
        return (None, None);
    };
    // The typed fields describe an image ad; a design template's resource stays verbatim.
    if r.provider != adgate_staticadslab::NAME
        || adgate_staticadslab::spec::is_design_template(&r.spec)
    {
        return (Some(json_to_struct(o)), None);
    }
    let ad = staticadslab_ad(o);
    // Straight from the record: a copy of the whole resource to remove keys from cost more
    // than the conversion itself.
    let rest = prost_types::Struct {
        fields: o
            .iter()
            .filter(|(k, _)| !STATICADSLAB_TYPED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    };
    let rest = (!rest.fields.is_empty()).then_some(rest);
    (rest, Some(ad))
}

/// Check a `JobSpec`'s gateway-level fields (everything but the provider spec).
pub fn check_envelope(i: usize, spec: &pb::JobSpec, out: &mut Vec<Violation>) -> Option<Duration> {
    const MAX_CLIENT_REF: usize = 256;
    const MAX_LABELS: usize = 32;
    const MAX_LABEL_KEY: usize = 63;
    const MAX_LABEL_VALUE: usize = 256;
    const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);
    if spec.client_ref.chars().count() > MAX_CLIENT_REF {
        out.push(Violation::new(
            format!("jobs[{i}].client_ref"),
            format!("at most {MAX_CLIENT_REF} characters"),
        ));
    }
    if spec.labels.len() > MAX_LABELS {
        out.push(Violation::new(
            format!("jobs[{i}].labels"),
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in &spec.labels {
        if k.is_empty() || k.chars().count() > MAX_LABEL_KEY {
            out.push(Violation::new(
                format!("jobs[{i}].labels"),
                format!("label keys must be 1–{MAX_LABEL_KEY} characters"),
            ));
        }
        if v.chars().count() > MAX_LABEL_VALUE {
            out.push(Violation::new(
                format!("jobs[{i}].labels[{k}]"),
                format!("label values must be at most {MAX_LABEL_VALUE} characters"),
            ));
        }
    }
    let d = spec.deadline?;
    match Duration::try_from(d) {
        Ok(d) if !d.is_zero() && d <= MAX_DEADLINE => Some(d),
        _ => {
            out.push(Violation::new(
                format!("jobs[{i}].deadline"),
                "must be greater than 0 and at most 24h",
            ));
            None
        }
    }
}

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

fn sat_i32(v: impl TryInto<i32>) -> i32 {
    v.try_into().unwrap_or(i32::MAX)
}

pub fn state(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Processing => pb::JobState::Processing,
        JobState::Completed => pb::JobState::Completed,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// Where the HTTP listener serves stored outputs: `{OUTPUTS_PATH}/{job id}/{output index}`.
pub const OUTPUTS_PATH: &str = "/outputs";

pub fn custody_state(s: adgate_generator::CustodyState) -> pb::CustodyState {
    use adgate_generator::CustodyState as C;
    match s {
        C::Off => pb::CustodyState::Unspecified,
        C::Pending => pb::CustodyState::Pending,
        C::Stored => pb::CustodyState::Stored,
        C::Failed => pb::CustodyState::Failed,
    }
}

fn job_error(e: &adgate_generator::JobError) -> pb::JobError {
    pb::JobError {
        code: e.code.clone(),
        message: e.message.clone(),
        retryable: e.retryable,
        provider_code: e.provider_code.clone(),
        failed_formats: e
            .failed_formats
            .iter()
            .map(|f| pb::FormatFailure {
                format: f.format.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
    }
}

/// Make stored outputs' URLs absolute: `base` is the HTTP listener's public base URL.
pub fn with_outputs_base(mut job: pb::Job, base: &str) -> pb::Job {
    set_outputs_base(&mut job, base);
    job
}

/// [`with_outputs_base`] in place: a `pb::Job` is large (hundreds of bytes), and BatchStatus
/// builds a hundred per call, so each move of one shows in its profile.
pub fn set_outputs_base(job: &mut pb::Job, base: &str) {
    if !base.is_empty() {
        for o in &mut job.outputs {
            if o.stored_url.starts_with('/') {
                o.stored_url = format!("{}{}", base.trim_end_matches('/'), o.stored_url);
            }
        }
    }
}

/// A job with what its provider billed for it (see `Engine::cost`).
pub fn job_billed(r: &JobRecord, cost: Option<adgate_engine::StoredCost>) -> pb::Job {
    let mut job = job(r);
    job.cost = cost.map(|c| cost_in(c.unit, c.micros));
    job
}

/// A cost in `unit`: money units (three upper-case letters, ISO 4217) also set
/// `currency_code`.
pub fn cost_of(unit: &str, micros: i64) -> pb::Cost {
    cost_in(unit.to_owned(), micros)
}

/// [`cost_of`] for a unit the caller gives away, so it is not copied.
fn cost_in(unit: String, micros: i64) -> pb::Cost {
    let money = unit.len() == 3 && unit.bytes().all(|b| b.is_ascii_uppercase());
    pb::Cost {
        currency_code: if money { unit.clone() } else { String::new() },
        micros,
        unit,
    }
}

/// Costs per unit.
pub fn costs(sums: &[(String, i64)]) -> Vec<pb::Cost> {
    sums.iter().map(|(u, m)| cost_of(u, *m)).collect()
}

/// The proto priority of a stored one.
pub fn priority(p: i64) -> pb::Priority {
    match p {
        1 => pb::Priority::Interactive,
        3 => pb::Priority::Bulk,
        _ => pb::Priority::Normal,
    }
}

pub fn job(r: &JobRecord) -> pb::Job {
    let (provider_result, staticadslab) = provider_result(r);
    pb::Job {
        id: r.id.clone(),
        batch_id: r.batch_id.clone(),
        provider: r.provider.clone(),
        provider_job_id: r.provider_ref.clone().unwrap_or_default(),
        state: state(r.state).into(),
        progress: r.progress.as_ref().map(|p| pb::Progress {
            step: p.step.clone(),
            message: p.message.clone(),
            percentage: p.percentage,
        }),
        outputs: r
            .outputs
            .iter()
            .map(|o| pb::Output {
                url: o.url.clone(),
                width: sat_i32(o.width),
                height: sat_i32(o.height),
                format: o.format.clone(),
                mime_type: o.mime_type.clone(),
                provider_fields: (!o.provider_fields.is_empty())
                    .then(|| json_to_struct(&o.provider_fields)),
                custody: custody_state(o.custody.state).into(),
                stored_url: if o.custody.key.is_empty() {
                    String::new()
                } else {
                    format!("{OUTPUTS_PATH}/{}", o.custody.key)
                },
                sha256: o.custody.sha256.clone(),
                size_bytes: i64::try_from(o.custody.size_bytes).unwrap_or(i64::MAX),
                stored_mime_type: o.custody.mime_type.clone(),
                custody_error: o.custody.error.as_ref().map(job_error),
            })
            .collect(),
        error: r.error.as_ref().map(job_error),
        client_ref: r.client_ref.clone(),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        create_time: Some(timestamp(r.created_at_ms)),
        update_time: Some(timestamp(r.updated_at_ms)),
        complete_time: r.completed_at_ms.map(timestamp),
        deadline_time: Some(timestamp(r.deadline_at_ms)),
        revision: r.revision,
        provider_result,
        staticadslab,
        cost: None,
        caller: r.caller.clone(),
        priority: priority(r.priority).into(),
        queue_position: 0,
        estimated_start_time: None,
    }
}

/// Counts per state, in state order, omitting empty states.
pub fn state_counts<'a>(jobs: impl IntoIterator<Item = &'a JobRecord>) -> Vec<pb::StateCount> {
    let mut counts: BTreeMap<i64, i32> = BTreeMap::new();
    for j in jobs {
        *counts.entry(j.state.as_i64()).or_default() += 1;
    }
    counts
        .into_iter()
        .filter_map(|(s, count)| {
            let s = JobState::from_i64(s)?;
            Some(pb::StateCount {
                state: state(s).into(),
                count,
            })
        })
        .collect()
}

pub fn provider(p: &ProviderStatus) -> pb::ProviderInfo {
    let (health, reason) = if !p.reachable {
        (
            pb::ProviderHealth::Unreachable,
            p.last_error.clone().unwrap_or_else(|| "unreachable".into()),
        )
    } else if let Some(r) = &p.degraded_reason {
        (pb::ProviderHealth::Degraded, r.clone())
    } else {
        (pb::ProviderHealth::Serving, String::new())
    };
    let l = &p.limits;
    pb::ProviderInfo {
        name: p.name.clone(),
        health: health.into(),
        reason,
        limits: Some(pb::ProviderLimits {
            requests_per_window: sat_i32(l.budget.requests),
            window: Some(duration(l.budget.per)),
            max_items_per_submit: sat_i32(l.max_items_per_submit),
            max_keys_per_poll: sat_i32(l.max_keys_per_poll),
            poll_interval: Some(duration(l.poll_interval)),
            max_concurrent_submits: sat_i32(l.max_concurrent_submits),
            idempotency: l.idempotency,
            sse: l.push.sse,
            webhooks: l.push.webhooks,
            default_deadline: Some(duration(l.default_deadline)),
            max_poll_interval: Some(duration(l.max_poll_interval.unwrap_or(l.poll_interval))),
            backstop_first_poll: p.backstop.map(|(first, _)| duration(first)),
            backstop_max_interval: p.backstop.map(|(_, cap)| duration(cap)),
            reconcile_window: p.reconcile_window.map(duration),
            max_running_batches: l.max_running_poll_keys.map_or(0, sat_i32),
            requests_per_day: l.daily_budget.map_or(0, |b| sat_i32(b.requests)),
            push_check_interval: l.push_check_interval.map(duration),
        }),
        in_flight_jobs: sat_i32(p.in_flight),
        running_batches: sat_i32(p.running_poll_keys),
        push_subscriptions: p
            .push
            .iter()
            .flat_map(|h| h.subscriptions.iter())
            .map(|s| pb::PushSubscription {
                id: s.id.clone(),
                event: s.event.clone(),
                status: s.status.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    /// The generic conversion (see `spec_json`) on one provider message.
    fn ps(p: pb::job_spec::Provider, out: &mut Vec<Violation>) -> (String, Value) {
        let spec = pb::JobSpec {
            provider: Some(p),
            ..Default::default()
        };
        crate::spec_json::provider_spec(&spec, out).unwrap()
    }

    fn pv(kind: prost_types::value::Kind) -> prost_types::Value {
        prost_types::Value { kind: Some(kind) }
    }

    fn pstruct(fields: Vec<(&str, prost_types::Value)>) -> prost_types::Struct {
        prost_types::Struct {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    #[test]
    fn staticadslab_spec_json() {
        let m = pb::StaticAdsLabImageAd {
            design_template_id: "dt_1".into(),
            brand_id: "brand_1".into(),
            product_id: "prod_1".into(),
            audience_id: "aud_1".into(),
            prompt: String::new(),
            editable: true,
            options: Some(pb::StaticAdsLabOptions {
                generate_ai_images: true,
                generate_copy: false,
            }),
            node_overrides: HashMap::from([
                (
                    "title".to_owned(),
                    pb::NodeOverride {
                        value: Some(pb::node_override::Value::Characters("Hi".into())),
                    },
                ),
                (
                    "hero".to_owned(),
                    pb::NodeOverride {
                        value: Some(pb::node_override::Value::ImageFillUrl(
                            "https://x/a.png".into(),
                        )),
                    },
                ),
            ]),
            ..Default::default()
        };
        let mut out = Vec::new();
        let (name, v) = ps(pb::job_spec::Provider::Staticadslab(m), &mut out);
        assert_eq!(name, "staticadslab");
        assert!(out.is_empty());
        assert_eq!(
            v,
            json!({"design_template_id":"dt_1","brand_id":"brand_1","product_id":"prod_1","audience_id":"aud_1",
                   "editable":true,"options":{"generate_ai_images":true},
                   "node_overrides":{"title":{"characters":"Hi"},"hero":{"image_fill_url":"https://x/a.png"}}})
        );
    }

    #[test]
    fn pictify_spec_json() {
        use prost_types::value::Kind;
        let m = pb::PictifyRender {
            template_uid: "tpl_1".into(),
            variables: Some(pstruct(vec![
                ("name", pv(Kind::StringValue("Ada".into()))),
                ("count", pv(Kind::NumberValue(3.0))),
                ("ratio", pv(Kind::NumberValue(0.5))),
                (
                    "tags",
                    pv(Kind::ListValue(prost_types::ListValue {
                        values: vec![pv(Kind::BoolValue(true))],
                    })),
                ),
            ])),
            format: pb::PictifyFormat::Webp.into(),
            quality: Some(0.8),
            layout: String::new(),
            concurrency: Some(3),
            layouts: vec!["story".into()],
        };
        let mut out = Vec::new();
        let (_, v) = ps(pb::job_spec::Provider::Pictify(m.clone()), &mut out);
        assert!(out.is_empty());
        assert_eq!(
            v,
            json!({"template_uid":"tpl_1","variables":{"name":"Ada","count":3,"ratio":0.5,"tags":[true]},
                   "format":"webp","quality":0.8,"concurrency":3,"layouts":["story"]})
        );
        // Unset quality and format are omitted, not zero.
        let bare = pb::PictifyRender {
            template_uid: "t".into(),
            ..Default::default()
        };
        assert_eq!(
            ps(pb::job_spec::Provider::Pictify(bare), &mut out).1,
            json!({"template_uid":"t"})
        );
        // NaN and unknown enum values are reported.
        let bad = pb::PictifyRender {
            quality: Some(f64::NAN),
            format: 42,
            ..m
        };
        ps(pb::job_spec::Provider::Pictify(bad), &mut out);
        let fields: Vec<&str> = out.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["format", "quality"]);
    }

    #[test]
    fn abyssale_spec_json() {
        use prost_types::value::Kind;
        let m = pb::AbyssaleGeneration {
            design_id: "497f6eca-6276-4993-bfeb-53cbbbba6f08".into(),
            format_names: vec!["facebook-feed".into()],
            elements: Some(pstruct(vec![(
                "title",
                pv(Kind::StructValue(pstruct(vec![(
                    "payload",
                    pv(Kind::StringValue("Hi".into())),
                )]))),
            )])),
            image_file_type: "png".into(),
            file_compression_level: 0,
            ..Default::default()
        };
        let mut out = Vec::new();
        let (name, v) = ps(pb::job_spec::Provider::Abyssale(m), &mut out);
        assert_eq!(name, "abyssale");
        assert_eq!(
            v,
            json!({"design_id":"497f6eca-6276-4993-bfeb-53cbbbba6f08","format_names":["facebook-feed"],
                   "elements":{"title":{"payload":"Hi"}},"image_file_type":"png"})
        );
        // Output blocks keep their proto names; proto3 `optional` keeps an explicit false.
        let blocks = pb::AbyssaleGeneration {
            design_id: "497f6eca-6276-4993-bfeb-53cbbbba6f08".into(),
            gif: Some(pb::abyssale_generation::GifOptions {
                max_fps: Some(5),
                repeat: Some(false),
            }),
            html5: Some(pb::abyssale_generation::Html5Options::default()),
            ..Default::default()
        };
        let (_, v) = ps(pb::job_spec::Provider::Abyssale(blocks), &mut out);
        assert_eq!(
            v,
            json!({"design_id":"497f6eca-6276-4993-bfeb-53cbbbba6f08",
                   "gif":{"max_fps":5,"repeat":false},"html5":{}})
        );
        let inf = pstruct(vec![("x", pv(Kind::NumberValue(f64::INFINITY)))]);
        struct_to_json(&inf, "elements", &mut out);
        assert_eq!(out[0].field, "elements.x");
    }

    #[test]
    fn envelope_limits() {
        let mut v = Vec::new();
        let ok = pb::JobSpec {
            deadline: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            check_envelope(0, &ok, &mut v),
            Some(Duration::from_secs(60))
        );
        assert!(v.is_empty());
        let bad = pb::JobSpec {
            client_ref: "x".repeat(257),
            labels: (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
            deadline: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        check_envelope(2, &bad, &mut v);
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["jobs[2].client_ref", "jobs[2].labels", "jobs[2].deadline"]
        );
        let mut v = Vec::new();
        let long = pb::JobSpec {
            deadline: Some(prost_types::Duration {
                seconds: 24 * 3600 + 1,
                nanos: 0,
            }),
            ..Default::default()
        };
        check_envelope(0, &long, &mut v);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn timestamps_and_counts() {
        assert_eq!(
            timestamp(1_500),
            prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            timestamp(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
    }

    fn record(provider: &str, result: Option<Value>) -> JobRecord {
        JobRecord {
            id: "job_1".into(),
            batch_id: "bat_1".into(),
            provider: provider.into(),
            spec: Value::Null,
            state: JobState::Completed,
            provider_ref: None,
            poll_key: None,
            group_key: None,
            correlation_key: None,
            attempt_id: None,
            progress: None,
            outputs: vec![adgate_generator::Output {
                url: "https://cdn/x.png".into(),
                provider_fields: json!({"imageId": "img_1", "n": 2, "ok": true, "x": null})
                    .as_object()
                    .unwrap()
                    .clone(),
                ..Default::default()
            }],
            error: None,
            client_ref: String::new(),
            labels: BTreeMap::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            completed_at_ms: None,
            deadline_at_ms: 0,
            revision: 1,
            provider_result: result,
            caller: "anonymous".into(),
            priority: 2,
            cost: None,
            traceparent: None,
        }
    }

    /// Custody fields reach the API: the state, the checksum, size and sniffed type, the
    /// failure's code; `stored_url` is a path until the server's base URL is put in front.
    #[test]
    fn custody_fields_reach_the_output() {
        use adgate_generator::{Custody, CustodyState, JobError};
        let mut r = record("abyssale", None);
        r.outputs.push(r.outputs[0].clone());
        r.outputs[0].custody = Custody {
            state: CustodyState::Stored,
            key: "job_1/0".into(),
            sha256: "ab".repeat(32),
            size_bytes: 4096,
            mime_type: "image/webp".into(),
            error: None,
        };
        r.outputs[1].custody = Custody {
            state: CustodyState::Failed,
            error: Some(JobError::new("OUTPUT_EXPIRED", "410", false)),
            ..Custody::default()
        };
        let j = job(&r);
        let (stored, failed) = (&j.outputs[0], &j.outputs[1]);
        assert_eq!(stored.custody(), pb::CustodyState::Stored);
        assert_eq!(stored.stored_url, "/outputs/job_1/0");
        assert_eq!(stored.sha256, "ab".repeat(32));
        assert_eq!(stored.size_bytes, 4096);
        assert_eq!(stored.stored_mime_type, "image/webp");
        assert_eq!(stored.url, "https://cdn/x.png", "the provider's URL stays");
        assert_eq!(failed.custody(), pb::CustodyState::Failed);
        assert_eq!(
            failed.custody_error.as_ref().unwrap().code,
            "OUTPUT_EXPIRED"
        );
        assert!(failed.stored_url.is_empty());
        let j = with_outputs_base(j, "https://gw.example/");
        assert_eq!(
            j.outputs[0].stored_url,
            "https://gw.example/outputs/job_1/0"
        );
        assert!(j.outputs[1].stored_url.is_empty());
        // Custody off: nothing set.
        let plain = job(&record("abyssale", None));
        assert_eq!(plain.outputs[0].custody(), pb::CustodyState::Unspecified);
        assert!(plain.outputs[0].stored_url.is_empty() && plain.outputs[0].sha256.is_empty());
    }

    /// `json_to_struct` is the inverse of `struct_to_json` on JSON objects.
    #[test]
    fn json_struct_round_trip() {
        let v = json!({"a": 1, "b": [true, null, "s", 2.5], "c": {"d": {}}});
        let s = json_to_struct(v.as_object().unwrap());
        let mut out = Vec::new();
        assert_eq!(struct_to_json(&s, "x", &mut out), v);
        assert!(out.is_empty());
    }

    /// StaticAdsLab's typed fields come out of `provider_result` and are not repeated there;
    /// other providers' results pass verbatim; jobs without one have none [SEED-2].
    #[test]
    fn provider_fields_and_results_reach_the_job() {
        let tree = json!({"type": "FRAME", "id": "root", "children": []});
        let j = job(&record(
            "staticadslab",
            Some(json!({
                "sku_code": "editable_image_ad", "editable": true, "current_json_tree": tree,
                "figma_render_url": "https://f/1.png", "initial_figma_render_url": null,
                "duration_ms": 41250, "batch_id": null, "created_at": "2026-04-30T14:30:00.000Z"
            })),
        ));
        let ad = j.staticadslab.unwrap();
        assert_eq!(ad.sku_code, "editable_image_ad");
        assert!(ad.editable);
        let mut out = Vec::new();
        assert_eq!(
            struct_to_json(ad.current_json_tree.as_ref().unwrap(), "t", &mut out),
            tree
        );
        assert_eq!(ad.figma_render_url, "https://f/1.png");
        assert_eq!(ad.initial_figma_render_url, "");
        assert_eq!(
            ad.duration,
            Some(prost_types::Duration {
                seconds: 41,
                nanos: 250_000_000
            })
        );
        let rest = j.provider_result.unwrap();
        assert_eq!(rest.fields.len(), 1, "{rest:?}");
        assert!(rest.fields.contains_key("created_at"));
        let f = j.outputs[0].provider_fields.as_ref().unwrap();
        assert_eq!(
            struct_to_json(f, "f", &mut out),
            json!({"imageId": "img_1", "n": 2, "ok": true, "x": null})
        );

        let j = job(&record(
            "bannerbear",
            Some(json!({"uid": "u1", "self": "s"})),
        ));
        assert!(j.staticadslab.is_none());
        assert_eq!(j.provider_result.unwrap().fields.len(), 2);

        let mut r = record("staticadslab", None);
        r.outputs[0].provider_fields.clear();
        let j = job(&r);
        assert!(j.staticadslab.is_none() && j.provider_result.is_none());
        assert!(j.outputs[0].provider_fields.is_none());
    }
}
