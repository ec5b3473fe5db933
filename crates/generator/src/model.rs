//! The provider-neutral job model.
//!
//! A provider spec travels through the engine as an opaque `serde_json::Value`: only the adapter
//! that owns it parses it, so adding a provider never touches this crate.

use serde::{Deserialize, Serialize};

/// The lifecycle of a gateway job. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

/// What one job costs by its provider's documents (or plan): the engine estimates it at Submit
/// (reserved against spend limits), settles it on completion and releases it on failure; the
/// operator may override `micros` per `kind` and the unit per provider in the TOML file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// `USD` (ISO 4217) for money, or the provider's credits (`pictify_credit`).
    pub unit: &'static str,
    /// What the price is for, as the TOML override names it (`flat`, `editable`, `item`).
    pub kind: &'static str,
    /// Millionths of `unit`, per job or per output.
    pub micros: i64,
    /// Billed per produced output (a credit per rendered item or format) rather than per job.
    pub per_output: bool,
    /// Outputs the job is expected to produce (the estimate's multiplier when `per_output`).
    pub expected_outputs: u32,
}

/// What a job that another job builds on looks like to an adapter (an edit names the ad it
/// edits): enough to decide whether it may be built on, and what the provider needs from it.
#[derive(Debug, Clone, Copy)]
pub struct JobView<'a> {
    pub id: &'a str,
    pub provider: &'a str,
    pub state: JobState,
    pub provider_ref: Option<&'a str>,
    pub spec: &'a serde_json::Value,
    pub provider_result: Option<&'a serde_json::Value>,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Stable small integer used by stores; never reorder.
    pub fn as_i64(self) -> i64 {
        match self {
            Self::Queued => 1,
            Self::Processing => 2,
            Self::Completed => 3,
            Self::Failed => 4,
            Self::Cancelled => 5,
        }
    }

    pub fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            1 => Self::Queued,
            2 => Self::Processing,
            3 => Self::Completed,
            4 => Self::Failed,
            5 => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// A progress hint. `percentage` is always normalised to 0–100 by the adapter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: String,
    pub message: String,
    pub percentage: f64,
}

/// One produced file. Abyssale yields several per job (one per format).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// Provider format name, e.g. `facebook-feed`; empty when the provider has none. Stored
    /// rows are JSON: an empty name is not written (12 bytes of every retained job of a
    /// provider without formats), and `default` reads it back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
    pub mime_type: String,
    /// The provider's own object for this output, verbatim, minus the fields mapped above
    /// (url, width, height, format, mime type): e.g. an Abyssale banner's `id`, `sharing_id`,
    /// `file.filename`, `template` [AB-TS] `Banner`, or Pictify's `render.completed` `imageId`
    /// and `renderedAt` [SEED-3]. Names as the provider spells them. Stored rows are JSON:
    /// `default` keeps rows written before this field decoding; an empty map is not written.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub provider_fields: serde_json::Map<String, serde_json::Value>,
    /// The gateway's own copy of this output (output custody); all empty while custody is off.
    /// `default` keeps rows written before custody existed decoding; empty is not written.
    #[serde(default, skip_serializing_if = "Custody::is_off")]
    pub custody: Custody,
}

/// Where a completed output's copy stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustodyState {
    /// Custody is off, or the job has not completed.
    #[default]
    Off,
    /// A copy will be made (or retried).
    Pending,
    Stored,
    Failed,
}

/// The custody fields of one output (proto `Output` fields 7–12).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Custody {
    pub state: CustodyState,
    /// The store's key of the copy (`<job id>/<output index>`), from which the server builds
    /// the URL it serves the copy at; empty until stored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Lower-case hex SHA-256 of the stored bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    #[serde(default)]
    pub size_bytes: u64,
    /// Read from the bytes themselves, never from the URL or the provider's Content-Type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mime_type: String,
    /// Why no copy could be made (`OUTPUT_EXPIRED`, `OUTPUT_TOO_LARGE`, `OUTPUT_UNREACHABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

impl Custody {
    pub fn is_off(&self) -> bool {
        self.state == CustodyState::Off
    }
}

