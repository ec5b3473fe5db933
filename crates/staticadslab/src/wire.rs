//! Wire types (serde) of the StaticAdsLab API and their translation into the job model.
//! Field names follow [SEED-2]; casing is snake_case except `imageFillUrl` in node overrides.

use std::collections::BTreeMap;

use adgate_generator::{JobError, Output, Progress, ProviderUpdate, UpdateTarget};
use serde::{Deserialize, Serialize};

/// Stable code for a provider-side job failure.
pub use adgate_generator::codes::PROVIDER_JOB_FAILED as JOB_FAILED;

/// `POST /v1/image-ads` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateImageAd {
    pub design_template_id: String,
    pub brand_id: String,
    pub product_id: String,
    pub audience_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_variant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub editable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<AdOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_overrides: Option<BTreeMap<String, NodeOverride>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_ai_images: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_copy: Option<bool>,
}

/// `{"characters": …}` or `{"imageFillUrl": …}` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum NodeOverride {
    Characters {
        characters: String,
    },
    ImageFill {
        #[serde(rename = "imageFillUrl")]
        image_fill_url: String,
    },
}

/// `{data: T, meta}`; `meta` is not needed by the adapter.
#[derive(Debug, Deserialize)]
pub struct DataEnvelope<T> {
    pub data: T,
}

#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: Vec<ErrorDetail>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

/// The image-ad resource: the fields the gateway maps, and everything else verbatim.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImageAd {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub progress: Option<WireProgress>,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub width: Option<f64>,
    #[serde(default)]
    pub height: Option<f64>,
    #[serde(default)]
    pub error: Option<WireJobError>,
    /// Every other field of the resource, verbatim [SEED-2]: `sku_code`, `editable`,
    /// `current_json_tree` (null until the ad completes), `figma_render_url`,
    /// `initial_figma_render_url`, `duration_ms`, `batch_id`, the echoed inputs, `created_at`,
    /// `completed_at`, and whatever the provider adds. The job's `provider_result`.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// The design-template resource (`dt_…`): asynchronous like an ad (processing → completed |
/// failed [SEED-1]). Its documented fields are only the id, the status and, by the async
/// contract, `progress` and `error`; everything else travels verbatim.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DesignTemplate {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub progress: Option<WireProgress>,
    #[serde(default)]
    pub error: Option<WireJobError>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl DesignTemplate {
    /// A completed template has no image: the job completes with its `dt_` id as the result
    /// and the resource's other fields as `provider_result`.
    pub fn to_update(&self) -> ProviderUpdate {
        let target = UpdateTarget::ProviderRef(self.id.clone());
        let update = match self.status.as_str() {
            "completed" => ProviderUpdate::completed_without_outputs(target),
            "failed" => {
                let message = self
                    .error
                    .as_ref()
                    .and_then(|e| e.message.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "design template generation failed".to_owned());
                let code = self
                    .error
                    .as_ref()
                    .and_then(|e| e.code.clone())
                    .unwrap_or_else(|| "UNKNOWN".to_owned());
                // Free when failed [SEED-1], like an ad: resubmitting costs nothing.
                ProviderUpdate::failed(
                    target,
                    JobError::new(JOB_FAILED, message, true).with_provider_code(code),
                )
            }
            _ => ProviderUpdate::processing(target, self.progress.as_ref().map(|p| p.to_model())),
        };
        if self.rest.is_empty() {
            update
        } else {
            update.with_provider_result(self.rest.clone())
        }
    }
}

/// One version of an editable ad (`GET /v1/image-ads/:id/versions/:versionId`) [SEED-2]; its
/// fields are not documented beyond the `iav_` id (providers.md), so only the id, status and
/// image are read and the rest travels verbatim.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Version {
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl Version {
    /// The edit job's update from its own version (the ad itself has moved on to a newer
    /// one): the version's image and tree, the ad's size and SKU.
    pub fn to_update(&self, edit_ref: &str, ad: &ImageAd) -> ProviderUpdate {
        let target = UpdateTarget::ProviderRef(edit_ref.to_owned());
        let mut result = ad.rest.clone();
        result.remove("current_version_id");
        for (k, v) in &self.rest {
            result.insert(k.clone(), v.clone());
        }
        result.insert(
            "version_id".to_owned(),
            serde_json::Value::String(self.id.clone()),
        );
        let update = match self.status.as_str() {
            "completed" => match self.image_url.as_deref().filter(|u| !u.is_empty()) {
                Some(url) => ProviderUpdate::completed(
                    target,
                    vec![Output {
                        url: url.to_owned(),
                        width: dimension(ad.width),
                        height: dimension(ad.height),
                        format: String::new(),
                        mime_type: "image/png".to_owned(),
                        provider_fields: serde_json::Map::new(),
                        custody: Default::default(),
                    }],
                ),
                None => ProviderUpdate::processing(target, None),
            },
            "failed" => ProviderUpdate::failed(
                target,
                JobError::new(JOB_FAILED, "the edit's re-render failed", true)
                    .with_provider_code("UNKNOWN"),
            ),
            _ => ProviderUpdate::processing(target, None),
        };
        update.with_provider_result(result)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WireProgress {
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub percentage: Option<f64>,
}

/// `data.error` of a failed ad, and the `error` SSE event's data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WireJobError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl WireProgress {
    /// Normalise to the model's 0–100. The documented example is a 0..1 fraction (0.5)
    /// [SEED-1]; the REST scale is undocumented, so values ≤ 1.0 are read as fractions.
    pub fn to_model(&self) -> Progress {
        let raw = self.percentage.unwrap_or(0.0);
        let pct = if raw.is_finite() {
            if raw <= 1.0 { raw * 100.0 } else { raw }
        } else {
            0.0
        };
        Progress {
            step: self.step.clone().unwrap_or_default(),
            message: self.message.clone().unwrap_or_default(),
            percentage: pct.clamp(0.0, 100.0),
        }
    }
}

impl WireJobError {
    /// A failed ad: "Failed jobs do not deduct from your wallet" [SEED-1], so resubmitting
    /// costs nothing and may succeed — retryable.
    pub fn to_model(&self) -> JobError {
        let message = self
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "image ad generation failed".to_owned());
        JobError::new(JOB_FAILED, message, true)
            .with_provider_code(self.code.clone().unwrap_or_else(|| "UNKNOWN".to_owned()))
    }
}

