//! Request validation for `batch-render` bodies.

use serde_json::{Map, Value, json};

use super::MAX_VARIABLE_SETS;

pub(super) struct RenderRequest {
    pub(super) sets: Vec<Map<String, Value>>,
    pub(super) format: String,
    /// 0.1–1.0, default 0.9 (providers.md §2.3).
    pub(super) quality: f64,
    pub(super) concurrency: usize,
    /// Layout names; every item renders one image per layout ("one image per item per
    /// layout", providers.md §2.3). Empty = one image.
    pub(super) layouts: Vec<String>,
}

fn layout_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Validate a batch-render body [PX-LIVE:…/batch/render]. Unknown fields (e.g. the old docs'
/// `webhookUrl`) are ignored. With `layouts`, each item renders one image per layout.
pub(super) fn validate(body: &Value) -> Result<RenderRequest, Vec<Value>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: &str| {
        errors.push(json!({"field": field, "message": message, "code": "invalid"}));
    };
    let Some(obj) = body.as_object() else {
        err("body", "must be a JSON object");
        return Err(errors);
    };
    let mut sets = Vec::new();
    match obj.get("variableSets").and_then(Value::as_array) {
        None => err("variableSets", "is required and must be an array"),
        Some(a) if a.is_empty() || a.len() > MAX_VARIABLE_SETS => {
            err("variableSets", "must contain between 1 and 100 items")
        }
        Some(a) => {
            for (i, v) in a.iter().enumerate() {
                match v.as_object() {
                    Some(m) => sets.push(m.clone()),
                    None => err(&format!("variableSets[{i}]"), "must be an object"),
                }
            }
        }
    }
    let format = match obj.get("format") {
        None => "png".to_owned(),
        Some(Value::String(s)) if matches!(s.as_str(), "png" | "jpeg" | "webp") => s.clone(),
        Some(_) => {
            err("format", "must be one of png, jpeg, webp");
            String::new()
        }
    };
    let quality = match obj.get("quality") {
        None => 0.9,
        Some(q) => match q.as_f64().filter(|q| (0.1..=1.0).contains(q)) {
            Some(q) => q,
            None => {
                err("quality", "must be a number between 0.1 and 1.0");
                0.9
            }
        },
    };
    let concurrency = match obj.get("concurrency") {
        None => 5,
        Some(v) => match v.as_u64() {
            Some(c @ 1..=10) => c as usize,
            _ => {
                err("concurrency", "must be an integer between 1 and 10");
                1
            }
        },
    };
    if let Some(l) = obj.get("layout")
        && !l.as_str().is_some_and(layout_ok)
    {
        err("layout", "must match ^[a-z0-9-]{1,64}$");
    }
    if let Some(l) = obj.get("layouts") {
        let ok = l
            .as_array()
            .is_some_and(|a| a.len() <= 20 && a.iter().all(|x| x.as_str().is_some_and(layout_ok)));
        if !ok {
            err(
                "layouts",
                "must be at most 20 strings matching ^[a-z0-9-]{1,64}$",
            );
        }
    }
    let layouts: Vec<String> = obj
        .get("layouts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if errors.is_empty() {
        Ok(RenderRequest {
            sets,
            format,
            quality,
            concurrency,
            layouts,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_bad_bodies() {
        assert!(validate(&json!({"variableSets": []})).is_err());
        let many: Vec<Value> = (0..101).map(|i| json!({"n": i})).collect();
        assert!(validate(&json!({ "variableSets": many })).is_err());
        assert!(validate(&json!({"variableSets": [{}], "format": "jpg"})).is_err());
        assert!(validate(&json!({"variableSets": [{}], "quality": 1.5})).is_err());
        assert!(validate(&json!({"variableSets": [{}], "concurrency": 11})).is_err());
        assert!(validate(&json!({"variableSets": [{}], "layout": "Bad_Layout"})).is_err());
        assert!(validate(&json!({"variableSets": [1]})).is_err());
        let defaults = validate(&json!({"variableSets": [{}]}));
        assert!(defaults.is_ok_and(|r| r.format == "png" && r.quality == 0.9));
        let ok = validate(&json!({"variableSets": [{"a": 1}], "format": "webp", "quality": 0.1}));
        assert!(ok.is_ok_and(|r| r.format == "webp" && r.concurrency == 5 && r.sets.len() == 1));
    }
}
