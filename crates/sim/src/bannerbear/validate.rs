//! Request validation: `ImageCreateRequest` [V5-SPEC] and the webhook resource bodies.
//!
//! Status codes: a missing required parameter is 400, every other payload problem (bad type,
//! unknown attribute, bad option value) is 422 [V5-SPEC] `POST /images`. Unknown top-level
//! fields are 422 too (GUESS, stricter: the v2 fields `webhook_url`, `transparent`,
//! `render_pdf`, `project_id` do not exist in v5 [V5-SPEC], §5, and are refused by name rather
//! than ignored).

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value};

use super::gateway::error;
use super::{TEMPLATE_HEIGHT, TEMPLATE_WIDTH};

pub(super) fn has_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The JSON object of a request body. GUESS: `Content-Type: application/json` is required on
/// every JSON call ([RB5], [MCP] client.ts always send it); without it, or with a body that is
/// not a JSON object, the answer is 400 "invalid request" [BB-V5].
pub(super) fn json_object(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, Box<Response>> {
    if !has_json_content_type(headers) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/json",
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "Request body must be a JSON object",
        ))),
        Err(e) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("Request body is not valid JSON: {e}"),
        ))),
    }
}

fn missing(name: &str) -> Box<Response> {
    Box::new(error(
        StatusCode::BAD_REQUEST,
        format!("Missing required parameter: {name}"),
    ))
}

fn invalid(message: impl Into<String>) -> Box<Response> {
    Box::new(error(StatusCode::UNPROCESSABLE_ENTITY, message))
}

// ---------------------------------------------------------------------------------------------
// POST /v5/images

/// Top-level fields of `ImageCreateRequest` [V5-SPEC].
const IMAGE_FIELDS: [&str; 9] = [
    "template",
    "modifications",
    "formats",
    "scale",
    "dpi",
    "quality",
    "proxy",
    "metadata",
    "version",
];

/// v2 fields that v5 dropped (§5), named in the refusal.
const V2_ONLY_FIELDS: [&str; 5] = [
    "webhook_url",
    "transparent",
    "render_pdf",
    "project_id",
    "template_version",
];

/// Output formats, default `["jpg"]` [V5-SPEC].
pub(super) const FORMATS: [&str; 5] = ["jpg", "png", "pdf", "webp", "avif"];