fn dimension(v: Option<f64>) -> u32 {
    match v {
        Some(x) if x.is_finite() && x > 0.0 && x <= f64::from(u32::MAX) => x.round() as u32,
        _ => 0,
    }
}

impl ImageAd {
    /// Translate one ad into an update addressed by its `ia_` id. The fields not mapped to
    /// the job's typed fields (id, status, progress, image_url, width, height, error) travel
    /// verbatim as the update's `provider_result` (issue 20).
    pub fn to_update(&self) -> ProviderUpdate {
        let update = self.mapped_update();
        if self.rest.is_empty() {
            update
        } else {
            update.with_provider_result(self.rest.clone())
        }
    }

    fn mapped_update(&self) -> ProviderUpdate {
        let target = UpdateTarget::ProviderRef(self.id.clone());
        match self.status.as_str() {
            "completed" => match self.image_url.as_deref().filter(|u| !u.is_empty()) {
                Some(url) => ProviderUpdate::completed(
                    target,
                    vec![Output {
                        url: url.to_owned(),
                        width: dimension(self.width),
                        height: dimension(self.height),
                        format: String::new(),
                        mime_type: "image/png".to_owned(),
                        provider_fields: serde_json::Map::new(),
                        custody: Default::default(),
                    }],
                ),
                // The model's Completed never lacks outputs: wait for the URL.
                None => ProviderUpdate::processing(target, None),
            },
            "failed" => {
                let err = self.error.clone().unwrap_or(WireJobError {
                    code: None,
                    message: None,
                });
                ProviderUpdate::failed(target, err.to_model())
            }
            // `processing`, and anything new the provider may add: the deadline bounds it.
            _ => ProviderUpdate::processing(target, self.progress.as_ref().map(|p| p.to_model())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adgate_generator::RemoteState;
    use serde_json::json;

    #[test]
    fn documented_created_envelope_parses() {
        let body = json!({
            "data": {
                "id": "ia_a1b2c3d4e5f67890", "design_template_id": "dt_1", "brand_id": "brand_1",
                "product_id": "prod_1", "audience_id": "aud_1", "product_variant_id": null,
                "prompt": null, "options": null, "editable": false, "sku_code": "flat_image_ad",
                "status": "processing", "progress": null, "image_url": null, "width": null,
                "height": null, "current_json_tree": null, "error": null, "duration_ms": null,
                "batch_id": null, "created_at": "2026-04-30T14:30:00.000Z", "completed_at": null
            },
            "meta": {"request_id": "req_a1b2c3d4e5f67890", "timestamp": "2026-04-30T14:30:00.000Z"}
        });
        let env: DataEnvelope<ImageAd> = serde_json::from_value(body).unwrap();
        assert_eq!(env.data.id, "ia_a1b2c3d4e5f67890");
        let u = env.data.to_update();
        assert_eq!(u.state, RemoteState::Processing);
        assert!(u.progress.is_none());
    }

    #[test]
    fn documented_failed_example_maps_to_failed() {
        let body = r#"{"data":{"id":"ia_abc","status":"failed","error":{"code":"PIPELINE_ERROR","message":"Image generation failed after 3 attempts"}}}"#;
        let env: DataEnvelope<ImageAd> = serde_json::from_str(body).unwrap();
        let u = env.data.to_update();
        assert_eq!(u.state, RemoteState::Failed);
        let e = u.error.unwrap();
        assert_eq!(e.code, JOB_FAILED);
        assert_eq!(e.provider_code, "PIPELINE_ERROR");
        assert_eq!(e.message, "Image generation failed after 3 attempts");
        assert!(e.retryable);
    }

    #[test]
    fn a_completed_template_completes_without_outputs_and_keeps_its_fields() {
        let t: DesignTemplate = serde_json::from_value(json!({
            "id": "dt_1", "status": "completed", "name": "spring", "progress": null
        }))
        .unwrap();
        let u = t.to_update();
        assert_eq!(u.state, RemoteState::Completed);
        assert!(u.without_outputs && u.outputs.is_empty());
        assert_eq!(u.provider_result.unwrap()["name"], "spring");
        let failed: DesignTemplate = serde_json::from_value(json!({
            "id": "dt_1", "status": "failed", "error": {"code": "PIPELINE_ERROR", "message": "no"}
        }))
        .unwrap();
        let u = failed.to_update();
        assert_eq!(u.state, RemoteState::Failed);
        assert_eq!(u.error.unwrap().provider_code, "PIPELINE_ERROR");
        let running: DesignTemplate =
            serde_json::from_value(json!({"id": "dt_1", "status": "processing"})).unwrap();
        assert_eq!(running.to_update().state, RemoteState::Processing);
        assert!(!running.to_update().without_outputs);
    }

    #[test]
    fn completed_needs_a_url() {
        let done: ImageAd = serde_json::from_value(json!({
            "id": "ia_1", "status": "completed", "image_url": "https://cdn/x.png",
            "width": 1080, "height": 1350
        }))
        .unwrap();
        let u = done.to_update();
        assert_eq!(u.state, RemoteState::Completed);
        assert_eq!(u.outputs[0].width, 1080);
        assert_eq!(u.outputs[0].height, 1350);
        assert_eq!(u.outputs[0].mime_type, "image/png");
        let no_url: ImageAd =
            serde_json::from_value(json!({"id": "ia_1", "status": "completed", "image_url": null}))
                .unwrap();
        assert_eq!(no_url.to_update().state, RemoteState::Processing);
    }

    /// An editable ad's JSON tree, Figma renders, SKU and duration are kept verbatim as the
    /// job's provider result; what is mapped to typed fields is not repeated there [SEED-2].
    #[test]
    fn editable_ad_keeps_its_own_fields() {
        let tree = json!({"type": "FRAME", "id": "root", "children": [{"id": "node-id-headline"}]});
        let done: ImageAd = serde_json::from_value(json!({
            "id": "ia_1", "status": "completed", "image_url": "https://cdn/x.png",
            "width": 1080, "height": 1350, "progress": null, "error": null,
            "editable": true, "sku_code": "editable_image_ad", "current_json_tree": tree,
            "figma_render_url": "https://figma/r.png",
            "initial_figma_render_url": "https://figma/i.png", "duration_ms": 41250,
            "batch_id": null, "created_at": "2026-04-30T14:30:00.000Z"
        }))
        .unwrap();
        let u = done.to_update();
        assert_eq!(u.state, RemoteState::Completed);
        let r = u.provider_result.unwrap();
        assert_eq!(r["current_json_tree"], tree);
        assert_eq!(r["figma_render_url"], "https://figma/r.png");
        assert_eq!(r["initial_figma_render_url"], "https://figma/i.png");
        assert_eq!(r["sku_code"], "editable_image_ad");
        assert_eq!(r["duration_ms"], 41250);
        assert_eq!(r["batch_id"], serde_json::Value::Null);
        for mapped in [
            "id",
            "status",
            "image_url",
            "width",
            "height",
            "progress",
            "error",
        ] {
            assert!(!r.contains_key(mapped), "{mapped} is mapped, not repeated");
        }
        assert!(u.outputs[0].provider_fields.is_empty());
    }

    #[test]
    fn progress_is_normalised_to_percent() {
        let p = |v: f64| {
            WireProgress {
                step: Some("s".into()),
                message: None,
                percentage: Some(v),
            }
            .to_model()
            .percentage
        };
        assert_eq!(p(0.5), 50.0);
        assert_eq!(p(1.0), 100.0);
        assert_eq!(p(42.0), 42.0);
        assert_eq!(p(250.0), 100.0);
        assert_eq!(p(-3.0), 0.0);
        assert_eq!(p(f64::NAN), 0.0);
    }

    #[test]
    fn node_overrides_use_the_wire_key() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "hero".to_owned(),
            NodeOverride::ImageFill {
                image_fill_url: "https://x/y.jpg".into(),
            },
        );
        overrides.insert(
            "headline".to_owned(),
            NodeOverride::Characters {
                characters: "25% off".into(),
            },
        );
        let req = CreateImageAd {
            design_template_id: "dt_1".into(),
            brand_id: "brand_1".into(),
            product_id: "prod_1".into(),
            audience_id: "aud_1".into(),
            product_variant_id: None,
            prompt: None,
            editable: None,
            options: None,
            node_overrides: Some(overrides),
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["node_overrides"]["hero"],
            json!({"imageFillUrl": "https://x/y.jpg"})
        );
        assert_eq!(
            v["node_overrides"]["headline"],
            json!({"characters": "25% off"})
        );
        assert!(v.get("prompt").is_none());
    }
}
