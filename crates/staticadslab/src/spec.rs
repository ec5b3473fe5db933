//! Our spec JSON for a StaticAdsLab job, its validation, and its translation to the wire body.
//!
//! ```json
//! {"design_template_id": "dt_…", "brand_id": "brand_…", "product_id": "prod_…",
//!  "audience_id": "aud_…", "product_variant_id": "pv_…", "prompt": "…", "editable": false,
//!  "options": {"generate_ai_images": true, "generate_copy": true},
//!  "node_overrides": {"<node-id>": {"characters": "…"} | {"image_fill_url": "https://…"}}}
//! ```

use std::collections::BTreeMap;

use adgate_generator::FieldViolation;
use serde_json::{Map, Value};

use crate::wire::{AdOptions, CreateImageAd, NodeOverride};

/// Required ids and their prefixes [SAL:reference/id-prefixes].
const REQUIRED_IDS: &[(&str, &str)] = &[
    ("design_template_id", "dt_"),
    ("brand_id", "brand_"),
    ("product_id", "prod_"),
    ("audience_id", "aud_"),
];
/// Names a design-template job of the same Submit instead of `design_template_id`.
pub const TEMPLATE_REF: &str = "design_template_ref";
/// The gateway's client_ref bound.
const MAX_CLIENT_REF_CHARS: usize = 256;

/// The client_ref of the design-template job an ad waits for, if it names one.
pub fn awaited_template(spec: &Value) -> Option<String> {
    spec.get(TEMPLATE_REF)
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

/// An ad that waited for a template job, completed with that template's id.
pub fn with_template(spec: &Value, template_id: &str) -> Value {
    let mut out = spec.clone();
    if let Some(o) = out.as_object_mut() {
        o.remove(TEMPLATE_REF);
        o.insert(
            "design_template_id".to_owned(),
            Value::String(template_id.to_owned()),
        );
    }
    out
}

const KNOWN_FIELDS: &[&str] = &[
    "design_template_ref",
    "design_template_id",
    "brand_id",
    "product_id",
    "audience_id",
    "product_variant_id",
    "prompt",
    "editable",
    "options",
    "node_overrides",
];
/// Our own sanity bounds (the provider documents none); generous for real use.
pub const MAX_ID_LEN: usize = 64;
pub const MAX_PROMPT_CHARS: usize = 4000;
pub const MAX_NODE_OVERRIDES: usize = 50;
pub const MAX_NODE_ID_LEN: usize = 128;
pub const MAX_CHARACTERS: usize = 2000;
pub const MAX_URL_LEN: usize = 2048;

/// The kind of job a spec asks for: an image ad unless it says otherwise.
pub const KIND_DESIGN_TEMPLATE: &str = "design_template";
/// Our bound on a design-template body (the provider documents none; the request limit is
/// 15 MB [SAL:reference/errors], far beyond any template description).
pub const MAX_TEMPLATE_BODY_BYTES: usize = 64 * 1024;

/// An edit of an editable ad (`PATCH /v1/image-ads/:id`).
pub const KIND_EDIT: &str = "edit";
/// Our bound on an edit's JSON tree (the provider documents none).
pub const MAX_TREE_BYTES: usize = 256 * 1024;

/// What a spec asks StaticAdsLab to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `PATCH /v1/image-ads/{image_ad_id}` with the new tree: a re-render as a new version.
    Edit {
        image_ad_id: String,
        tree: Map<String, Value>,
    },
    /// `POST /v1/image-ads`.
    ImageAd(CreateImageAd),
    /// `POST /v1/design-templates` with this body, verbatim: the documents we have name the
    /// endpoint and its lifecycle but no body fields, so none are invented here.
    DesignTemplate(Map<String, Value>),
}

