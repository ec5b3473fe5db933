//! `GET /templates/batch/{batchId}/results` → one [`ProviderUpdate`] per item, targeted at the
//! provider ref `"{batchId}:{index}"`.
//!
//! The poll carries no URLs ([PX-PY], [SEED-3]); the live OpenAPI page shows `url`/`width`/
//! `height` or per-layout `results[]`, which are used when present.

use adgate_generator::{JobError, Output, Progress, ProviderUpdate, RemoteState, UpdateTarget};
use serde_json::Value;

use crate::wire::{BatchResults, ResultItem, dimension, image_format, mime_type};

pub const WAITING_FOR_WEBHOOK: &str = "rendered; waiting for render.completed webhook";
pub use adgate_generator::codes::{
    OUTPUT_URL_UNAVAILABLE, PROVIDER_JOB_FAILED, PROVIDER_RESULT_MISSING,
};

pub fn item_ref(batch_id: &str, index: u64) -> UpdateTarget {
    UpdateTarget::ProviderRef(format!("{batch_id}:{index}"))
}

/// Translate one batch's results. `webhooks_usable`: a `render.completed` webhook can still
/// deliver the URL of an item the poll reports rendered.
pub fn translate(batch_id: &str, r: &BatchResults, webhooks_usable: bool) -> Vec<ProviderUpdate> {
    let max_index = r.results.iter().map(|i| i.index + 1).max().unwrap_or(0);
    let total = r.total_items.unwrap_or(max_index).max(max_index);
    // Clamp against absurd totals from a misbehaving server (documented cap: 100).
    let total = total.min(10_000);
    let status = r.status.to_ascii_lowercase();
    let mut updates = Vec::with_capacity(total as usize);
    for index in 0..total {
        let target = item_ref(batch_id, index);
        let update = match r.results.iter().find(|i| i.index == index) {
            Some(item) => item_update(target, item, r, webhooks_usable),
            None => missing_update(target, index, &status, r),
        };
        updates.push(update);
    }
    updates
}

fn item_update(
    target: UpdateTarget,
    item: &ResultItem,
    batch: &BatchResults,
    webhooks_usable: bool,
) -> ProviderUpdate {
    let success = item.success.unwrap_or(item.error.is_none());
    if !success {
        let code = provider_code(item, batch);
        let message = match &item.error {
            Some(Value::String(s)) if !s.is_empty() => format!("Pictify failed to render: {s}"),
            _ => format!("Pictify failed to render this item ({code})"),
        };
        // Timeouts and unreachable images may pass on a second try; bad variables and
        // expressions cannot.
        let retryable = matches!(code.as_str(), "RENDER_TIMEOUT" | "IMAGE_FETCH_FAILED");
        return ProviderUpdate::failed(
            target,
            JobError::new(PROVIDER_JOB_FAILED, message, retryable).with_provider_code(code),
        );
    }
    let outputs = outputs_of(item);
    if !outputs.is_empty() {
        return ProviderUpdate::completed(target, outputs);
    }
    if webhooks_usable {
        return ProviderUpdate::processing(
            target,
            Some(Progress {
                step: "rendered".to_owned(),
                message: WAITING_FOR_WEBHOOK.to_owned(),
                percentage: 100.0,
            }),
        );
    }
    ProviderUpdate::failed(
        target,
        JobError::new(
            OUTPUT_URL_UNAVAILABLE,
            "Pictify rendered the image but returns its URL only in a render.completed webhook, \
             and webhooks are not configured: set ADGATE_PUBLIC_URL and \
             ADGATE_PICTIFY_WEBHOOK_SECRET (and subscribe the URL at Pictify)",
            false,
        ),
    )
}

