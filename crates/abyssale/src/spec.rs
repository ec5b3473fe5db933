//! The Abyssale job spec callers send through adgate, and its validation.
//!
//! ```json
//! {"design_id": "<uuid>", "format_names": ["facebook-feed"], "elements": {"title": {"payload": "Hi"}},
//!  "image_file_type": "png", "file_compression_level": 80}
//! ```
//! `format_names` empty or omitted = every format of the design; `elements` omitted = `{}`.
//! Optional output blocks, sent as given once valid (providers.md §3.2 [AB-TS]):
//! `html5 {page_title, click_tag, ad_network, include_backup_image, repeat}`,
//! `gif {max_fps 2–9, repeat}`, `video {fps 2–30}`, `print {color_profile, display_crop_marks}`,
//! and `original_visual_id` (a UUID; needs exactly one format, else Abyssale answers
//! `400 more_than_one_format`). Multi-page PDF (`generate-multipage-pdf` with `pages`) is not
//! offered: its body and outputs are not documented beyond "same pattern (`pages` body)".

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

const FIELDS: [&str; 10] = [
    "design_id",
    "format_names",
    "elements",
    "image_file_type",
    "file_compression_level",
    "html5",
    "gif",
    "video",
    "print",
    "original_visual_id",
];

/// Longest accepted string inside an option block (GUESS: the docs name no limit; a
/// `click_tag` is a URL, and 2 048 characters is the common URL ceiling).
pub const MAX_OPTION_STRING: usize = 2048;

/// The type of one option inside a block.
#[derive(Debug, Clone, Copy)]
enum Opt {
    Text,
    Flag,
    /// An integer in this inclusive range.
    Int(u64, u64),
    Uuid,
}

/// The option blocks and their fields, as providers.md §3.2 lists them [AB-TS]. Types: the
/// SDK's request schema (strings, booleans, integers; `color_profile` a UUID).
const BLOCKS: [(&str, &[(&str, Opt)]); 4] = [
    (
        "html5",
        &[
            ("page_title", Opt::Text),
            ("click_tag", Opt::Text),
            ("ad_network", Opt::Text),
            ("include_backup_image", Opt::Flag),
            ("repeat", Opt::Flag),
        ],
    ),
    ("gif", &[("max_fps", Opt::Int(2, 9)), ("repeat", Opt::Flag)]),
    ("video", &[("fps", Opt::Int(2, 30))]),
    (
        "print",
        &[
            ("color_profile", Opt::Uuid),
            ("display_crop_marks", Opt::Flag),
        ],
    ),
];

/// A validated spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub design_id: String,
    pub format_names: Vec<String>,
    pub elements: Map<String, Value>,
    pub image_file_type: Option<String>,
    pub file_compression_level: Option<u8>,
    /// `html5`, `gif`, `video`, `print`: each block as validated, by name, in that order.
    pub blocks: Vec<(&'static str, Map<String, Value>)>,
    /// Lowercased UUID; only with exactly one format name.
    pub original_visual_id: Option<String>,
}

impl Spec {
    /// The validated block `name`, if the caller set it.
    pub fn block(&self, name: &str) -> Option<&Map<String, Value>> {
        self.blocks.iter().find(|(n, _)| *n == name).map(|(_, m)| m)
    }
}