/// The gateway job an edit names (`job_id`), for any spec that is an edit.
pub fn edit_target(spec: &Value) -> Option<String> {
    (spec.get("kind").and_then(Value::as_str) == Some(KIND_EDIT))
        .then(|| {
            spec.get("job_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .flatten()
}

/// Whether a spec is an edit.
pub fn is_edit(spec: &Value) -> bool {
    spec.get("kind").and_then(Value::as_str) == Some(KIND_EDIT)
}

/// `{"kind": "edit", "job_id": "job_…", "json_tree": {...}}`, plus `image_ad_id` once the
/// gateway bound the edit to its ad.
fn validate_edit(obj: &Map<String, Value>) -> Result<(), Vec<FieldViolation>> {
    let mut v = Vec::new();
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "kind" | "job_id" | "json_tree" | "image_ad_id"
        ) {
            v.push(FieldViolation::new(key.as_str(), "unknown field"));
        }
    }
    match obj.get("job_id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LEN => {}
        Some(Value::String(id)) if !id.is_empty() => v.push(FieldViolation::new(
            "job_id",
            format!("must be at most {MAX_ID_LEN} characters"),
        )),
        _ => v.push(FieldViolation::new(
            "job_id",
            "is required: the gateway job id of the editable ad to edit",
        )),
    }
    match obj.get("json_tree") {
        Some(Value::Object(tree)) if tree.is_empty() => {
            v.push(FieldViolation::new("json_tree", "must not be empty"));
        }
        Some(Value::Object(tree)) => {
            let size = serde_json::to_vec(tree).map_or(usize::MAX, |b| b.len());
            if size > MAX_TREE_BYTES {
                v.push(FieldViolation::new(
                    "json_tree",
                    format!("must encode to at most {MAX_TREE_BYTES} bytes of JSON, got {size}"),
                ));
            }
        }
        None => v.push(FieldViolation::new(
            "json_tree",
            "is required: the ad's current_json_tree with your changes",
        )),
        Some(_) => v.push(FieldViolation::new("json_tree", "must be a JSON object")),
    }
    match obj.get("image_ad_id") {
        None => {}
        Some(Value::String(id)) if id.starts_with("ia_") && id.len() <= MAX_ID_LEN => {}
        Some(_) => v.push(FieldViolation::new("image_ad_id", "must be an ia_ id")),
    }
    if v.is_empty() { Ok(()) } else { Err(v) }
}

/// Whether a spec asks for a design template.
pub fn is_design_template(spec: &Value) -> bool {
    spec.get("kind").and_then(Value::as_str) == Some(KIND_DESIGN_TEMPLATE)
}

/// `{"kind": "design_template", "body": {...}}`.
fn validate_design_template(obj: &Map<String, Value>) -> Result<(), Vec<FieldViolation>> {
    let mut v = Vec::new();
    for key in obj.keys() {
        if !matches!(key.as_str(), "kind" | "body") {
            v.push(FieldViolation::new(key.as_str(), "unknown field"));
        }
    }
    match obj.get("body") {
        Some(Value::Object(body)) if body.is_empty() => v.push(FieldViolation::new(
            "body",
            "must not be empty: StaticAdsLab needs a description of the template",
        )),
        Some(Value::Object(body)) => {
            let size = serde_json::to_vec(body).map_or(usize::MAX, |b| b.len());
            if size > MAX_TEMPLATE_BODY_BYTES {
                v.push(FieldViolation::new(
                    "body",
                    format!(
                        "must encode to at most {MAX_TEMPLATE_BODY_BYTES} bytes of JSON, got {size}"
                    ),
                ));
            }
        }
        None => v.push(FieldViolation::new("body", "is required")),
        Some(_) => v.push(FieldViolation::new("body", "must be a JSON object")),
    }
    if v.is_empty() { Ok(()) } else { Err(v) }
}

/// Check a spec and say what it asks for.
pub fn request(spec: &Value) -> Result<Request, Vec<FieldViolation>> {
    if is_edit(spec) {
        validate(spec)?;
        let Some(image_ad_id) = spec.get("image_ad_id").and_then(Value::as_str) else {
            return Err(vec![FieldViolation::new(
                "image_ad_id",
                "the edit was never bound to its ad",
            )]);
        };
        let tree = spec
            .get("json_tree")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        return Ok(Request::Edit {
            image_ad_id: image_ad_id.to_owned(),
            tree,
        });
    }
    if is_design_template(spec) {
        validate(spec)?;
        let body = spec
            .get("body")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        return Ok(Request::DesignTemplate(body));
    }
    if awaited_template(spec).is_some() {
        // The engine binds the template's id before sending; an unbound ad must never go out
        // with an empty template.
        return Err(vec![FieldViolation::new(
            TEMPLATE_REF,
            "the ad was never bound to its design template",
        )]);
    }
    to_wire(spec).map(Request::ImageAd)
}

/// Check a spec; field paths are relative to the spec.
pub fn validate(spec: &Value) -> Result<(), Vec<FieldViolation>> {
    let Some(obj) = spec.as_object() else {
        return Err(vec![FieldViolation::new("", "spec must be a JSON object")]);
    };
    match obj.get("kind") {
        None => {}
        Some(Value::String(k)) if k == KIND_DESIGN_TEMPLATE => {
            return validate_design_template(obj);
        }
        Some(Value::String(k)) if k == KIND_EDIT => return validate_edit(obj),
        Some(_) => {
            return Err(vec![FieldViolation::new(
                "kind",
                format!(
                    "must be absent (an image ad), \"{KIND_DESIGN_TEMPLATE}\" or \"{KIND_EDIT}\""
                ),
            )]);
        }
    }
    let mut v = Vec::new();
    for key in obj.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            v.push(FieldViolation::new(key.as_str(), "unknown field"));
        }
    }
    // The template is named by its id, or by the client_ref of a template job of the same
    // Submit (the engine holds the ad until that template completes).
    let by_ref = match obj.get(TEMPLATE_REF) {
        None | Some(Value::Null) => false,
        Some(Value::String(r)) if !r.is_empty() && r.chars().count() <= MAX_CLIENT_REF_CHARS => {
            if obj.get("design_template_id").is_some_and(|v| !v.is_null()) {
                v.push(FieldViolation::new(
                    TEMPLATE_REF,
                    "set either design_template_id or design_template_ref, not both",
                ));
            }
            true
        }
        Some(_) => {
            v.push(FieldViolation::new(
                TEMPLATE_REF,
                format!(
                    "must be the client_ref (1–{MAX_CLIENT_REF_CHARS} characters) of a design-template job of this Submit"
                ),
            ));
            true
        }
    };
    for (field, prefix) in REQUIRED_IDS {
        let required = !(by_ref && *field == "design_template_id");
        check_id(obj, field, prefix, required, &mut v);
    }
    check_id(obj, "product_variant_id", "pv_", false, &mut v);
    match obj.get("prompt") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.chars().count() > MAX_PROMPT_CHARS => v.push(
            FieldViolation::new("prompt", format!("at most {MAX_PROMPT_CHARS} characters")),
        ),
        Some(Value::String(_)) => {}
        Some(_) => v.push(FieldViolation::new("prompt", "must be a string")),
    }
    match obj.get("editable") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(_) => v.push(FieldViolation::new("editable", "must be a boolean")),
    }
    match obj.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, val) in o {
                let path = format!("options.{k}");
                if k != "generate_ai_images" && k != "generate_copy" {
                    v.push(FieldViolation::new(path, "unknown field"));
                } else if !(val.is_boolean() || val.is_null()) {
                    v.push(FieldViolation::new(path, "must be a boolean"));
                }
            }
        }
        Some(_) => v.push(FieldViolation::new("options", "must be an object")),
    }
    match obj.get("node_overrides") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => check_overrides(o, &mut v),
        Some(_) => v.push(FieldViolation::new("node_overrides", "must be an object")),
    }
    if v.is_empty() { Ok(()) } else { Err(v) }
}