/// Why a job failed (or, for partial success, why one of its formats did).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// Stable UPPER_SNAKE code callers can switch on, e.g. `PROVIDER_JOB_FAILED`.
    pub code: String,
    pub message: String,
    /// Whether submitting the same spec again may succeed.
    pub retryable: bool,
    /// The provider's own code, verbatim (e.g. `PIPELINE_ERROR`, `RENDER_TIMEOUT`).
    pub provider_code: String,
    /// Each format that failed, as data: Abyssale reports partial success as `banners` plus
    /// `errors: [{template_format_name, reason}]` on one request [AB-TS], [SEED-4]. Empty for
    /// providers without formats. Stored rows are JSON: `default` keeps rows written before
    /// this field decoding, and an empty list is not written at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_formats: Vec<FormatFailure>,
}

/// One format of a job that produced no output, and the provider's reason, verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatFailure {
    /// Provider format name, e.g. `facebook-feed`.
    pub format: String,
    /// Provider reason, e.g. `Text too long` [AB:rest-api/generation/errors].
    pub reason: String,
}

impl JobError {
    pub fn new(code: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable,
            provider_code: String::new(),
            failed_formats: Vec::new(),
        }
    }

    pub fn with_failed_formats(mut self, formats: Vec<FormatFailure>) -> Self {
        self.failed_formats = formats;
        self
    }

    pub fn with_provider_code(mut self, code: impl Into<String>) -> Self {
        self.provider_code = code.into();
        self
    }
}

/// What the provider says about one job, as an adapter parsed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoteState {
    /// Still running; optionally with a progress hint.
    Processing,
    /// Done. `outputs` is never empty: an adapter that has no URL yet reports `Processing`.
    Completed,
    /// Done without output. `error` says why.
    Failed,
    Cancelled,
    /// The provider does not know this reference (expired, deleted, or never created).
    NotFound,
}

/// How an update finds its job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UpdateTarget {
    /// The provider reference returned by submit (e.g. `ia_…`, `batch_x:3`, a UUID).
    ProviderRef(String),
    /// Every job under a poll key (e.g. all items of a Pictify batch the provider lost).
    PollKey(String),
    /// The oldest unfinished, sent job whose correlation key (computed by the adapter from
    /// the spec at submit time) is this one.
    Correlation(String),
    /// The oldest unfinished, sent job with this correlation key whose spec
    /// [`crate::Generator::correlates`] with `fields` (Pictify's `render.completed` names the
    /// template and some variable values, not a batch or an item index).
    Correlated {
        key: String,
        fields: serde_json::Map<String, serde_json::Value>,
    },
}

/// One observation of one job, from a poll, a stream or a webhook. Serialisable so that an
/// event that matches no job yet can be kept durably and applied later (the engine's inbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderUpdate {
    pub target: UpdateTarget,
    pub state: RemoteState,
    pub progress: Option<Progress>,
    pub outputs: Vec<Output>,
    /// Set when `state` is `Failed`; for `Completed` it may describe formats that failed
    /// alongside the outputs that succeeded (partial success).
    pub error: Option<JobError>,
    /// The provider's own fields about the whole job, verbatim, minus those mapped to typed
    /// fields (e.g. a StaticAdsLab ad's `current_json_tree`, `sku_code`, `duration_ms`
    /// [SEED-2]). `None` means this observation carries none (the stored value is kept).
    /// `default`: events kept in the inbox before this field existed still decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_result: Option<serde_json::Map<String, serde_json::Value>>,
    /// The resource has no image by nature: its result is the provider's reference and its
    /// `provider_result` (a StaticAdsLab design template). `Completed` without outputs is then
    /// final; for every other update the engine waits for the outputs (a completed image job
    /// never lacks them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub without_outputs: bool,
}

impl ProviderUpdate {
    /// A completion whose result is the reference itself (see [`Self::without_outputs`]).
    pub fn completed_without_outputs(target: UpdateTarget) -> Self {
        Self {
            without_outputs: true,
            ..Self::with_state(target, RemoteState::Completed)
        }
    }