/// Check one option block; the block is kept as given when every field is valid.
fn parse_block(
    name: &'static str,
    fields: &[(&str, Opt)],
    value: &Value,
    v: &mut Vec<FieldViolation>,
) -> Option<Map<String, Value>> {
    let Some(obj) = value.as_object() else {
        v.push(FieldViolation::new(name, "must be an object"));
        return None;
    };
    let before = v.len();
    for (key, val) in obj {
        let path = format!("{name}.{key}");
        let Some((_, kind)) = fields.iter().find(|(f, _)| f == key) else {
            v.push(FieldViolation::new(path, "unknown field"));
            continue;
        };
        match (kind, val) {
            (Opt::Text, Value::String(t)) => {
                if t.chars().count() > MAX_OPTION_STRING {
                    v.push(FieldViolation::new(
                        path,
                        format!("at most {MAX_OPTION_STRING} characters"),
                    ));
                } else if t.chars().any(char::is_control) {
                    v.push(FieldViolation::new(
                        path,
                        "must not contain control characters",
                    ));
                }
            }
            (Opt::Text, _) => v.push(FieldViolation::new(path, "must be a string")),
            (Opt::Flag, Value::Bool(_)) => {}
            (Opt::Flag, _) => v.push(FieldViolation::new(path, "must be a boolean")),
            (Opt::Int(lo, hi), n) => {
                if !n.as_u64().is_some_and(|x| (*lo..=*hi).contains(&x)) {
                    v.push(FieldViolation::new(
                        path,
                        format!("must be an integer from {lo} to {hi}"),
                    ));
                }
            }
            (Opt::Uuid, Value::String(t)) if is_uuid(t) => {}
            (Opt::Uuid, _) => v.push(FieldViolation::new(path, "must be a UUID")),
        }
    }
    (v.len() == before).then(|| obj.clone())
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

    let mut blocks = Vec::new();
    for (name, fields) in BLOCKS {
        match obj.get(name) {
            None | Some(Value::Null) => {}
            Some(value) => {
                if let Some(m) = parse_block(name, fields, value, &mut v) {
                    blocks.push((name, m));
                }
            }
        }
    }

    // "needs exactly one format else 400 more_than_one_format" [AB-TS]: an empty list means
    // every format of the design, so exactly one name must be given.
    let original_visual_id = match obj.get("original_visual_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_uuid(s) => {
            if format_names.len() != 1 {
                v.push(FieldViolation::new(
                    "original_visual_id",
                    "needs exactly one entry in format_names",
                ));
            }
            Some(s.to_ascii_lowercase())
        }
        Some(_) => {
            v.push(FieldViolation::new("original_visual_id", "must be a UUID"));
            None
        }
    };

    if v.is_empty() {
        Ok(Spec {
            design_id,
            format_names,
            elements,
            image_file_type,
            file_compression_level,
            blocks,
            original_visual_id,
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
    fn output_blocks_parse_and_are_kept_as_given() {
        let s = parse(&json!({
            "design_id": DESIGN,
            "format_names": ["iab-medium"],
            "html5": {"page_title": "Sale", "click_tag": "https://x.example/c", "ad_network": "google",
                      "include_backup_image": false, "repeat": true},
            "gif": {"max_fps": 9, "repeat": false},
            "video": {"fps": 30},
            "print": {"color_profile": DESIGN, "display_crop_marks": true},
            "original_visual_id": "28E973CF-1514-4D9B-9DB6-CBACA229B040",
        }))
        .unwrap();
        assert_eq!(s.block("gif").unwrap()["max_fps"], 9);
        assert_eq!(s.block("html5").unwrap()["include_backup_image"], false);
        assert_eq!(s.block("video").unwrap().len(), 1);
        assert_eq!(
            s.original_visual_id.as_deref(),
            Some("28e973cf-1514-4d9b-9db6-cbaca229b040")
        );
        assert!(
            parse(&json!({"design_id": DESIGN}))
                .unwrap()
                .blocks
                .is_empty()
        );
    }

    #[test]
    fn output_block_problems_are_named_by_path() {
        let f = fields(parse(&json!({
            "design_id": DESIGN,
            "html5": {"page_title": 3, "include_backup_image": "yes", "autoplay": true},
            "gif": {"max_fps": 10, "repeat": 1},
            "video": {"fps": 1},
            "print": {"color_profile": "cmyk", "display_crop_marks": null},
            "original_visual_id": "not-a-uuid",
        })));
        for want in [
            "html5.page_title",
            "html5.include_backup_image",
            "html5.autoplay",
            "gif.max_fps",
            "gif.repeat",
            "video.fps",
            "print.color_profile",
            "print.display_crop_marks",
            "original_visual_id",
        ] {
            assert!(f.iter().any(|x| x == want), "missing {want} in {f:?}");
        }
        assert_eq!(
            fields(parse(&json!({"design_id": DESIGN, "video": 30}))),
            vec!["video"]
        );
        for lo_hi in [json!({"max_fps": 2}), json!({"max_fps": 9})] {
            assert!(parse(&json!({"design_id": DESIGN, "gif": lo_hi})).is_ok());
        }
        assert!(parse(&json!({"design_id": DESIGN, "video": {"fps": 2}})).is_ok());
        assert_eq!(
            fields(parse(&json!({"design_id": DESIGN, "gif": {"max_fps": 1}}))),
            vec!["gif.max_fps"]
        );
    }

    #[test]
    fn original_visual_id_needs_exactly_one_format() {
        for names in [json!([]), json!(["a", "b"])] {
            assert_eq!(
                fields(parse(&json!({
                    "design_id": DESIGN, "format_names": names, "original_visual_id": DESIGN,
                }))),
                vec!["original_visual_id"]
            );
        }
        assert!(
            parse(
                &json!({"design_id": DESIGN, "format_names": ["a"], "original_visual_id": DESIGN})
            )
            .is_ok()
        );
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
