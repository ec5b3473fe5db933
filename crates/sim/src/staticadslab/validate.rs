//! Request validation for `POST /v1/image-ads` (400 structural vs 422 id-prefix problems).

use http::StatusCode;
use serde_json::Value;

use super::{KNOWN_FIELDS, REQUIRED_IDS};

/// Validate a create body. Structural problems (missing, wrong type, unknown field) → 400;
/// a well-formed id with the wrong prefix → 422 ([SAL:reference/id-prefixes] vs the errors
/// table's 400: CONFLICT, we use both — 400 wins when both kinds occur).
pub(super) fn validate_create(body: &Value) -> Result<(), (StatusCode, Vec<(String, String)>)> {
    let Some(obj) = body.as_object() else {
        return Err((
            StatusCode::BAD_REQUEST,
            vec![("body".into(), "Expected a JSON object".into())],
        ));
    };
    let mut hard: Vec<(String, String)> = Vec::new();
    let mut relation: Vec<(String, String)> = Vec::new();
    for key in obj.keys() {
        if key == "batch_id" {
            // "Not client-settable yet" [SEED-0], [SAL:reference/roadmap].
            hard.push((key.clone(), "batch_id is not client-settable".into()));
        } else if !KNOWN_FIELDS.contains(&key.as_str()) {
            // GUESS (stricter): unknown fields are refused rather than ignored.
            hard.push((key.clone(), "Unknown field".into()));
        }
    }
    let mut check_id = |field: &str, prefix: &str, required: bool| match obj.get(field) {
        None | Some(Value::Null) if required => hard.push((field.into(), "Required".into())),
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.starts_with(prefix) || s.len() == prefix.len() {
                relation.push((
                    field.into(),
                    format!("Expected an id starting with {prefix}"),
                ));
            }
        }
        Some(_) => hard.push((field.into(), "Expected a string".into())),
    };
    for (field, prefix) in REQUIRED_IDS {
        check_id(field, prefix, true);
    }
    check_id("product_variant_id", "pv_", false);
    match obj.get("prompt") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => hard.push(("prompt".into(), "Expected a string".into())),
    }
    match obj.get("editable") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(_) => hard.push(("editable".into(), "Expected a boolean".into())),
    }
    match obj.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                let path = format!("options.{k}");
                if k != "generate_ai_images" && k != "generate_copy" {
                    hard.push((path, "Unknown field".into()));
                } else if !v.is_boolean() {
                    hard.push((path, "Expected a boolean".into()));
                }
            }
        }
        Some(_) => hard.push(("options".into(), "Expected an object".into())),
    }
    match obj.get("node_overrides") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (node, v) in o {
                let path = format!("node_overrides.{node}");
                let Some(ov) = v.as_object() else {
                    hard.push((path, "Expected an object".into()));
                    continue;
                };
                // Exactly one of `characters` / `imageFillUrl` [SEED-2] (stricter: no both).
                let ok = ov.len() == 1
                    && (ov.get("characters").is_some_and(Value::is_string)
                        || ov.get("imageFillUrl").is_some_and(Value::is_string));
                if !ok {
                    hard.push((
                        path,
                        "Expected exactly one of {characters: string} or {imageFillUrl: string}"
                            .into(),
                    ));
                }
            }
        }
        Some(_) => hard.push(("node_overrides".into(), "Expected an object".into())),
    }
    if !hard.is_empty() {
        hard.extend(relation);
        return Err((StatusCode::BAD_REQUEST, hard));
    }
    if !relation.is_empty() {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, relation));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> Value {
        json!({
            "design_template_id": "dt_1", "brand_id": "brand_1",
            "product_id": "prod_1", "audience_id": "aud_1"
        })
    }

    #[test]
    fn validation_splits_400_and_422() {
        assert!(validate_create(&valid()).is_ok());
        let mut v = valid();
        v["brand_id"] = json!("prod_1");
        let (status, details) = validate_create(&v).err().unwrap_or_default();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(details[0].0, "brand_id");
        let mut v = valid();
        v.as_object_mut().map(|o| o.remove("audience_id"));
        v["node_overrides"] = json!({"hero": {"imageFillUrl": 3}});
        let (status, details) = validate_create(&v).err().unwrap_or_default();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let fields: Vec<_> = details.iter().map(|d| d.0.as_str()).collect();
        assert!(fields.contains(&"audience_id") && fields.contains(&"node_overrides.hero"));
    }
}
