//! Pictify webhooks: verify `X-Pictify-Signature: t=<unix>,v1=<hex>` (HMAC-SHA256 over
//! `"<t>.<raw body>"`, 300 s tolerance both ways, constant-time [PX-LIVE:security/webhook-verification])
//! and translate the events.
//!
//! - `render.completed` → `Completed`, correlated by template and whatever variable values the
//!   event carries; the event names no batch or index ([SEED-3], open question 10).
//! - `render.failed` → `Failed` by correlation when the event carries variables; the documented
//!   payload does not, so usually no update (the next poll reports the failure).
//! - `batch.completed` / `batch.failed` → a poll hint for the batch.
//! - anything else → accepted with no effect.

use std::time::SystemTime;

use adgate_generator::signature::{self, DEFAULT_TOLERANCE};
use adgate_generator::{
    JobError, Output, ProviderUpdate, UpdateTarget, WebhookError, WebhookEvent,
};
use http::HeaderMap;

use crate::results::PROVIDER_JOB_FAILED;
use crate::spec::correlation_key;
use crate::wire::{
    BatchEventData, RenderData, WebhookEnvelope, dimension, image_format, mime_type,
};
use serde_json::{Map, Value};

pub const SIGNATURE_HEADER: &str = "x-pictify-signature";
pub const EVENT_HEADER: &str = "x-pictify-event";
pub const DELIVERY_HEADER: &str = "x-pictify-delivery-id";