fn missing_update(
    target: UpdateTarget,
    index: u64,
    status: &str,
    r: &BatchResults,
) -> ProviderUpdate {
    match status {
        "cancelled" | "canceled" => ProviderUpdate::with_state(target, RemoteState::Cancelled),
        // A finished batch that never reported this item (it should not happen; the documents
        // say every item gets a record). Retryable: nothing says the spec was at fault.
        "completed" | "partial" | "failed" => ProviderUpdate::failed(
            target,
            JobError::new(
                PROVIDER_RESULT_MISSING,
                format!("Pictify batch ended ({status}) without a result for item {index}"),
                true,
            )
            .with_provider_code(status.to_ascii_uppercase()),
        ),
        // pending, processing, and any status we do not know yet: still running.
        _ => {
            let done = r.completed_items.unwrap_or(0) + r.failed_items.unwrap_or(0);
            let percentage = r.progress.unwrap_or(0.0).clamp(0.0, 100.0);
            ProviderUpdate::processing(
                target,
                Some(Progress {
                    step: status.to_owned(),
                    message: format!(
                        "batch {status}: {done}/{} items done",
                        r.total_items.unwrap_or(0)
                    ),
                    percentage,
                }),
            )
        }
    }
}

/// The item's own code field, else a batch-level `errors[]` entry with its index, else a
/// leading UPPER_SNAKE token of the error string, else `ITEM_FAILED`.
fn provider_code(item: &ResultItem, batch: &BatchResults) -> String {
    if let Some(c) = item.error_code.as_ref().or(item.code.as_ref())
        && !c.is_empty()
    {
        return c.clone();
    }
    if let Some(Value::Object(o)) = &item.error
        && let Some(c) = o
            .get("code")
            .or_else(|| o.get("errorCode"))
            .and_then(Value::as_str)
    {
        return c.to_owned();
    }
    let from_errors = batch.errors.iter().find_map(|e| {
        (e.get("index")?.as_u64()? == item.index)
            .then(|| e.get("errorCode").or_else(|| e.get("code"))?.as_str())
            .flatten()
    });
    if let Some(c) = from_errors {
        return c.to_owned();
    }
    if let Some(Value::String(s)) = &item.error {
        let token: String = s
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        if token.len() >= 3 && token.contains('_') {
            return token;
        }
    }
    "ITEM_FAILED".to_owned()
}

