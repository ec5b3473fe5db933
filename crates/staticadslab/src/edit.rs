//! Edits of editable ads: "A PATCH on an editable image ad sends the resource back to
//! processing. Treat patches as new async jobs" [SEED-1]; each re-render is a new version
//! (`iav_…`), listed by `GET /v1/image-ads/:id/versions` [SEED-2].
//!
//! - which job an edit may build on, and binding it to that job's ad (`bind`);
//! - the `PATCH` itself, with the engine's idempotency key (the documents give PATCH one
//!   [SAL:reference/idempotency]), and the version it created (`patch`);
//! - an edit's provider reference `ia_…/iav_…` (unique per edit: the ad's own id belongs to
//!   the job that created it), and reading an edit's state from a poll (`updates`).
//!
//! Not documented, read as GUESS (providers.md has no body or answer shapes for PATCH): the
//! body is `{"current_json_tree": …}` (the resource field it updates), and the answer carries
//! the new version as `current_version_id`; when it does not, the newest version in the
//! versions list is taken.

use std::collections::HashMap;

use adgate_generator::transport::Effect;
use adgate_generator::{
    Accepted, GenError, JobState, JobView, Observed, ProviderUpdate, RateLimitSnapshot,
    RemoteState, UpdateTarget,
};
use http::HeaderValue;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{malformed, rate_snapshot};
use crate::wire::{DataEnvelope, ImageAd, Version};
use crate::{Kind, NAME, StaticAdsLab, spec};

/// An edit's provider reference: the ad and the version the edit created.
pub(crate) fn edit_ref(ad: &str, version: &str) -> String {
    format!("{ad}/{version}")
}

/// `(ad, version)` of an edit reference; `None` for anything else (ads, templates).
pub(crate) fn parse_edit_ref(r: &str) -> Option<(&str, &str)> {
    let (ad, version) = r.split_once('/')?;
    (Kind::ImageAd.owns(ad) && is_version_id(version)).then_some((ad, version))
}

