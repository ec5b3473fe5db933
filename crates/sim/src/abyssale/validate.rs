//! Request validation for the generate endpoint: UUIDs, content type and the body fields.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::gateway::{error_with, field_error};
use super::{FORMATS, KNOWN_FIELDS};

pub(super) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

pub(super) fn has_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// What a valid generate body asks for.
pub(super) struct GenerateRequest {
    pub(super) formats: Vec<(&'static str, u32, u32)>,
    pub(super) callback_url: Option<String>,
    pub(super) file_type: String,
}

/// Static designs render to these types; gif/mp4/html5/webm need an animated design and pdf a
/// print design → `invalid_filetype` [AB-TS] ("must match design type"). `auto` picks the
/// design's default (png here, GUESS).
const STATIC_FILE_TYPES: [&str; 5] = ["png", "jpeg", "webp", "avif", "auto"];

/// Errors are boxed responses (a `Response` is large).
pub(super) fn parse_generate(body: &Map<String, Value>) -> Result<GenerateRequest, Box<Response>> {
    let bad = |id: &str, path: &str, msg: String| {
        Box::new(error_with(
            StatusCode::BAD_REQUEST,
            id,
            msg.clone(),
            vec![field_error(path, id, msg)],
        ))
    };
    if let Some(k) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(bad("unknown_field", k, format!("Unknown field '{k}'.")));
    }
    // CONFLICT: the docs page marks `elements` required, the spec makes every field optional
    // [AB:rest-api/generation/asynchronous-generation] vs [AB-TS]; stricter: required.
    match body.get("elements") {
        None => {
            return Err(bad(
                "missing_required",
                "elements",
                "'elements' is required.".into(),
            ));
        }
        Some(Value::Object(layers)) => {
            for (name, props) in layers {
                if !props.is_object() {
                    let path = format!("elements.{name}");
                    return Err(bad(
                        "wrong_type",
                        &path,
                        format!("'{path}' must be an object."),
                    ));
                }
            }
        }
        Some(_) => {
            return Err(bad(
                "wrong_type",
                "elements",
                "'elements' must be an object.".into(),
            ));
        }
    }
    let mut names: Vec<String> = Vec::new();
    match body.get("template_format_names") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("template_format_names[{i}]");
                let Some(name) = item.as_str() else {
                    return Err(bad(
                        "wrong_type",
                        &path,
                        format!("'{path}' must be a string."),
                    ));
                };
                if names.iter().any(|n| n == name) {
                    return Err(bad(
                        "duplicate_format_name",
                        &path,
                        format!("Format '{name}' is requested twice."),
                    ));
                }
                names.push(name.to_owned());
            }
        }
        Some(_) => {
            return Err(bad(
                "wrong_type",
                "template_format_names",
                "'template_format_names' must be an array of strings.".into(),
            ));
        }
    }
    let file_type = match body.get("image_file_type") {
        None | Some(Value::Null) => "png".to_owned(),
        Some(Value::String(t)) if STATIC_FILE_TYPES.contains(&t.as_str()) => {
            if t == "auto" {
                "png".to_owned()
            } else {
                t.clone()
            }
        }
        Some(other) => {
            return Err(bad(
                "invalid_filetype",
                "image_file_type",
                format!("File type {other} is not available for this design (static)."),
            ));
        }
    };
    if let Some(level) = body.get("file_compression_level") {
        match level.as_i64() {
            Some(l) if (1..=100).contains(&l) => {}
            Some(l) => {
                let msg = format!("file_compression_level must be between 1 and 100, got {l}.");
                return Err(Box::new(error_with(
                    StatusCode::BAD_REQUEST,
                    "out_of_range",
                    msg.clone(),
                    vec![json!({
                        "path": "file_compression_level", "code": "out_of_range",
                        "message": msg, "expected": {"min": 1, "max": 100}, "received": l,
                    })],
                )));
            }
            None => {
                return Err(bad(
                    "wrong_type",
                    "file_compression_level",
                    "file_compression_level must be an integer.".into(),
                ));
            }
        }
    }
    let callback_url = match body.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => {
            // Deliveries are "https only" [AB:webhooks/events]. GUESS: plain http is allowed
            // to loopback hosts only, so tests and the sandbox can receive on 127.0.0.1.
            let ok = reqwest::Url::parse(u).is_ok_and(|url| match url.scheme() {
                "https" => url.host().is_some(),
                "http" => matches!(
                    url.host_str(),
                    Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
                ),
                _ => false,
            });
            if !ok {
                return Err(bad(
                    "invalid_payload",
                    "callback_url",
                    "callback_url must be an https URL.".into(),
                ));
            }
            Some(u.clone())
        }
        Some(_) => {
            return Err(bad(
                "wrong_type",
                "callback_url",
                "callback_url must be a string.".into(),
            ));
        }
    };
    let formats = if names.is_empty() {
        FORMATS.to_vec()
    } else {
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let Some(f) = FORMATS.iter().find(|f| f.0 == name) else {
                let msg = format!("Format '{name}' does not exist on this design.");
                return Err(Box::new(error_with(
                    StatusCode::NOT_FOUND,
                    "format_not_found",
                    msg.clone(),
                    vec![field_error(
                        &format!("template_format_names[{i}]"),
                        "format_not_found",
                        msg,
                    )],
                )));
            };
            out.push(*f);
        }
        out
    };
    Ok(GenerateRequest {
        formats,
        callback_url,
        file_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_check() {
        assert!(is_uuid("df75afa8-5a77-4e03-aeef-6d1b6dd0580a"));
        assert!(!is_uuid("df75afa8-5a77-4e03-aeef-6d1b6dd0580"));
        assert!(!is_uuid("df75afa8x5a77-4e03-aeef-6d1b6dd0580a"));
        assert!(!is_uuid("dt_123"));
    }
}