fn check_id(
    obj: &Map<String, Value>,
    field: &str,
    prefix: &str,
    required: bool,
    v: &mut Vec<FieldViolation>,
) {
    match obj.get(field) {
        None | Some(Value::Null) => {
            if required {
                v.push(FieldViolation::new(field, "required"));
            }
        }
        Some(Value::String(s)) => {
            let body = s.strip_prefix(prefix);
            if body.is_none_or(str::is_empty) {
                v.push(FieldViolation::new(
                    field,
                    format!("must be an id starting with {prefix}"),
                ));
            } else if s.len() > MAX_ID_LEN {
                v.push(FieldViolation::new(
                    field,
                    format!("at most {MAX_ID_LEN} characters"),
                ));
            } else if !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                v.push(FieldViolation::new(
                    field,
                    "only letters, digits, '_' and '-' allowed",
                ));
            }
        }
        Some(_) => v.push(FieldViolation::new(field, "must be a string")),
    }
}

fn check_overrides(o: &Map<String, Value>, v: &mut Vec<FieldViolation>) {
    if o.len() > MAX_NODE_OVERRIDES {
        v.push(FieldViolation::new(
            "node_overrides",
            format!("at most {MAX_NODE_OVERRIDES} overrides"),
        ));
    }
    for (node, val) in o {
        let path = format!("node_overrides.{node}");
        if node.is_empty() || node.len() > MAX_NODE_ID_LEN {
            v.push(FieldViolation::new(
                path.as_str(),
                format!("node id must be 1..={MAX_NODE_ID_LEN} characters"),
            ));
            continue;
        }
        let Some(ov) = val.as_object() else {
            v.push(FieldViolation::new(path, "must be an object"));
            continue;
        };
        if ov.contains_key("imageFillUrl") {
            v.push(FieldViolation::new(
                format!("{path}.imageFillUrl"),
                "use image_fill_url (snake_case) in the spec",
            ));
            continue;
        }
        match (ov.get("characters"), ov.get("image_fill_url"), ov.len()) {
            (Some(Value::String(s)), None, 1) => {
                if s.chars().count() > MAX_CHARACTERS {
                    v.push(FieldViolation::new(
                        format!("{path}.characters"),
                        format!("at most {MAX_CHARACTERS} characters"),
                    ));
                }
            }
            (Some(_), None, 1) => {
                v.push(FieldViolation::new(
                    format!("{path}.characters"),
                    "must be a string",
                ));
            }
            (None, Some(Value::String(u)), 1) => {
                let ok_scheme = u.starts_with("https://") || u.starts_with("http://");
                if !ok_scheme || u.len() > MAX_URL_LEN || u.contains(char::is_whitespace) {
                    v.push(FieldViolation::new(
                        format!("{path}.image_fill_url"),
                        format!("must be an http(s) URL of at most {MAX_URL_LEN} characters"),
                    ));
                }
            }
            (None, Some(_), 1) => {
                v.push(FieldViolation::new(
                    format!("{path}.image_fill_url"),
                    "must be a string",
                ));
            }
            _ => v.push(FieldViolation::new(
                path,
                "must hold exactly one of characters or image_fill_url",
            )),
        }
    }
}