/// `modifications.objects[]` attributes of type boolean / number [V5-SPEC]@a9ca682; every
/// other attribute in [`STRING_ATTRS`] is a string.
const BOOL_ATTRS: [&str; 5] = [
    "hidden",
    "text-ellipsis",
    "aspect-ratio-locked",
    "lottie-loop",
    "collapsed",
];
const NUMBER_ATTRS: [&str; 39] = [
    "left",
    "top",
    "width",
    "height",
    "rotate",
    "rotateX",
    "rotateY",
    "rotateZ",
    "perspective",
    "blur",
    "opacity",
    "padding",
    "border-width",
    "anchor-gap-x",
    "anchor-gap-y",
    "text-highlight-padding-vertical",
    "text-highlight-padding-horizontal",
    "text-highlight-border-radius",
    "font-size",
    "font-weight",
    "line-height",
    "letter-spacing",
    "skewX",
    "skewY",
    "text-stroke-width",
    "font-weight-secondary",
    "grayscale",
    "sepia",
    "brightness",
    "contrast",
    "saturate",
    "png-stroke-width",
    "stroke-width",
    "rating-score",
    "rating-count",
    "rating-gap",
    "rating-stroke-width",
    "lottie-delay",
    "border-radius",
];
const STRING_ATTRS: [&str; 62] = [
    "background-color",
    "box-shadow",
    "border-style",
    "border-color",
    "anchor-point",
    "anchor-type",
    "responsive-position",
    "responsive-size",
    "responsive-aspect-ratio",
    "responsive-anchor-gap",
    "text",
    "color",
    "text-highlight-color",
    "text-background-image-mask",
    "font-style",
    "text-decoration",
    "text-transform",
    "text-align",
    "align-items",
    "direction",
    "word-break",
    "white-space",
    "text-shadow",
    "text-stroke-color",
    "font-family-secondary",
    "color-secondary",
    "font-style-secondary",
    "text-transform-secondary",
    "text-decoration-secondary",
    "text-fit",
    "background-color-gradient",
    "background-gradient-direction",
    "background-image",
    "background-size",
    "background-position",
    "background-blend-mode",
    "ai-detect",
    "ai-detect-focus",
    "ai-detect-on-fail",
    "ai-detect-zoom",
    "ai-detect-anchor",
    "ai-background-remove",
    "ai-background-generate",
    "ai-prompt",
    "ai-model",
    "png-stroke-color",
    "png-shadow",
    "basic-shape",
    "fill",
    "stroke",
    "qr-target",
    "qr-color",
    "barcode-data",
    "barcode-format",
    "barcode-color",
    "rating-shape",
    "rating-color",
    "rating-background-color",
    "rating-stroke-color",
    "rating-shadow",
    "lottie-url",
    "font-family",
];
/// The `*-secondary` attributes the spec marks nullable [V5-SPEC].
const NULLABLE_ATTRS: [&str; 4] = [
    "font-weight-secondary",
    "font-style-secondary",
    "text-transform-secondary",
    "text-decoration-secondary",
];
/// Option values checked (GUESS: only these enums are enforced; others pass as strings).
const AI_MODELS: [&str; 4] = ["flux_schnell", "flux_1_1_pro", "nano_banana", "gpt_image_2"];
const TEXT_ALIGN: [&str; 6] = ["left", "center", "right", "justify", "start", "end"];
const FONT_WEIGHTS: [i64; 9] = [100, 200, 300, 400, 500, 600, 700, 800, 900];

/// What a valid create asks for.
#[derive(Debug)]
pub(super) struct ImageRequest {
    pub(super) template: String,
    pub(super) formats: Vec<String>,
    pub(super) metadata: Option<String>,
    /// Output size in pixels (template size or override, × scale).
    pub(super) width: u32,
    pub(super) height: u32,
    /// JPG/WebP quality 1–100 [V5-SPEC]; `None` = the provider's (undocumented) default.
    pub(super) quality: Option<u8>,
}

fn int_in(
    body: &Map<String, Value>,
    key: &str,
    lo: i64,
    hi: i64,
) -> Result<Option<i64>, Box<Response>> {
    match body.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(invalid(format!(
                "{key} must be an integer between {lo} and {hi}"
            ))),
        },
    }
}