    /// The same update carrying the provider's job-level fields.
    pub fn with_provider_result(
        mut self,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        self.provider_result = Some(fields);
        self
    }

    pub fn processing(target: UpdateTarget, progress: Option<Progress>) -> Self {
        Self {
            target,
            state: RemoteState::Processing,
            progress,
            outputs: Vec::new(),
            error: None,
            provider_result: None,
            without_outputs: false,
        }
    }

    pub fn completed(target: UpdateTarget, outputs: Vec<Output>) -> Self {
        Self {
            target,
            state: RemoteState::Completed,
            progress: None,
            outputs,
            error: None,
            provider_result: None,
            without_outputs: false,
        }
    }

    pub fn failed(target: UpdateTarget, error: JobError) -> Self {
        Self {
            target,
            state: RemoteState::Failed,
            progress: None,
            outputs: Vec::new(),
            error: Some(error),
            provider_result: None,
            without_outputs: false,
        }
    }

    pub fn with_state(target: UpdateTarget, state: RemoteState) -> Self {
        Self {
            target,
            state,
            progress: None,
            outputs: Vec::new(),
            error: None,
            provider_result: None,
            without_outputs: false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Stores keep `JobError` as JSON; a row written before `failed_formats` existed must
    /// still decode, and one with failed formats must keep them.
    #[test]
    fn job_error_json_is_backward_compatible_and_keeps_failed_formats() {
        let old = r#"{"code":"PARTIAL_FAILURE","message":"m","retryable":true,"provider_code":""}"#;
        let e: JobError = serde_json::from_str(old).unwrap();
        assert!(e.failed_formats.is_empty());
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            old,
            "empty list not written"
        );
        let e = e.with_failed_formats(vec![FormatFailure {
            format: "iab-medium".into(),
            reason: "Text too long".into(),
        }]);
        let back: JobError = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    /// Stored outputs and kept events are JSON: shapes written before the provider's own
    /// fields existed still decode, and empty fields are not written (old shapes unchanged).
    #[test]
    fn provider_fields_are_backward_compatible() {
        let old = r#"{"url":"u","width":1,"height":2,"format":"f","mime_type":"image/png"}"#;
        let o: Output = serde_json::from_str(old).unwrap();
        assert!(o.provider_fields.is_empty());
        assert_eq!(serde_json::to_string(&o).unwrap(), old);
        let mut o = o;
        o.provider_fields
            .insert("imageId".into(), serde_json::json!("img_1"));
        let back: Output = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
        o.custody = Custody {
            state: CustodyState::Stored,
            key: "job_1/0".into(),
            sha256: "ab".into(),
            size_bytes: 3,
            mime_type: "image/png".into(),
            error: None,
        };
        let text = serde_json::to_string(&o).unwrap();
        assert!(text.contains(r#""state":"stored""#), "{text}");
        let back: Output = serde_json::from_str(&text).unwrap();
        assert_eq!(back, o);

        // A provider without formats: no `format` key is written, and rows written with an
        // empty one (before it was skipped) read back the same.
        let unnamed = Output {
            format: String::new(),
            ..o.clone()
        };
        let text = serde_json::to_string(&unnamed).unwrap();
        assert!(!text.contains("format"), "{text}");
        assert_eq!(serde_json::from_str::<Output>(&text).unwrap(), unnamed);
        let written_before = r#"{"url":"u","width":1,"height":2,"format":"","mime_type":"m"}"#;
        assert_eq!(
            serde_json::from_str::<Output>(written_before)
                .unwrap()
                .format,
            ""
        );

        let u = ProviderUpdate::completed(UpdateTarget::ProviderRef("r".into()), vec![o]);
        let mut v = serde_json::to_value(&u).unwrap();
        assert!(v.get("provider_result").is_none());
        v.as_object_mut().unwrap().remove("provider_result");
        let back: ProviderUpdate = serde_json::from_value(v).unwrap();
        assert_eq!(back, u);
        let u = u.with_provider_result(serde_json::Map::from_iter([(
            "uid".to_owned(),
            serde_json::json!("x"),
        )]));
        let back: ProviderUpdate =
            serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
        assert_eq!(back, u);
    }
}