fn opt_str(obj: &Map<String, Value>, k: &str) -> Option<String> {
    obj.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// Validate and translate a spec into the `POST /v1/image-ads` body.
pub fn to_wire(spec: &Value) -> Result<CreateImageAd, Vec<FieldViolation>> {
    validate(spec)?;
    let Some(obj) = spec.as_object() else {
        return Err(vec![FieldViolation::new("", "spec must be a JSON object")]);
    };
    let req = |k: &str| opt_str(obj, k).unwrap_or_default();
    let options = obj
        .get("options")
        .and_then(Value::as_object)
        .map(|o| AdOptions {
            generate_ai_images: o.get("generate_ai_images").and_then(Value::as_bool),
            generate_copy: o.get("generate_copy").and_then(Value::as_bool),
        });
    let node_overrides = obj
        .get("node_overrides")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(node, val)| {
                    let ov = val.as_object()?;
                    let wire = match (opt_str(ov, "characters"), opt_str(ov, "image_fill_url")) {
                        (Some(characters), _) => NodeOverride::Characters { characters },
                        (None, Some(image_fill_url)) => NodeOverride::ImageFill { image_fill_url },
                        (None, None) => return None,
                    };
                    Some((node.clone(), wire))
                })
                .collect::<BTreeMap<_, _>>()
        });
    Ok(CreateImageAd {
        design_template_id: req("design_template_id"),
        brand_id: req("brand_id"),
        product_id: req("product_id"),
        audience_id: req("audience_id"),
        product_variant_id: opt_str(obj, "product_variant_id"),
        prompt: opt_str(obj, "prompt"),
        editable: obj.get("editable").and_then(Value::as_bool),
        options,
        node_overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "design_template_id": "dt_a1b2c3d4e5f67890",
            "brand_id": "brand_a1b2c3d4e5f67890",
            "product_id": "prod_a1b2c3d4e5f67890",
            "audience_id": "aud_a1b2c3d4e5f67890",
        })
    }

    fn fields(spec: &Value) -> Vec<String> {
        validate(spec)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_full_valid_spec_translates() {
        let mut s = valid();
        s["product_variant_id"] = json!("pv_1");
        s["prompt"] = json!("summer vibes");
        s["editable"] = json!(true);
        s["options"] = json!({"generate_ai_images": true, "generate_copy": false});
        s["node_overrides"] = json!({
            "hero": {"image_fill_url": "https://cdn.example.com/h.jpg"},
            "headline": {"characters": "25% off"}
        });
        assert_eq!(validate(&s), Ok(()));
        let wire = serde_json::to_value(to_wire(&s).unwrap()).unwrap();
        assert_eq!(
            wire["node_overrides"]["hero"],
            json!({"imageFillUrl": "https://cdn.example.com/h.jpg"})
        );
        assert_eq!(wire["editable"], true);
        assert_eq!(wire["options"]["generate_copy"], false);
        assert_eq!(wire["product_variant_id"], "pv_1");
    }

    /// The gateway's generic proto conversion sends only the flags a caller set (proto3
    /// bools arrive only when true); the wire body must carry exactly those and never default
    /// the other one, so the provider applies its own default [SEED-2] `options`.
    #[test]
    fn options_carry_only_the_flags_received() {
        let mut s = valid();
        s["options"] = json!({"generate_copy": true});
        let wire = serde_json::to_value(to_wire(&s).unwrap()).unwrap();
        assert_eq!(wire["options"], json!({"generate_copy": true}));
        s["options"] = json!({"generate_ai_images": true});
        let wire = serde_json::to_value(to_wire(&s).unwrap()).unwrap();
        assert_eq!(wire["options"], json!({"generate_ai_images": true}));
        s["options"] = json!({});
        let wire = serde_json::to_value(to_wire(&s).unwrap()).unwrap();
        assert_eq!(wire["options"], json!({}));
        s.as_object_mut().unwrap().remove("options");
        let wire = serde_json::to_value(to_wire(&s).unwrap()).unwrap();
        assert!(wire.get("options").is_none(), "{wire}");
    }

    #[test]
    fn missing_and_misprefixed_ids() {
        let mut s = valid();
        s.as_object_mut().unwrap().remove("audience_id");
        s["brand_id"] = json!("prod_123");
        s["product_variant_id"] = json!("var_1");
        s["design_template_id"] = json!("dt_");
        let f = fields(&s);
        for want in [
            "audience_id",
            "brand_id",
            "product_variant_id",
            "design_template_id",
        ] {
            assert!(f.contains(&want.to_owned()), "{want} in {f:?}");
        }
        assert_eq!(fields(&json!([1])), vec![String::new()]);
    }

    #[test]
    fn lengths_and_types() {
        let mut s = valid();
        s["brand_id"] = json!(format!("brand_{}", "a".repeat(64)));
        s["prompt"] = json!("p".repeat(MAX_PROMPT_CHARS + 1));
        s["editable"] = json!("yes");
        s["options"] = json!({"generate_everything": true});
        s["surprise"] = json!(1);
        let f = fields(&s);
        assert_eq!(f.len(), 5, "{f:?}");
        assert!(f.contains(&"options.generate_everything".to_owned()));
        assert!(f.contains(&"surprise".to_owned()));
    }

    #[test]
    fn node_override_paths() {
        let mut s = valid();
        s["node_overrides"] = json!({
            "hero": {"image_fill_url": "ftp://x"},
            "a": {"characters": 5},
            "b": {"characters": "x", "image_fill_url": "https://y"},
            "c": {"imageFillUrl": "https://y"},
        });
        let f = fields(&s);
        assert!(
            f.contains(&"node_overrides.hero.image_fill_url".to_owned()),
            "{f:?}"
        );
        assert!(f.contains(&"node_overrides.a.characters".to_owned()));
        assert!(f.contains(&"node_overrides.b".to_owned()));
        assert!(f.contains(&"node_overrides.c.imageFillUrl".to_owned()));
        let many: Map<String, Value> = (0..=MAX_NODE_OVERRIDES)
            .map(|i| (format!("n{i}"), json!({"characters": "x"})))
            .collect();
        s["node_overrides"] = Value::Object(many);
        assert_eq!(fields(&s), vec!["node_overrides".to_owned()]);
    }
}
