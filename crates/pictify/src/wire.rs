//! Pictify's wire types (camelCase, no envelope). Response types are tolerant: every field the
//! documents disagree about is optional (see `shared/reference/providers.md` §2).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /templates/{uid}/batch-render` body [PX-LIVE:…/batch/render], [PX-PY].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRenderRequest<'a> {
    pub variable_sets: Vec<&'a Map<String, Value>>,
    pub format: &'a str,
    pub quality: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<&'a str>,
    /// Several layouts: one image per item per layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layouts: Option<&'a [String]>,
    /// Only what the caller set; the provider's default (5) otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// 202 `{batchId, status, totalItems, message}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRenderResponse {
    pub batch_id: String,
    #[serde(default)]
    pub total_items: Option<u64>,
}

/// `GET /templates/batch/{batchId}/results`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResults {
    pub status: String,
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub total_items: Option<u64>,
    #[serde(default)]
    pub completed_items: Option<u64>,
    #[serde(default)]
    pub failed_items: Option<u64>,
    #[serde(default)]
    pub results: Vec<ResultItem>,
    /// Batch-level errors; entries may name an `index` and a code.
    #[serde(default)]
    pub errors: Vec<Value>,
}

/// One item. [PX-PY]/[SEED-3]: `{index, success, variables:[names], error?}`; the live OpenAPI
/// page adds `url, width, height` or, with layouts, `results:[{layout,name,url,…}]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultItem {
    pub index: u64,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default)]
    pub error: Option<Value>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub width: Option<Value>,
    #[serde(default)]
    pub height: Option<Value>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub results: Vec<LayoutResult>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutResult {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub width: Option<Value>,
    #[serde(default)]
    pub height: Option<Value>,
    #[serde(default)]
    pub format: Option<String>,
}

/// `{"event", "timestamp", "data"}` [SEED-3], [PX-LIVE:concepts/webhooks].
#[derive(Debug, Deserialize)]
pub struct WebhookEnvelope {
    pub event: String,
    #[serde(default)]
    pub data: Value,
}

/// `render.completed` / `render.failed` data.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RenderData {
    pub url: Option<String>,
    pub template_id: Option<String>,
    pub variables: Option<Map<String, Value>>,
    pub width: Option<Value>,
    pub height: Option<Value>,
    pub format: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
}

/// `batch.completed` / `batch.failed` data (only the id matters to us).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BatchEventData {
    pub batch_id: Option<String>,
}

/// A width/height that may arrive as an integer, a float or a string.
pub fn dimension(v: Option<&Value>) -> u32 {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map_or(0, |x| u32::try_from(x).unwrap_or(0)),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// The image format of an output: the declared one, else the URL's extension, else png.
pub fn image_format(declared: Option<&str>, url: &str) -> String {
    if let Some(f) = declared.filter(|f| !f.is_empty()) {
        return f.to_ascii_lowercase();
    }
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let ext = path
        .rsplit_once('/')
        .map_or(path, |(_, last)| last)
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("jpg" | "jpeg") => "jpeg".to_owned(),
        Some("webp") => "webp".to_owned(),
        _ => "png".to_owned(),
    }
}

pub fn mime_type(format: &str) -> String {
    match format {
        "jpeg" | "jpg" => "image/jpeg",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        _ => "image/png",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dimensions_and_formats_are_tolerant() {
        assert_eq!(dimension(Some(&json!(1200))), 1200);
        assert_eq!(dimension(Some(&json!(630.0))), 630);
        assert_eq!(dimension(Some(&json!("630"))), 630);
        assert_eq!(dimension(Some(&json!(-1))), 0);
        assert_eq!(dimension(None), 0);
        assert_eq!(image_format(None, "https://cdn.x/a/b.JPG?x=1"), "jpeg");
        assert_eq!(image_format(None, "https://cdn.x/a/b"), "png");
        assert_eq!(image_format(Some("webp"), "https://cdn.x/a.png"), "webp");
        assert_eq!(mime_type("jpeg"), "image/jpeg");
    }
}
