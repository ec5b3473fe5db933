//! The Abyssale job spec callers send through adgate, and its validation.
//!
//! ```json
//! {"design_id": "<uuid>", "format_names": ["facebook-feed"], "elements": {"title": {"payload": "Hi"}},
//!  "image_file_type": "png", "file_compression_level": 80}
//! ```
//! `format_names` empty or omitted = every format of the design; `elements` omitted = `{}`.

use adgate_generator::FieldViolation;
use serde_json::{Map, Value};

/// At most this many format names per job (GUESS: Abyssale publishes no cap; designs rarely
/// have more than a few dozen formats).
pub const MAX_FORMATS: usize = 50;
/// Longest accepted format name (GUESS).
pub const MAX_FORMAT_NAME_LEN: usize = 64;
/// Serialized size cap of `elements` (GUESS, to keep stored specs small).
pub const MAX_ELEMENTS_BYTES: usize = 64 * 1024;
/// `image_file_type` values [AB-TS] (`webm` from the docs page). Whether one fits the design's
/// type is only known to Abyssale (`400 invalid_filetype`).
pub const FILE_TYPES: [&str; 10] = [
    "png", "jpeg", "webp", "avif", "gif", "pdf", "html5", "mp4", "webm", "auto",
];

const FIELDS: [&str; 5] = [
    "design_id",
    "format_names",
    "elements",
    "image_file_type",
    "file_compression_level",
];

/// A validated spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub design_id: String,
    pub format_names: Vec<String>,
    pub elements: Map<String, Value>,
    pub image_file_type: Option<String>,
    pub file_compression_level: Option<u8>,
}