pub(super) fn parse_image(body: &Map<String, Value>) -> Result<ImageRequest, Box<Response>> {
    // Required parameters first: their absence is 400 [V5-SPEC].
    let Some(template) = body.get("template") else {
        return Err(missing("template"));
    };
    let Some(modifications) = body.get("modifications") else {
        return Err(missing("modifications"));
    };
    for k in body.keys() {
        if V2_ONLY_FIELDS.contains(&k.as_str()) {
            return Err(invalid(format!(
                "{k} is not a V5 parameter (webhooks are registered with POST /v5/webhooks; \
                 use formats and modifications.template instead of V2 options)"
            )));
        }
        if !IMAGE_FIELDS.contains(&k.as_str()) {
            return Err(invalid(format!("Unknown parameter: {k}")));
        }
    }
    let Some(template) = template.as_str().filter(|t| !t.is_empty()) else {
        return Err(invalid("template must be a template uid (string)"));
    };
    let (width, height) = parse_modifications(modifications)?;

    let formats = match body.get("formats") {
        None => vec!["jpg".to_owned()],
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut out: Vec<String> = Vec::with_capacity(items.len());
            for item in items {
                let Some(f) = item.as_str().filter(|f| FORMATS.contains(f)) else {
                    return Err(invalid(format!(
                        "formats: {item} is not one of jpg, png, pdf, webp, avif"
                    )));
                };
                // GUESS: a repeated format is refused (stricter than de-duplicating).
                if out.iter().any(|o| o == f) {
                    return Err(invalid(format!("formats: {f} is listed twice")));
                }
                out.push(f.to_owned());
            }
            out
        }
        // GUESS: an empty list is refused rather than read as the default.
        Some(_) => {
            return Err(invalid(
                "formats must be a non-empty array of jpg, png, pdf, webp, avif",
            ));
        }
    };
    let scale = int_in(body, "scale", 1, 4)?.unwrap_or(1) as u32;
    int_in(body, "dpi", 72, 600)?;
    let quality = int_in(body, "quality", 1, 100)?.map(|q| q as u8);
    // GUESS: versions are numbered from 1.
    int_in(body, "version", 1, i64::MAX)?;
    if body.get("proxy").is_some_and(|p| !p.is_boolean()) {
        return Err(invalid("proxy must be a boolean"));
    }
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        // `metadata` is a string [V5-SPEC]; an object is refused, not serialised (stricter).
        Some(_) => return Err(invalid("metadata must be a string")),
    };
    Ok(ImageRequest {
        template: template.to_owned(),
        formats,
        metadata,
        width: width.saturating_mul(scale),
        height: height.saturating_mul(scale),
        quality,
    })
}

/// `{template: {width, height, transparent}, objects: [...]}` [V5-SPEC]; returns the size.
fn parse_modifications(m: &Value) -> Result<(u32, u32), Box<Response>> {
    // CONFLICT: v2 sends a flat array of layers; v5 an object [V5-SPEC], §1. An array here is
    // a V2 payload and is refused.
    let Value::Object(m) = m else {
        return Err(invalid(
            "modifications must be an object with template and objects",
        ));
    };
    if let Some(k) = m.keys().find(|k| *k != "template" && *k != "objects") {
        return Err(invalid(format!("modifications: unknown attribute {k}")));
    }
    let (mut width, mut height) = (TEMPLATE_WIDTH, TEMPLATE_HEIGHT);
    match m.get("template") {
        None => {}
        Some(Value::Object(t)) => {
            for (k, v) in t {
                match k.as_str() {
                    // GUESS: the 100–5000 range the spec gives for template sizes [V5-SPEC]
                    // `POST /image_templates` 422 applies to overrides too.
                    "width" | "height" => {
                        let Some(n) = v.as_u64().filter(|n| (100..=5000).contains(n)) else {
                            return Err(invalid(format!(
                                "modifications.template.{k} must be an integer between 100 and 5000"
                            )));
                        };
                        if k == "width" {
                            width = n as u32;
                        } else {
                            height = n as u32;
                        }
                    }
                    "transparent" if v.is_boolean() => {}
                    "transparent" => {
                        return Err(invalid(
                            "modifications.template.transparent must be a boolean",
                        ));
                    }
                    _ => {
                        return Err(invalid(format!(
                            "modifications.template: unknown attribute {k}"
                        )));
                    }
                }
            }
        }
        Some(_) => return Err(invalid("modifications.template must be an object")),
    }
    match m.get("objects") {
        None => {}
        Some(Value::Array(objects)) => {
            for (i, o) in objects.iter().enumerate() {
                parse_object(i, o)?;
            }
        }
        Some(_) => return Err(invalid("modifications.objects must be an array")),
    }
    Ok((width, height))
}