pub fn parse(
    secret: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<WebhookEvent, WebhookError> {
    let secret = secret.ok_or(WebhookError::NotConfigured)?;
    let header = headers
        .get(SIGNATURE_HEADER)
        .ok_or(WebhookError::BadSignature("missing X-Pictify-Signature"))?
        .to_str()
        .map_err(|_| WebhookError::BadSignature("malformed signature header"))?;
    signature::verify(
        header,
        &[secret.as_bytes()],
        "",
        body,
        now,
        DEFAULT_TOLERANCE,
    )?;

    let envelope: WebhookEnvelope = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not a Pictify event envelope: {e}")))?;
    let delivery_id = headers
        .get(DELIVERY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let mut event = WebhookEvent {
        delivery_id,
        ..WebhookEvent::default()
    };
    match envelope.event.as_str() {
        "render.completed" => {
            // The event's own fields, verbatim, minus those mapped to the output (`url`,
            // `width`, `height`, `format`): `imageId`, `renderedAt`, `templateId`,
            // `variables`, `userStorageUrl`, ... [SEED-3], [PX-LIVE:concepts/webhooks].
            let mut provider_fields = match &envelope.data {
                Value::Object(o) => o.clone(),
                _ => Map::new(),
            };
            for mapped in ["url", "width", "height", "format"] {
                provider_fields.remove(mapped);
            }
            let data: RenderData = serde_json::from_value(envelope.data)
                .map_err(|e| WebhookError::Malformed(format!("render.completed data: {e}")))?;
            let (Some(template), Some(url)) = (&data.template_id, &data.url) else {
                // Without template and URL the event cannot complete one of our jobs: accept
                // and ignore.
                return Ok(event);
            };
            // Optional per the document (`variables?`); without them the oldest unfinished
            // job of the template is the best candidate.
            let variables = data.variables.clone().unwrap_or_default();
            if url.is_empty() {
                return Ok(event);
            }
            let format = image_format(data.format.as_deref(), url);
            let output = Output {
                url: url.clone(),
                width: dimension(data.width.as_ref()),
                height: dimension(data.height.as_ref()),
                mime_type: mime_type(&format),
                format,
                provider_fields,
                custody: Default::default(),
            };
            event.updates.push(ProviderUpdate::completed(
                UpdateTarget::Correlated {
                    key: correlation_key(template),
                    fields: variables,
                },
                vec![output],
            ));
        }
        "render.failed" => {
            let data: RenderData = serde_json::from_value(envelope.data)
                .map_err(|e| WebhookError::Malformed(format!("render.failed data: {e}")))?;
            // Without variables (the documented payload has none [PX-LIVE:concepts/webhooks])
            // the event cannot name its job: failing "the oldest job of the template" on a
            // guess would fail the wrong one. Poll that template's batches now instead, so
            // the failure (with its code) is read at once rather than at the next backstop.
            if data.variables.as_ref().is_none_or(|v| v.is_empty())
                && let Some(template) = &data.template_id
            {
                event.poll_correlated.push(correlation_key(template));
            }
            if let (Some(template), Some(variables)) = (
                &data.template_id,
                data.variables
                    .as_ref()
                    .filter(|v: &&Map<_, _>| !v.is_empty()),
            ) {
                let code = data
                    .error_code
                    .clone()
                    .unwrap_or_else(|| "RENDER_FAILED".into());
                let message = data.error.clone().unwrap_or_else(|| "render failed".into());
                event.updates.push(ProviderUpdate::failed(
                    UpdateTarget::Correlated {
                        key: correlation_key(template),
                        fields: variables.clone(),
                    },
                    JobError::new(
                        PROVIDER_JOB_FAILED,
                        format!("Pictify failed to render: {message}"),
                        false,
                    )
                    .with_provider_code(code),
                ));
            }
        }
        "batch.completed" | "batch.failed" => {
            let data: BatchEventData = serde_json::from_value(envelope.data)
                .map_err(|e| WebhookError::Malformed(format!("batch event data: {e}")))?;
            if let Some(id) = data.batch_id.filter(|s| !s.is_empty()) {
                event.poll_hints.push(id);
            }
        }
        _ => {}
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use adgate_generator::RemoteState;
    use http::HeaderValue;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    const SECRET: &str = "whsec_test";
    const T: u64 = 1_769_682_600;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn signed(body: &str, t: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        let sig = signature::header_value(SECRET.as_bytes(), "", t, body.as_bytes());
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(&sig).unwrap());
        h.insert(DELIVERY_HEADER, HeaderValue::from_static("del_1"));
        h
    }

    /// The [SEED-3] payload, verbatim.
    const RENDER_COMPLETED: &str = r#"{"event":"render.completed","timestamp":"2026-01-29T10:30:00Z","data":{"type":"image","source":"api","imageId":"img_abc123","url":"https://cdn.pictify.io/renders/abc123.png","templateId":"tmpl_xyz789","variables":{"title":"Getting Started with APIs"},"renderedAt":"2026-01-29T10:30:00Z"}}"#;
    const BATCH_COMPLETED: &str = r#"{"event":"batch.completed","timestamp":"2026-01-29T10:30:00Z","data":{"batchId":"batch_abc123","templateUid":"tmpl_xyz789","status":"completed","totalCount":500,"completedCount":498,"failedCount":2,"duration":45000}}"#;

    #[test]
    fn render_completed_targets_the_correlation_key() {
        let ev = parse(
            Some(SECRET),
            &signed(RENDER_COMPLETED, T),
            RENDER_COMPLETED.as_bytes(),
            at(T),
        )
        .unwrap();
        assert_eq!(ev.delivery_id.as_deref(), Some("del_1"));
        assert_eq!(ev.updates.len(), 1);
        let u = &ev.updates[0];
        assert_eq!(u.state, RemoteState::Completed);
        let vars = json!({"title": "Getting Started with APIs"});
        assert_eq!(
            u.target,
            UpdateTarget::Correlated {
                key: "tmpl_xyz789".to_owned(),
                fields: vars.as_object().unwrap().clone()
            }
        );
        assert_eq!(
            u.outputs[0].url,
            "https://cdn.pictify.io/renders/abc123.png"
        );
        assert_eq!(u.outputs[0].mime_type, "image/png");
        assert!(ev.poll_hints.is_empty());
    }

    #[test]
    fn batch_completed_is_a_poll_hint() {
        let ev = parse(
            Some(SECRET),
            &signed(BATCH_COMPLETED, T),
            BATCH_COMPLETED.as_bytes(),
            at(T),
        )
        .unwrap();
        assert!(ev.updates.is_empty());
        assert_eq!(ev.poll_hints, ["batch_abc123"]);
    }

    #[test]
    fn render_failed_without_variables_changes_nothing_and_with_them_fails() {
        let body = r#"{"event":"render.failed","timestamp":"x","data":{"type":"image","templateId":"tmpl_a","error":"Template not found","errorCode":"TEMPLATE_NOT_FOUND"}}"#;
        let ev = parse(Some(SECRET), &signed(body, T), body.as_bytes(), at(T)).unwrap();
        assert!(ev.updates.is_empty());
        let body = r#"{"event":"render.failed","data":{"templateId":"tmpl_a","variables":{"a":1},"error":"bad","errorCode":"EXPRESSION_ERROR"}}"#;
        let ev = parse(Some(SECRET), &signed(body, T), body.as_bytes(), at(T)).unwrap();
        assert_eq!(ev.updates[0].state, RemoteState::Failed);
        assert_eq!(
            ev.updates[0].error.as_ref().unwrap().provider_code,
            "EXPRESSION_ERROR"
        );
    }

    #[test]
    fn unknown_events_are_accepted_without_effect() {
        let body = r#"{"event":"binding.updated","data":{}}"#;
        let ev = parse(Some(SECRET), &signed(body, T), body.as_bytes(), at(T)).unwrap();
        assert!(ev.updates.is_empty() && ev.poll_hints.is_empty());
    }

    #[test]
    fn signature_vectors() {
        let body = RENDER_COMPLETED.as_bytes();
        let good = signed(RENDER_COMPLETED, T);
        // Independent vector: HMAC-SHA256(key = secret, msg = "<t>.<raw body>"), hex.
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{T}.").as_bytes());
        mac.update(body);
        let expected = format!("t={T},v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(good[SIGNATURE_HEADER].to_str().unwrap(), expected);
        // Verification passes at the edges of the 300 s tolerance.
        assert!(parse(Some(SECRET), &good, body, at(T + 300)).is_ok());
        assert!(parse(Some(SECRET), &good, body, at(T - 300)).is_ok());
        // Stale and future.
        assert_eq!(
            parse(Some(SECRET), &good, body, at(T + 301)).unwrap_err(),
            WebhookError::BadSignature("timestamp outside tolerance")
        );
        assert!(parse(Some(SECRET), &good, body, at(T - 301)).is_err());
        // Tampered body, wrong secret, missing header, no secret configured.
        let tampered = RENDER_COMPLETED.replace("abc123.png", "evil.png");
        assert!(matches!(
            parse(Some(SECRET), &good, tampered.as_bytes(), at(T)),
            Err(WebhookError::BadSignature(_))
        ));
        assert!(parse(Some("whsec_other"), &good, body, at(T)).is_err());
        assert!(matches!(
            parse(Some(SECRET), &HeaderMap::new(), body, at(T)),
            Err(WebhookError::BadSignature(_))
        ));
        assert_eq!(
            parse(None, &good, body, at(T)).unwrap_err(),
            WebhookError::NotConfigured
        );
        // Several v1 values (secret rotation): any match is enough.
        let sig = signature::sign(SECRET.as_bytes(), "", T, body);
        let mut multi = HeaderMap::new();
        let value = format!("t={T},v1={},v1={sig}", "00".repeat(32));
        multi.insert(SIGNATURE_HEADER, HeaderValue::from_str(&value).unwrap());
        assert!(parse(Some(SECRET), &multi, body, at(T)).is_ok());
        let value = format!("t={T},v1={}", "00".repeat(32));
        multi.insert(SIGNATURE_HEADER, HeaderValue::from_str(&value).unwrap());
        assert!(parse(Some(SECRET), &multi, body, at(T)).is_err());
    }

    /// Computed outside the project: python3 `hmac.new(b"whsec_test", b"1769682600." +
    /// RENDER_COMPLETED, hashlib.sha256).hexdigest()` — HMAC-SHA256(secret, "<t>.<raw body>")
    /// [PX-LIVE:security/webhook-verification]. The simulator pins the same literal.
    const LITERAL_V1: &str = "acfb36339b593d536506d170019c369c44ccca51303b00e387a1b5c9683663fa";

    fn literal_headers(v1: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!("t={T},v1={v1}");
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(&value).unwrap());
        h
    }

    #[test]
    fn literal_vector_verifies_and_one_changed_digit_does_not() {
        let body = RENDER_COMPLETED.as_bytes();
        let ev = parse(Some(SECRET), &literal_headers(LITERAL_V1), body, at(T)).unwrap();
        assert_eq!(ev.updates.len(), 1);
        // Change the last hex digit (a → b).
        let changed = format!("{}b", &LITERAL_V1[..63]);
        assert_ne!(changed, LITERAL_V1);
        assert_eq!(
            parse(Some(SECRET), &literal_headers(&changed), body, at(T)).unwrap_err(),
            WebhookError::BadSignature("signature mismatch")
        );
        // And the test helper signs exactly the literal.
        assert_eq!(
            signed(RENDER_COMPLETED, T)[SIGNATURE_HEADER],
            format!("t={T},v1={LITERAL_V1}").as_str()
        );
    }

    #[test]
    fn signed_garbage_is_malformed_not_a_panic() {
        let body = "{not json";
        assert!(matches!(
            parse(Some(SECRET), &signed(body, T), body.as_bytes(), at(T)),
            Err(WebhookError::Malformed(_))
        ));
        let body = r#"{"event":"render.completed","data":{"templateId":5}}"#;
        assert!(matches!(
            parse(Some(SECRET), &signed(body, T), body.as_bytes(), at(T)),
            Err(WebhookError::Malformed(_))
        ));
    }
}