/// `8-4-4-4-12` hex digits.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Parse and check a spec, reporting every problem with its path.
pub fn parse(spec: &Value) -> Result<Spec, Vec<FieldViolation>> {
    let mut v = Vec::new();
    let Some(obj) = spec.as_object() else {
        return Err(vec![FieldViolation::new("", "must be a JSON object")]);
    };
    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            v.push(FieldViolation::new(key.as_str(), "unknown field"));
        }
    }

    let design_id = match obj.get("design_id") {
        Some(Value::String(s)) if is_uuid(s) => s.to_ascii_lowercase(),
        Some(Value::String(_)) => {
            v.push(FieldViolation::new("design_id", "must be a UUID"));
            String::new()
        }
        Some(_) => {
            v.push(FieldViolation::new("design_id", "must be a string (UUID)"));
            String::new()
        }
        None => {
            v.push(FieldViolation::new("design_id", "is required"));
            String::new()
        }
    };

    let mut format_names: Vec<String> = Vec::new();
    match obj.get("format_names") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            if items.len() > MAX_FORMATS {
                v.push(FieldViolation::new(
                    "format_names",
                    format!("at most {MAX_FORMATS} formats"),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let path = format!("format_names[{i}]");
                match item.as_str() {
                    None => v.push(FieldViolation::new(path, "must be a string")),
                    Some("") => v.push(FieldViolation::new(path, "must not be empty")),
                    Some(s) if s.chars().count() > MAX_FORMAT_NAME_LEN => {
                        v.push(FieldViolation::new(
                            path,
                            format!("at most {MAX_FORMAT_NAME_LEN} characters"),
                        ))
                    }
                    Some(s) if s.chars().any(char::is_control) => {
                        v.push(FieldViolation::new(
                            path,
                            "must not contain control characters",
                        ));
                    }
                    Some(s) if format_names.iter().any(|n| n == s) => {
                        v.push(FieldViolation::new(path, format!("duplicate format '{s}'")));
                    }
                    Some(s) => format_names.push(s.to_owned()),
                }
            }
        }
        Some(_) => v.push(FieldViolation::new(
            "format_names",
            "must be an array of strings",
        )),
    }

    let elements = match obj.get("elements") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => {
            for (layer, props) in m {
                if !props.is_object() {
                    v.push(FieldViolation::new(
                        format!("elements.{layer}"),
                        "must be an object of layer properties",
                    ));
                }
            }
            let size = serde_json::to_vec(m).map(|b| b.len()).unwrap_or(usize::MAX);
            if size > MAX_ELEMENTS_BYTES {
                v.push(FieldViolation::new(
                    "elements",
                    format!("at most {MAX_ELEMENTS_BYTES} bytes of JSON"),
                ));
            }
            m.clone()
        }
        Some(_) => {
            v.push(FieldViolation::new("elements", "must be an object"));
            Map::new()
        }
    };

    let image_file_type = match obj.get("image_file_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if FILE_TYPES.contains(&t.as_str()) => Some(t.clone()),
        Some(_) => {
            v.push(FieldViolation::new(
                "image_file_type",
                format!("must be one of {}", FILE_TYPES.join(", ")),
            ));
            None
        }
    };

    let file_compression_level = match obj.get("file_compression_level") {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_u64() {
            Some(l @ 1..=100) => u8::try_from(l).ok(),
            _ => {
                v.push(FieldViolation::new(
                    "file_compression_level",
                    "must be an integer from 1 to 100",
                ));
                None
            }
        },
    };

    if v.is_empty() {
        Ok(Spec {
            design_id,
            format_names,
            elements,
            image_file_type,
            file_compression_level,
        })
    } else {
        Err(v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const DESIGN: &str = "840420c2-7bd9-45c4-a7cb-c741b16edfcf";

    fn fields(r: Result<Spec, Vec<FieldViolation>>) -> Vec<String> {
        r.err().unwrap().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_full_spec_parses() {
        let s = parse(&json!({
            "design_id": DESIGN,
            "format_names": ["facebook-feed", "iab-medium"],
            "elements": {"primary_text": {"payload": "Hi", "color": "#FF0000"}},
            "image_file_type": "jpeg",
            "file_compression_level": 80,
        }))
        .unwrap();
        assert_eq!(s.format_names, vec!["facebook-feed", "iab-medium"]);
        assert_eq!(s.file_compression_level, Some(80));
        assert_eq!(s.image_file_type.as_deref(), Some("jpeg"));
    }

    #[test]
    fn minimal_spec_means_all_formats_and_no_elements() {
        let s = parse(&json!({"design_id": DESIGN})).unwrap();
        assert!(s.format_names.is_empty() && s.elements.is_empty());
    }

    #[test]
    fn every_problem_is_named_by_path() {
        let f = fields(parse(&json!({
            "design_id": "dt_123",
            "format_names": ["ok", "", "ok", 3, "x".repeat(65)],
            "elements": {"title": "not an object"},
            "image_file_type": "bmp",
            "file_compression_level": 0,
            "extra": true,
        })));
        for want in [
            "design_id",
            "format_names[1]",
            "format_names[2]",
            "format_names[3]",
            "format_names[4]",
            "elements.title",
            "image_file_type",
            "file_compression_level",
            "extra",
        ] {
            assert!(f.iter().any(|x| x == want), "missing {want} in {f:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let many: Vec<String> = (0..51).map(|i| format!("f{i}")).collect();
        assert_eq!(
            fields(parse(&json!({"design_id": DESIGN, "format_names": many}))),
            vec!["format_names"]
        );
        let big = "x".repeat(MAX_ELEMENTS_BYTES);
        assert_eq!(
            fields(parse(
                &json!({"design_id": DESIGN, "elements": {"t": {"payload": big}}})
            )),
            vec!["elements"]
        );
        assert_eq!(
            fields(parse(
                &json!({"design_id": DESIGN, "file_compression_level": 101})
            )),
            vec!["file_compression_level"]
        );
        assert!(parse(&json!({"design_id": DESIGN, "file_compression_level": 1})).is_ok());
        assert_eq!(fields(parse(&json!({}))), vec!["design_id"]);
        assert_eq!(fields(parse(&json!([1]))), vec![""]);
    }
}