fn parse_object(i: usize, o: &Value) -> Result<(), Box<Response>> {
    let at = format!("modifications.objects[{i}]");
    let Value::Object(o) = o else {
        return Err(invalid(format!("{at} must be an object")));
    };
    // "use name or id, not both" [V5-SPEC]; GUESS: neither is refused as well.
    match (o.get("name"), o.get("id")) {
        (Some(_), Some(_)) => return Err(invalid(format!("{at}: use name or id, not both"))),
        (None, None) => return Err(invalid(format!("{at}: name or id is required"))),
        (Some(v), None) | (None, Some(v)) if !v.is_string() => {
            return Err(invalid(format!("{at}: name/id must be a string")));
        }
        _ => {}
    }
    for (k, v) in o {
        let k = k.as_str();
        if k == "name" || k == "id" {
            continue;
        }
        if v.is_null() && NULLABLE_ATTRS.contains(&k) {
            continue;
        }
        let ok = if BOOL_ATTRS.contains(&k) {
            v.is_boolean()
        } else if NUMBER_ATTRS.contains(&k) {
            v.is_number()
        } else if STRING_ATTRS.contains(&k) {
            v.is_string()
        } else {
            // CONFLICT: official README examples put `image_url` in objects [PY5], [NODE5],
            // [RB5]; the spec's attribute is `background-image` [V5-SPEC], [N8N]. The spec
            // wins and unknown attributes are 422 [V5-SPEC], so `image_url` is refused.
            return Err(invalid(format!("{at}: unknown attribute {k}")));
        };
        if !ok {
            return Err(invalid(format!("{at}: bad value for {k}: {v}")));
        }
        let bad_option = match k {
            "ai-model" => v.as_str().is_some_and(|s| !AI_MODELS.contains(&s)),
            "text-align" => v.as_str().is_some_and(|s| !TEXT_ALIGN.contains(&s)),
            "font-weight" => v.as_i64().is_none_or(|n| !FONT_WEIGHTS.contains(&n)),
            "rating-score" => v.as_f64().is_none_or(|n| !(0.0..=100.0).contains(&n)),
            "opacity" => v.as_f64().is_none_or(|n| !(0.0..=1.0).contains(&n)),
            _ => false,
        };
        if bad_option {
            return Err(invalid(format!("{at}: bad option value for {k}: {v}")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Webhook resources

const WEBHOOK_FIELDS: [&str; 7] = [
    "name",
    "url",
    "resource",
    "event",
    "status",
    "scope",
    "templates",
];
/// @a9ca682 enums [V5-SPEC] (@17d3894 had only `image, batch`).
const RESOURCES: [&str; 5] = ["image", "batch", "tool_job", "workflow_run", "animation"];
const EVENTS: [&str; 3] = ["all_events", "completed", "failed"];
const STATUSES: [&str; 2] = ["active", "disabled"];
const SCOPES: [&str; 2] = ["all_templates", "specific_templates"];

/// A validated webhook body (create or full update).
#[derive(Debug)]
pub(super) struct WebhookRequest {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) resource: String,
    pub(super) event: String,
    pub(super) status: String,
    pub(super) scope: Option<String>,
    pub(super) templates: Option<Vec<String>>,
}

/// `{name*, url*, resource, event, status}` [V5-SPEC]; missing name/url is 422 for webhooks
/// [V5-SPEC] `POST /webhooks`. PATCH has the same required fields in the spec, so it is
/// parsed the same way (stricter than a partial update).
/// CONFLICT: `scope`/`templates` exist in @17d3894, [MCP], [RB5] but not in @a9ca682's
/// schema, whose 422 text still mentions "scope enum": they are accepted and enforced when
/// given, never required.
/// GUESS: defaults `resource: image`, `event: all_events`, `status: active`.
pub(super) fn parse_webhook(body: &Map<String, Value>) -> Result<WebhookRequest, Box<Response>> {
    if let Some(k) = body.keys().find(|k| !WEBHOOK_FIELDS.contains(&k.as_str())) {
        return Err(invalid(format!("Unknown parameter: {k}")));
    }
    let string = |k: &str| -> Result<Option<String>, Box<Response>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(format!("{k} must be a string"))),
        }
    };
    let Some(name) = string("name")?.filter(|n| !n.is_empty()) else {
        return Err(invalid("name is required"));
    };
    let Some(url) = string("url")? else {
        return Err(invalid("url is required"));
    };
    // GUESS: any absolute http(s) URL (no https-only rule is documented).
    let url_ok = reqwest::Url::parse(&url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !url_ok {
        return Err(invalid("url must be an absolute http(s) URL"));
    }
    let one_of = |k: &str, allowed: &[&str], default: &str| -> Result<String, Box<Response>> {
        match string(k)? {
            None => Ok(default.to_owned()),
            Some(v) if allowed.contains(&v.as_str()) => Ok(v),
            Some(v) => Err(invalid(format!(
                "{k}: {v} is not one of {}",
                allowed.join(", ")
            ))),
        }
    };
    let resource = one_of("resource", &RESOURCES, "image")?;
    let event = one_of("event", &EVENTS, "all_events")?;
    let status = one_of("status", &STATUSES, "active")?;
    let scope = match string("scope")? {
        None => None,
        Some(s) if SCOPES.contains(&s.as_str()) => Some(s),
        Some(s) => {
            return Err(invalid(format!(
                "scope: {s} is not one of {}",
                SCOPES.join(", ")
            )));
        }
    };
    let templates = match body.get("templates") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for t in a {
                let Some(t) = t.as_str() else {
                    return Err(invalid("templates must be an array of template uids"));
                };
                out.push(t.to_owned());
            }
            Some(out)
        }
        Some(_) => return Err(invalid("templates must be an array of template uids")),
    };
    if scope.as_deref() == Some("specific_templates")
        && templates.as_ref().is_none_or(Vec::is_empty)
    {
        return Err(invalid(
            "templates are required when scope is specific_templates",
        ));
    }
    Ok(WebhookRequest {
        name,
        url,
        resource,
        event,
        status,
        scope,
        templates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn minimal_image_request_defaults_to_jpg_at_template_size() {
        let r = parse_image(&obj(json!({"template": "t", "modifications": {}}))).ok();
        let r = r.as_ref();
        assert_eq!(r.map(|r| r.formats.clone()), Some(vec!["jpg".to_owned()]));
        assert_eq!(
            r.map(|r| (r.width, r.height)),
            Some((TEMPLATE_WIDTH, TEMPLATE_HEIGHT))
        );
    }

    #[test]
    fn scale_multiplies_the_size_and_attribute_lists_are_disjoint() {
        let r = parse_image(&obj(json!({
            "template": "t", "scale": 2,
            "modifications": {"template": {"width": 300, "height": 200}}
        })))
        .ok();
        assert_eq!(r.map(|r| (r.width, r.height)), Some((600, 400)));
        for a in STRING_ATTRS {
            assert!(
                !NUMBER_ATTRS.contains(&a) && !BOOL_ATTRS.contains(&a),
                "{a}"
            );
        }
    }

    #[test]
    fn refusals() {
        let status = |v: Value| parse_image(&obj(v)).err().map(|r| r.status().as_u16());
        assert_eq!(status(json!({"modifications": {}})), Some(400));
        assert_eq!(status(json!({"template": "t"})), Some(400));
        assert_eq!(
            status(json!({"template": "t", "modifications": {}, "webhook_url": "https://x"})),
            Some(422)
        );
        assert_eq!(
            status(json!({"template": "t", "modifications": []})),
            Some(422)
        );
        assert_eq!(
            status(
                json!({"template": "t", "modifications": {"objects": [{"name": "a", "image_url": "x"}]}})
            ),
            Some(422)
        );
        assert_eq!(
            status(
                json!({"template": "t", "modifications": {"objects": [{"name": "a", "id": "b"}]}})
            ),
            Some(422)
        );
        assert_eq!(
            status(json!({"template": "t", "modifications": {}, "scale": 5})),
            Some(422)
        );
        assert_eq!(
            status(json!({"template": "t", "modifications": {}, "formats": ["gif"]})),
            Some(422)
        );
        assert_eq!(
            status(json!({"template": "t", "modifications": {}, "metadata": {"a": 1}})),
            Some(422)
        );
    }
}
