//! Abyssale's JSON, as far as adgate reads or writes it, and its translation into updates.
//! Unknown fields are ignored everywhere: the spec adds fields between versions.

use adgate_generator::model::FormatFailure;
use adgate_generator::{JobError, Output, Progress, ProviderUpdate, UpdateTarget};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /async/banner-builder/{design_id}/generate` body [AB-TS], [SEED-4].
#[derive(Debug, Serialize)]
pub struct GenerateBody<'a> {
    /// Always sent, even empty: the docs page marks it required (CONFLICT with the spec).
    pub elements: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub template_format_names: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_file_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_compression_level: Option<u8>,
    /// Output blocks exactly as the caller set them (providers.md §3.2 [AB-TS]); an unset
    /// block is not sent, so Abyssale applies its defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html5: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gif: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub print: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_visual_id: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateResponse {
    pub generation_request_id: String,
}

/// The error envelope "for this entire API" [AB-TS] `ErrorResponse`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    pub id: Option<String>,
    pub message: Option<String>,
    /// Legacy bodies carry a nested dict here; treat anything but a list as none.
    #[serde(default, deserialize_with = "lenient_list")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FieldError {
    pub path: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

fn lenient_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| serde_json::from_value(i).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// The poll body [AB-TS] `GenerationRequestStatus`, and the webhook payload [SEED-4], whose id
/// key is `generation_request_id` (seed) or `id` (older event page, SDK examples) — CONFLICT.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub id: Option<String>,
    pub generation_request_id: Option<String>,
    /// Absent from webhook payloads, which are only sent once final.
    pub is_finalized: Option<bool>,
    #[serde(default, deserialize_with = "lenient_list")]
    pub banners: Vec<Banner>,
    #[serde(default, deserialize_with = "lenient_list")]
    pub errors: Vec<FormatError>,
    /// Every other field of the request, verbatim (e.g. the API `version` stamp [AB-TS]): the
    /// job's `provider_result`.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Status {
    pub fn request_id(&self) -> Option<&str> {
        self.generation_request_id.as_deref().or(self.id.as_deref())
    }
}

#[derive(Debug, Deserialize)]
pub struct Banner {
    pub file: BannerFile,
    pub format: BannerFormat,
    /// Every other field of the banner, verbatim: `id`, `version`, `sharing_id`, `template`,
    /// `project`, `edit_url`, `view_url`, ... [AB-TS] `Banner`, [SEED-4].
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct BannerFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub url: Option<String>,
    pub cdn_url: Option<String>,
    /// `filename`, `fallback_image_url`, ... verbatim.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct BannerFormat {
    pub id: String,
    pub width: Option<f64>,
    pub height: Option<f64>,
    /// `unit`, ... verbatim.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct FormatError {
    #[serde(default)]
    pub template_format_name: String,
    #[serde(default)]
    pub reason: String,
}

/// Per-format reasons that are about the content, so the same spec fails again
/// [AB:rest-api/generation/errors].
const CONTENT_REASONS: [&str; 7] = [
    "Invalid Image",
    "SVG security error",
    "Large SVG error",
    "QR code not supported extension",
    "Text too long",
    "InvalidFont",
    "Button text too long",
];

fn mime(kind: &str) -> &'static str {
    match kind {
        "png" => "image/png",
        "jpeg" | "jpg" => "image/jpeg",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "zip" | "html5" => "application/zip",
        _ => "application/octet-stream",
    }
}

fn px(v: Option<f64>) -> u32 {
    v.filter(|x| x.is_finite() && *x > 0.0)
        .map(|x| x.round().min(f64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

fn output(b: &Banner) -> Option<Output> {
    let cdn = b.file.cdn_url.as_deref().filter(|u| !u.is_empty());
    let url = cdn.or(b.file.url.as_deref()).filter(|u| !u.is_empty())?;
    Some(Output {
        url: url.to_owned(),
        width: px(b.format.width),
        height: px(b.format.height),
        format: b.format.id.clone(),
        mime_type: mime(b.file.kind.as_deref().unwrap_or_default()).to_owned(),
        provider_fields: banner_fields(b, cdn.is_some()),
        custody: Default::default(),
    })
}

/// The banner's own fields, verbatim, minus those mapped to the output: `file.type` (the MIME
/// type), the URL used (`file.cdn_url`, else `file.url`), `format.id`, `format.width`,
/// `format.height`. The origin `file.url` stays when the CDN URL was used: it is another URL.
fn banner_fields(b: &Banner, used_cdn: bool) -> Map<String, Value> {
    let mut fields = b.rest.clone();
    let mut file = b.file.rest.clone();
    if used_cdn && let Some(origin) = &b.file.url {
        file.insert("url".to_owned(), Value::String(origin.clone()));
    }
    if !file.is_empty() {
        fields.insert("file".to_owned(), Value::Object(file));
    }
    if !b.format.rest.is_empty() {
        fields.insert("format".to_owned(), Value::Object(b.format.rest.clone()));
    }
    fields
}

/// The failed formats as data, in the provider's order, so callers need not parse `message`.
fn failed_formats(errors: &[FormatError]) -> Vec<FormatFailure> {
    errors
        .iter()
        .map(|e| FormatFailure {
            format: e.template_format_name.clone(),
            reason: e.reason.clone(),
        })
        .collect()
}

fn describe(errors: &[FormatError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.template_format_name, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The update a status body means. `finalized` comes from `is_finalized` (poll) or is implied
/// (webhook). `requested` is the number of formats asked for, when known.
pub fn to_update(
    provider_ref: &str,
    status: &Status,
    finalized: bool,
    requested: Option<usize>,
) -> ProviderUpdate {
    let target = UpdateTarget::ProviderRef(provider_ref.to_owned());
    if !finalized {
        let progress = requested.filter(|n| *n > 0).map(|n| {
            let done = (status.banners.len() + status.errors.len()).min(n);
            Progress {
                step: "rendering".to_owned(),
                message: format!("{done} of {n} formats done"),
                percentage: done as f64 * 100.0 / n as f64,
            }
        });
        return ProviderUpdate::processing(target, progress);
    }
    let outputs: Vec<Output> = status.banners.iter().filter_map(output).collect();
    if outputs.is_empty() {
        let first = status.errors.first();
        let provider_code = first
            .map(|e| e.reason.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "no_banners".to_owned());
        let retryable = !status
            .errors
            .iter()
            .all(|e| CONTENT_REASONS.contains(&e.reason.as_str()))
            || status.errors.is_empty();
        let message = if status.errors.is_empty() {
            "Abyssale finished the request without producing any banner".to_owned()
        } else {
            format!("every format failed: {}", describe(&status.errors))
        };
        let mut failed = ProviderUpdate::failed(
            target,
            JobError::new(
                adgate_generator::codes::PROVIDER_JOB_FAILED,
                message,
                retryable,
            )
            .with_provider_code(provider_code)
            .with_failed_formats(failed_formats(&status.errors)),
        );
        if !status.rest.is_empty() {
            failed.provider_result = Some(status.rest.clone());
        }
        return failed;
    }
    let mut update = ProviderUpdate::completed(target, outputs);
    if !status.rest.is_empty() {
        update.provider_result = Some(status.rest.clone());
    }
    if !status.errors.is_empty() {
        update.error = Some(
            JobError::new(
                "PARTIAL_FAILURE",
                format!(
                    "{} format(s) failed: {}",
                    status.errors.len(),
                    describe(&status.errors)
                ),
                true,
            )
            .with_failed_formats(failed_formats(&status.errors)),
        );
    }
    update
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use adgate_generator::RemoteState;

    /// The seed's webhook payload, verbatim [SEED-4].
    const SEED_WEBHOOK: &str = r#"{
      "generation_request_id": "497f6eca-6276-4993-bfeb-53cbbbba6f08",
      "banners": [{
          "id": "64238d01-d402-474b-8c2d-fbc957e9d290",
          "file": {"type": "jpeg",
            "url": "https://production-banners.s3.eu-west-1.amazonaws.com/demo/ee6739f4-b563-428a-a6e8-ec3cb8bd03d4.jpeg",
            "cdn_url": "https://cdn.abyssale.com/demo/ee6739f4-b563-428a-a6e8-ec3cb8bd03d4.jpeg",
            "filename": "ee6739f4-b563-428a-a6e8-ec3cb8bd03d4.jpeg"},
          "format": {"id": "facebook-post", "width": 1200, "height": 1200},
          "template": {"id": "64238d01-d402-474b-8c2d-fbc957e9d290", "name": "Ad campaign fall 2022",
            "type": "static", "created_at": 1649942114, "updated_at": 1649942114, "category_name": "Fall campaigns"}
      }],
      "errors": [{"template_format_name": "string", "reason": "string"}]
    }"#;

    /// The seed's poll payload (trimmed to one banner, otherwise verbatim) [SEED-4].
    const SEED_POLL: &str = r#"{
      "is_finalized": true,
      "id": "e38c8e09-5b0e-43ff-b5da-25be6b6e96ae",
      "banners": [{
          "id": "28e973cf-1514-4d9b-9db6-cbaca229b040",
          "format": {"id": "half-page", "width": 300, "height": 600},
          "template": {"id": "840420c2-7bd9-45c4-a7cb-c741b16edfcf", "name": "Test demo",
            "created_at": 1692800820, "updated_at": 1692867258},
          "file": {"type": "jpeg", "url": "https://s3abyssale/.../image.jpeg", "filename": "image.jpeg",
            "cdn_url": "https://cdnabyssale/.../image.jpeg"}
      }],
      "errors": []
    }"#;

    #[test]
    fn seed_poll_payload_completes() {
        let s: Status = serde_json::from_str(SEED_POLL).unwrap();
        assert_eq!(s.request_id(), Some("e38c8e09-5b0e-43ff-b5da-25be6b6e96ae"));
        let u = to_update("e38c", &s, s.is_finalized.unwrap(), None);
        assert_eq!(u.state, RemoteState::Completed);
        assert!(u.error.is_none());
        // The banner's own fields stay verbatim, minus those mapped (issue 20).
        let fields = serde_json::json!({
            "id": "28e973cf-1514-4d9b-9db6-cbaca229b040",
            "template": {"id": "840420c2-7bd9-45c4-a7cb-c741b16edfcf", "name": "Test demo",
              "created_at": 1692800820, "updated_at": 1692867258},
            "file": {"url": "https://s3abyssale/.../image.jpeg", "filename": "image.jpeg"}
        });
        assert_eq!(
            u.outputs,
            vec![Output {
                url: "https://cdnabyssale/.../image.jpeg".into(),
                width: 300,
                height: 600,
                format: "half-page".into(),
                mime_type: "image/jpeg".into(),
                provider_fields: fields.as_object().unwrap().clone(),
                custody: Default::default(),
            }]
        );
        assert_eq!(u.provider_result, None, "the seed stamps no version");
        let stamped: Status =
            serde_json::from_str(&SEED_POLL.replacen('{', r#"{"version": "v2026-08-21","#, 1))
                .unwrap();
        let u = to_update("e38c", &stamped, true, None);
        assert_eq!(
            u.provider_result.unwrap()["version"],
            serde_json::json!("v2026-08-21")
        );
    }

    #[test]
    fn seed_webhook_payload_is_partial_success() {
        let s: Status = serde_json::from_str(SEED_WEBHOOK).unwrap();
        assert_eq!(s.request_id(), Some("497f6eca-6276-4993-bfeb-53cbbbba6f08"));
        let u = to_update("497f", &s, true, None);
        assert_eq!(u.state, RemoteState::Completed);
        assert_eq!(u.outputs.len(), 1);
        assert_eq!(u.outputs[0].format, "facebook-post");
        let e = u.error.unwrap();
        assert_eq!(e.code, "PARTIAL_FAILURE");
        assert!(e.message.contains("string: string"), "{}", e.message);
        assert_eq!(
            e.failed_formats,
            vec![FormatFailure {
                format: "string".into(),
                reason: "string".into()
            }]
        );
        assert!(e.retryable);
        assert_eq!(e.provider_code, "");
    }

    #[test]
    fn all_failed_is_failed_with_the_first_reason() {
        let s: Status = serde_json::from_str(
            r#"{"id":"x","is_finalized":true,"banners":[],"errors":[
                {"template_format_name":"iab-medium","reason":"Text too long"},
                {"template_format_name":"half-page","reason":"Invalid Image"}],"version":"v2026-08-21"}"#,
        )
        .unwrap();
        let u = to_update("x", &s, true, None);
        assert_eq!(u.state, RemoteState::Failed);
        let e = u.error.unwrap();
        assert_eq!(e.code, "PROVIDER_JOB_FAILED");
        assert_eq!(e.provider_code, "Text too long");
        assert!(!e.retryable, "content problems fail again");
        assert!(e.message.contains("half-page: Invalid Image"));
        let names: Vec<(&str, &str)> = e
            .failed_formats
            .iter()
            .map(|f| (f.format.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("iab-medium", "Text too long"),
                ("half-page", "Invalid Image")
            ]
        );
    }

    #[test]
    fn running_request_reports_progress_when_the_count_is_known() {
        let s: Status = serde_json::from_str(
            r#"{"id":"x","is_finalized":false,"banners":[],"errors":[{"template_format_name":"a","reason":"b"}]}"#,
        )
        .unwrap();
        let u = to_update("x", &s, false, Some(4));
        assert_eq!(u.state, RemoteState::Processing);
        assert_eq!(u.progress.unwrap().percentage, 25.0);
        assert!(to_update("x", &s, false, None).progress.is_none());
    }

    #[test]
    fn generate_body_is_snake_case_and_omits_empty_options() {
        let elements: Map<String, Value> =
            serde_json::from_str(r##"{"primary_text":{"payload":"Hi","color":"#FF0000"}}"##)
                .unwrap();
        let names = vec!["facebook-feed".to_owned()];
        let body = GenerateBody {
            elements: &elements,
            template_format_names: &names,
            callback_url: Some("https://gw.example/webhooks/abyssale"),
            image_file_type: None,
            file_compression_level: Some(80),
            html5: None,
            gif: None,
            video: None,
            print: None,
            original_visual_id: None,
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["template_format_names"][0], "facebook-feed");
        assert_eq!(v["file_compression_level"], 80);
        assert!(v.get("image_file_type").is_none());
        let empty = GenerateBody {
            elements: &Map::new(),
            template_format_names: &[],
            callback_url: None,
            image_file_type: None,
            file_compression_level: None,
            html5: None,
            gif: None,
            video: None,
            print: None,
            original_visual_id: None,
        };
        assert_eq!(serde_json::to_string(&empty).unwrap(), r#"{"elements":{}}"#);
        // Output blocks go out as the caller set them, unset ones not at all.
        let gif: Map<String, Value> = serde_json::from_str(r#"{"max_fps":5}"#).unwrap();
        let with_gif = GenerateBody {
            gif: Some(&gif),
            original_visual_id: Some("28e973cf-1514-4d9b-9db6-cbaca229b040"),
            ..empty
        };
        assert_eq!(
            serde_json::to_value(&with_gif).unwrap(),
            serde_json::json!({"elements": {}, "gif": {"max_fps": 5},
                "original_visual_id": "28e973cf-1514-4d9b-9db6-cbaca229b040"})
        );
    }
}