fn outputs_of(item: &ResultItem) -> Vec<Output> {
    let mut out = Vec::new();
    if let Some(url) = item.url.as_deref().filter(|u| !u.is_empty()) {
        let format = image_format(item.format.as_deref(), url);
        out.push(Output {
            url: url.to_owned(),
            width: dimension(item.width.as_ref()),
            height: dimension(item.height.as_ref()),
            mime_type: mime_type(&format),
            format,
            provider_fields: serde_json::Map::new(),
            custody: Default::default(),
        });
    }
    for l in &item.results {
        if let Some(url) = l.url.as_deref().filter(|u| !u.is_empty()) {
            let format = image_format(l.format.as_deref(), url);
            out.push(Output {
                url: url.to_owned(),
                width: dimension(l.width.as_ref()),
                height: dimension(l.height.as_ref()),
                mime_type: mime_type(&format),
                format,
                provider_fields: serde_json::Map::new(),
                custody: Default::default(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> BatchResults {
        serde_json::from_str(s).unwrap()
    }

    /// The mock in [PX-PY]'s tests, verbatim.
    const PX_PY_MOCK: &str = r#"{"batchId":"batch_abc123","status":"processing","progress":50,"totalItems":2,"completedItems":1,"failedItems":0,"results":[{"index":0,"success":true,"variables":["name","company"]}],"errors":[],"createdAt":"2026-01-29T10:30:00Z","startedAt":"2026-01-29T10:30:01Z"}"#;

    #[test]
    fn sdk_mock_without_webhooks_fails_rendered_item_and_keeps_the_other_running() {
        let u = translate("batch_abc123", &parse(PX_PY_MOCK), false);
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].target, item_ref("batch_abc123", 0));
        assert_eq!(u[0].state, RemoteState::Failed);
        let e = u[0].error.as_ref().unwrap();
        assert_eq!(e.code, OUTPUT_URL_UNAVAILABLE);
        assert!(!e.retryable);
        assert!(e.message.contains("ADGATE_PUBLIC_URL"));
        assert_eq!(u[1].state, RemoteState::Processing);
        assert_eq!(u[1].progress.as_ref().unwrap().percentage, 50.0);
    }

    #[test]
    fn sdk_mock_with_webhooks_waits_for_the_url() {
        let u = translate("batch_abc123", &parse(PX_PY_MOCK), true);
        assert_eq!(u[0].state, RemoteState::Processing);
        let p = u[0].progress.as_ref().unwrap();
        assert_eq!(p.percentage, 100.0);
        assert_eq!(p.message, WAITING_FOR_WEBHOOK);
    }

    #[test]
    fn live_openapi_items_with_urls_complete() {
        let r = parse(
            r#"{"batchId":"b","status":"completed","totalItems":2,"results":[
              {"index":0,"success":true,"url":"https://cdn.pictify.io/r/a.png","width":1200,"height":630},
              {"index":1,"success":true,"variables":["t"],"results":[
                {"layout":"story","name":"Story","url":"https://cdn.pictify.io/r/b.webp","width":1080,"height":1920,"format":"webp","id":"img_1"}],
               "errors":[{"layout":"square","error":"boom"}]}]}"#,
        );
        let u = translate("b", &r, false);
        assert_eq!(u[0].state, RemoteState::Completed);
        assert_eq!(u[0].outputs[0].width, 1200);
        assert_eq!(u[0].outputs[0].mime_type, "image/png");
        assert_eq!(u[1].state, RemoteState::Completed);
        assert_eq!(u[1].outputs[0].format, "webp");
        assert_eq!(u[1].outputs[0].height, 1920);
    }

    #[test]
    fn failed_items_carry_provider_codes() {
        let r = parse(
            r#"{"status":"partial","totalItems":4,"results":[
              {"index":0,"success":false,"variables":["t"],"error":"Missing required variable","errorCode":"INVALID_VARIABLE"},
              {"index":1,"success":false,"error":"timed out"},
              {"index":2,"success":false,"error":"EXPRESSION_ERROR: bad"},
              {"index":3,"success":true}],
              "errors":[{"index":1,"code":"RENDER_TIMEOUT"}]}"#,
        );
        let u = translate("b", &r, true);
        let codes: Vec<_> = u[..3]
            .iter()
            .map(|x| x.error.as_ref().unwrap().provider_code.clone())
            .collect();
        assert_eq!(
            codes,
            ["INVALID_VARIABLE", "RENDER_TIMEOUT", "EXPRESSION_ERROR"]
        );
        assert!(
            u[..3]
                .iter()
                .all(|x| x.error.as_ref().unwrap().code == PROVIDER_JOB_FAILED)
        );
        assert!(!u[0].error.as_ref().unwrap().retryable);
        assert!(u[1].error.as_ref().unwrap().retryable);
    }

    #[test]
    fn cancelled_and_terminal_batches_settle_missing_items() {
        let r = parse(
            r#"{"status":"cancelled","totalItems":2,"results":[{"index":0,"success":true}]}"#,
        );
        let u = translate("b", &r, true);
        assert_eq!(
            u[0].state,
            RemoteState::Processing,
            "rendered item keeps waiting"
        );
        assert_eq!(u[1].state, RemoteState::Cancelled);
        let r = parse(
            r#"{"status":"completed","totalItems":2,"results":[{"index":0,"success":true,"url":"https://x/a.png"}]}"#,
        );
        let u = translate("b", &r, false);
        assert_eq!(u[1].state, RemoteState::Failed);
        assert_eq!(u[1].error.as_ref().unwrap().code, PROVIDER_RESULT_MISSING);
    }
}