fn is_version_id(s: &str) -> bool {
    s.len() > 4
        && s.len() <= spec::MAX_ID_LEN
        && s.starts_with("iav_")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether an edit may build on `job`, and the spec bound to its ad.
pub(crate) fn bind(spec: &Value, job: &JobView<'_>) -> Result<Value, String> {
    let id = job.id;
    if job.provider != NAME || spec::is_design_template(job.spec) {
        return Err(format!(
            "job {id} is not a StaticAdsLab image ad; only editable ads can be edited"
        ));
    }
    if job.state != JobState::Completed {
        return Err(format!(
            "job {id} is {:?}; an ad can be edited once it is COMPLETED",
            job.state
        ));
    }
    // The ad to PATCH: the one this job created, or the one an earlier edit changed.
    let ad = if spec::is_edit(job.spec) {
        job.spec
            .get("image_ad_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    } else {
        let editable = job.spec.get("editable").and_then(Value::as_bool) == Some(true)
            || job
                .provider_result
                .and_then(|r| r.get("sku_code"))
                .and_then(Value::as_str)
                == Some("editable_image_ad");
        if !editable {
            return Err(format!(
                "job {id} is a flat ad; only ads made with editable: true can be edited"
            ));
        }
        job.provider_ref.map(str::to_owned)
    };
    let Some(ad) = ad.filter(|a| Kind::ImageAd.owns(a)) else {
        return Err(format!("job {id} has no StaticAdsLab ad id on record"));
    };
    let mut bound = spec.clone();
    if let Some(o) = bound.as_object_mut() {
        o.insert("image_ad_id".to_owned(), Value::String(ad));
    }
    Ok(bound)
}

#[derive(Debug, Deserialize)]
struct Patched {
    #[serde(default)]
    current_version_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct VersionPage {
    data: Vec<Version>,
    #[serde(default)]
    has_more: bool,
}

impl StaticAdsLab {
    /// `PATCH /v1/image-ads/{ad}` with the new tree and the engine's idempotency key.
    pub(crate) async fn patch(
        &self,
        job_id: &str,
        ad: &str,
        tree: &Map<String, Value>,
        key: HeaderValue,
    ) -> Result<Observed<Vec<Accepted>>, GenError> {
        if !Kind::ImageAd.owns(ad) {
            return Err(GenError::Permanent {
                message: "an edit must name a StaticAdsLab image-ad id".to_owned(),
                provider_code: String::new(),
            });
        }
        let req = self
            .http
            .patch(format!("{}/v1/image-ads/{ad}", self.base))
            .header("idempotency-key", key)
            .json(&json!({"current_json_tree": tree}));
        let (_, headers, bytes) = self.exchange(req, Effect::Write).await?;
        let patched: DataEnvelope<Patched> =
            serde_json::from_slice(&bytes).map_err(|e| malformed("patched image ad", e))?;
        let version = match patched.data.current_version_id.filter(|v| is_version_id(v)) {
            Some(v) => v,
            None => self.newest_version(ad).await?,
        };
        let replayed = headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Ok(Observed::new(
            vec![Accepted {
                job_id: job_id.to_owned(),
                provider_ref: edit_ref(ad, &version),
                replayed,
            }],
            rate_snapshot(&headers),
        ))
    }

    /// The newest version of an ad, for a PATCH answer that did not name the one it created.
    /// Read right after the PATCH; a second editor racing this one could make it the wrong
    /// version, which is why the answer's own field is preferred.
    async fn newest_version(&self, ad: &str) -> Result<String, GenError> {
        let mut cursor: Option<String> = None;
        let mut newest = None;
        // Bounded: a page that says `has_more` must advance.
        for _ in 0..100 {
            let mut url = format!("{}/v1/image-ads/{ad}/versions?limit=100", self.base);
            if let Some(after) = &cursor {
                url.push_str("&starting_after=");
                url.push_str(after);
            }
            let (_, _, bytes) = self.exchange(self.http.get(url), Effect::Read).await?;
            let page: VersionPage =
                serde_json::from_slice(&bytes).map_err(|e| malformed("version list", e))?;
            let last = page.data.last().map(|v| v.id.clone());
            if last.is_some() {
                newest.clone_from(&last);
            }
            match last {
                Some(id) if page.has_more && is_version_id(&id) && cursor.as_ref() != Some(&id) => {
                    cursor = Some(id);
                }
                _ => break,
            }
        }
        newest
            .filter(|v| is_version_id(v))
            .ok_or_else(|| GenError::transient("StaticAdsLab listed no version after a PATCH"))
    }

    /// One version of an ad (`GET /v1/image-ads/:id/versions/:versionId`).
    async fn version(
        &self,
        ad: &str,
        version: &str,
    ) -> Result<(Option<Version>, Option<RateLimitSnapshot>), GenError> {
        let url = format!("{}/v1/image-ads/{ad}/versions/{version}", self.base);
        match self.exchange(self.http.get(url), Effect::Read).await {
            Ok((_, headers, bytes)) => {
                let v: DataEnvelope<Version> =
                    serde_json::from_slice(&bytes).map_err(|e| malformed("version", e))?;
                Ok((Some(v.data), rate_snapshot(&headers)))
            }
            Err(GenError::Permanent { provider_code, .. }) if provider_code == "NOT_FOUND" => {
                Ok((None, None))
            }
            Err(e) => Err(e),
        }
    }

    /// Updates for edit keys, from the ads a poll read (`ads`, by ad id). An edit whose
    /// version is the ad's current one reads from the ad; one an even newer edit overtook
    /// reads its own version (one request each; rare).
    pub(crate) async fn edit_updates(
        &self,
        keys: &[&str],
        ads: &HashMap<String, ImageAd>,
    ) -> Result<(HashMap<String, ProviderUpdate>, Option<RateLimitSnapshot>), GenError> {
        let mut out = HashMap::new();
        let mut rate = None;
        for key in keys {
            let Some((ad_id, version)) = parse_edit_ref(key) else {
                continue;
            };
            let Some(ad) = ads.get(ad_id) else {
                continue;
            };
            let current = ad.rest.get("current_version_id").and_then(Value::as_str);
            let update = if current == Some(version) {
                let mut u = ad.to_update();
                u.target = UpdateTarget::ProviderRef((*key).to_owned());
                let mut result = u.provider_result.take().unwrap_or_default();
                result.insert("version_id".to_owned(), Value::String(version.to_owned()));
                u.with_provider_result(result)
            } else {
                let (found, r) = self.version(ad_id, version).await?;
                rate = r.or(rate);
                match found {
                    Some(v) => v.to_update(key, ad),
                    None => ProviderUpdate::with_state(
                        UpdateTarget::ProviderRef((*key).to_owned()),
                        RemoteState::NotFound,
                    ),
                }
            };
            out.insert((*key).to_owned(), update);
        }
        Ok((out, rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(spec: &'a Value, result: Option<&'a Value>, state: JobState) -> JobView<'a> {
        JobView {
            id: "job_1",
            provider: NAME,
            state,
            provider_ref: Some("ia_0123456789abcdef"),
            spec,
            provider_result: result,
        }
    }

    #[test]
    fn only_completed_editable_ads_can_be_edited() {
        let edit = json!({"kind": "edit", "job_id": "job_1", "json_tree": {"a": 1}});
        let editable = json!({"editable": true});
        let bound = bind(&edit, &view(&editable, None, JobState::Completed)).unwrap();
        assert_eq!(bound["image_ad_id"], "ia_0123456789abcdef");
        // Known editable by its SKU too.
        let sku = json!({"sku_code": "editable_image_ad"});
        assert!(bind(&edit, &view(&json!({}), Some(&sku), JobState::Completed)).is_ok());
        let flat = bind(&edit, &view(&json!({}), None, JobState::Completed)).unwrap_err();
        assert!(flat.contains("flat ad"), "{flat}");
        let running = bind(&edit, &view(&editable, None, JobState::Processing)).unwrap_err();
        assert!(running.contains("COMPLETED"), "{running}");
        let template = json!({"kind": "design_template", "body": {"a": 1}});
        assert!(bind(&edit, &view(&template, None, JobState::Completed)).is_err());
        // An edit of an edit edits the same ad.
        let earlier = json!({"kind": "edit", "job_id": "job_0", "json_tree": {"a": 1},
                             "image_ad_id": "ia_feedfacefeedface"});
        let bound = bind(&edit, &view(&earlier, None, JobState::Completed)).unwrap();
        assert_eq!(bound["image_ad_id"], "ia_feedfacefeedface");
    }

    #[test]
    fn edit_refs_round_trip_and_reject_anything_else() {
        let r = edit_ref("ia_0123456789abcdef", "iav_0123456789abcdef");
        assert_eq!(
            parse_edit_ref(&r),
            Some(("ia_0123456789abcdef", "iav_0123456789abcdef"))
        );
        assert_eq!(parse_edit_ref("ia_0123456789abcdef"), None);
        assert_eq!(parse_edit_ref("ia_x/../../v1"), None);
        assert_eq!(parse_edit_ref("dt_1/iav_2"), None);
    }
}
