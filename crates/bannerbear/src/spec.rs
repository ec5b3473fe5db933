//! The Bannerbear job spec callers send through adgate, and its validation. It is the v5
//! `ImageCreateRequest` [V5-SPEC] with snake_case names a proto message can carry: layer
//! attributes (kebab-case in v5) travel in a per-object `attributes` map.
//!
//! ```json
//! {"template": "A89wavQyY3Bebk3djP",
//!  "modifications": {
//!    "template": {"width": 1200, "height": 628, "transparent": false},
//!    "objects": [{"name": "headline", "attributes": {"text": "Hi", "color": "#FF0000"}},
//!                {"id": "lyr_2", "attributes": {"background-image": "https://x/y.png"}}]},
//!  "formats": ["png", "webp"], "scale": 2, "dpi": 300, "quality": 80, "proxy": true,
//!  "version": 3}
//! ```
//! Only `template` is required. `metadata` is not a caller field: the gateway puts the job's
//! identity there (see the crate docs).

use adgate_generator::FieldViolation;
use serde_json::{Map, Value};

mod modifications;

/// Output formats of a v5 image [V5-SPEC] `formats`; default `["jpg"]` when omitted.
pub const FORMATS: [&str; 5] = ["jpg", "png", "pdf", "webp", "avif"];
/// Longest template uid accepted. Samples are 18 alphanumerics (image uids 20–25)
/// [BB-V2-OLD], [AP]; the alphabet and length are undocumented (§17.9) — GUESS, with room.
pub const MAX_UID_LEN: usize = 64;
/// Objects per image (GUESS: no documented cap; templates rarely have more layers).
pub const MAX_OBJECTS: usize = 200;
/// Serialized size cap of `modifications` (GUESS, to keep stored specs small).
pub const MAX_MODIFICATIONS_BYTES: usize = 64 * 1024;
/// Canvas override range in pixels. GUESS: the 100–5000 range [V5-SPEC] gives for template
/// sizes (`POST /image_templates` 422), taken to bind overrides too (as the simulator does).
pub const DIMENSIONS: std::ops::RangeInclusive<u64> = 100..=5000;

/// Fields a caller might send that v5 moved or dropped [V5-SPEC] §5, or that the gateway owns.
const MOVED: [(&str, &str); 6] = [
    (
        "metadata",
        "is set by the gateway (it carries the job's identity)",
    ),
    (
        "transparent",
        "is modifications.template.transparent in Bannerbear v5",
    ),
    ("render_pdf", "is formats: [\"pdf\"] in Bannerbear v5"),
    ("template_version", "is version in Bannerbear v5"),
    (
        "project_id",
        "does not exist in Bannerbear v5 (keys are workspace-scoped)",
    ),
    (
        "webhook_url",
        "Bannerbear v5 has no per-request webhook (webhooks are resources)",
    ),
];

const FIELDS: [&str; 8] = [
    "template",
    "modifications",
    "formats",
    "scale",
    "dpi",
    "quality",
    "proxy",
    "version",
];

/// Which layer an object modifies: its `name` or its `id`, never both [V5-SPEC].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    Name(String),
    Id(String),
}

/// One entry of `modifications.objects`.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub layer: Layer,
    /// v5 attributes, kebab-case as documented (`text`, `font-family`, `background-image`…).
    pub attributes: Map<String, Value>,
}

/// `modifications.template` [V5-SPEC].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Canvas {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub transparent: Option<bool>,
}

/// A validated spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub template: String,
    pub canvas: Option<Canvas>,
    pub objects: Vec<Object>,
    pub formats: Vec<String>,
    pub scale: Option<u8>,
    pub dpi: Option<u16>,
    pub quality: Option<u8>,
    pub proxy: Option<bool>,
    pub version: Option<u32>,
}

impl Spec {
    /// The output size in pixels when the spec fixes it: canvas width × height, × `scale`
    /// (the v5 Image object carries no size [V5-SPEC] §6, so this is the only source).
    pub fn output_size(&self) -> Option<(u32, u32)> {
        let c = self.canvas.as_ref()?;
        let scale = u32::from(self.scale.unwrap_or(1));
        Some((c.width?.checked_mul(scale)?, c.height?.checked_mul(scale)?))
    }
}

/// A Bannerbear uid as far as adgate lets one into a body or a path: 1–64 ASCII alphanumerics.
pub fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_UID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn bad(v: &mut Vec<FieldViolation>, field: impl Into<String>, why: impl Into<String>) {
    v.push(FieldViolation::new(field, why));
}

/// An integer field within `lo..=hi`, or a violation.
fn int_in(
    obj: &Map<String, Value>,
    field: &str,
    lo: u64,
    hi: u64,
    v: &mut Vec<FieldViolation>,
) -> Option<u64> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Some(x),
            _ => {
                bad(v, field, format!("must be an integer from {lo} to {hi}"));
                None
            }
        },
    }
}

fn bool_field(
    obj: &Map<String, Value>,
    field: &str,
    path: &str,
    v: &mut Vec<FieldViolation>,
) -> Option<bool> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            bad(v, path, "must be a boolean");
            None
        }
    }
}

/// Parse and check a spec, reporting every problem with its path.
pub fn parse(spec: &Value) -> Result<Spec, Vec<FieldViolation>> {
    let v = &mut Vec::new();
    let Some(obj) = spec.as_object() else {
        return Err(vec![FieldViolation::new("", "must be a JSON object")]);
    };
    for key in obj.keys() {
        match key.as_str() {
            k if FIELDS.contains(&k) => {}
            k => {
                let why = MOVED
                    .iter()
                    .find(|(f, _)| *f == k)
                    .map_or("unknown field", |m| m.1);
                bad(v, k, why);
            }
        }
    }

    let template = match obj.get("template") {
        Some(Value::String(s)) if is_uid(s) => s.clone(),
        Some(Value::String(_)) => {
            bad(
                v,
                "template",
                format!("must be a template uid (1–{MAX_UID_LEN} letters and digits)"),
            );
            String::new()
        }
        Some(_) => {
            bad(v, "template", "must be a string (uid)");
            String::new()
        }
        None => {
            bad(v, "template", "is required");
            String::new()
        }
    };

    let (canvas, objects) = match obj.get("modifications") {
        None | Some(Value::Null) => (None, Vec::new()),
        Some(Value::Object(m)) => {
            let size = serde_json::to_vec(m).map_or(usize::MAX, |b| b.len());
            if size > MAX_MODIFICATIONS_BYTES {
                bad(
                    v,
                    "modifications",
                    format!("at most {MAX_MODIFICATIONS_BYTES} bytes of JSON"),
                );
            }
            modifications::parse(m, v)
        }
        Some(Value::Array(_)) => {
            // The v2 shape [RB2]; v5 takes an object [V5-SPEC].
            bad(
                v,
                "modifications",
                "must be an object {template, objects} (the v2 flat list is not accepted by v5)",
            );
            (None, Vec::new())
        }
        Some(_) => {
            bad(v, "modifications", "must be an object");
            (None, Vec::new())
        }
    };

    let mut formats: Vec<String> = Vec::new();
    match obj.get("formats") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            // An empty list means the default (`["jpg"]`), as an unset proto `repeated` field
            // reads; it is then not sent (the simulator refuses `[]`, a GUESS of its own).
            for (i, item) in items.iter().enumerate() {
                let path = format!("formats[{i}]");
                match item.as_str() {
                    Some(f) if FORMATS.contains(&f) => {
                        if formats.iter().any(|x| x == f) {
                            bad(v, path, format!("duplicate format '{f}'"));
                        } else {
                            formats.push(f.to_owned());
                        }
                    }
                    _ => bad(v, path, format!("must be one of {}", FORMATS.join(", "))),
                }
            }
        }
        Some(_) => bad(v, "formats", "must be an array of format names"),
    }

    // Ranges [V5-SPEC]: scale 1–4, dpi 72–600 (metadata only), quality 1–100 (JPG/WebP).
    let scale = int_in(obj, "scale", 1, 4, v).and_then(|x| u8::try_from(x).ok());
    let dpi = int_in(obj, "dpi", 72, 600, v).and_then(|x| u16::try_from(x).ok());
    let quality = int_in(obj, "quality", 1, 100, v).and_then(|x| u8::try_from(x).ok());
    let proxy = bool_field(obj, "proxy", "proxy", v);
    // "pin template version" [V5-SPEC]: its lower bound is undocumented — GUESS: versions are
    // counted from 1.
    let version =
        int_in(obj, "version", 1, u64::from(u32::MAX), v).and_then(|x| u32::try_from(x).ok());

    if v.is_empty() {
        Ok(Spec {
            template,
            canvas,
            objects,
            formats,
            scale,
            dpi,
            quality,
            proxy,
            version,
        })
    } else {
        Err(std::mem::take(v))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const TEMPLATE: &str = "A89wavQyY3Bebk3djP";

    fn fields(r: Result<Spec, Vec<FieldViolation>>) -> Vec<String> {
        r.err().unwrap().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_full_spec_parses() {
        let s = parse(&json!({
            "template": TEMPLATE,
            "modifications": {
                "template": {"width": 1200, "height": 628, "transparent": true},
                "objects": [
                    {"name": "headline", "attributes": {"text": "Hi", "font-size": 48, "hidden": false}},
                    {"id": "lyr2", "attributes": {"background-image": "https://x.example/a.png"}}
                ]
            },
            "formats": ["png", "webp"],
            "scale": 2, "dpi": 300, "quality": 80, "proxy": true, "version": 3,
        }))
        .unwrap();
        assert_eq!(s.template, TEMPLATE);
        let canvas = s.canvas.clone().unwrap();
        assert_eq!(
            (canvas.width, canvas.height, canvas.transparent),
            (Some(1200), Some(628), Some(true))
        );
        assert_eq!(s.output_size(), Some((2400, 1256)));
        assert_eq!(s.objects[0].layer, Layer::Name("headline".into()));
        assert_eq!(s.objects[1].layer, Layer::Id("lyr2".into()));
        assert_eq!(s.objects[0].attributes["font-size"], 48);
        assert_eq!(s.formats, vec!["png", "webp"]);
        assert_eq!(
            (s.scale, s.dpi, s.quality, s.proxy, s.version),
            (Some(2), Some(300), Some(80), Some(true), Some(3))
        );
    }

    #[test]
    fn minimal_spec_is_the_template_alone() {
        let s = parse(&json!({"template": TEMPLATE})).unwrap();
        assert!(s.objects.is_empty() && s.formats.is_empty() && s.canvas.is_none());
    }

    #[test]
    fn every_problem_is_named_by_path() {
        let f = fields(parse(&json!({
            "template": "not/a uid",
            "modifications": {
                "template": {"width": 0, "height": "x", "transparent": "yes", "depth": 1},
                "objects": [
                    {"name": "a", "id": "b"},
                    {"attributes": {"text": "no target"}},
                    {"name": "", "attributes": {}},
                    {"name": "ok", "attributes": {"image_url": "u", "font_family": "x", "name": "n", "color": {"r": 1}, "gradient": ["a"]}},
                    {"name": "ok2", "text": "flat"},
                    7
                ],
                "extra": 1
            },
            "formats": ["png", "bmp", "png"],
            "scale": 5, "dpi": 71, "quality": 0, "proxy": 1, "version": 0,
            "metadata": "mine", "transparent": true, "render_pdf": true, "webhook_url": "u", "x": 1,
        })));
        let want = concat!(
            "template modifications.template.width modifications.template.height ",
            "modifications.template.transparent modifications.template.depth ",
            "modifications.objects[0] modifications.objects[1] modifications.objects[2].name ",
            "modifications.objects[3].attributes.image_url ",
            "modifications.objects[3].attributes.font_family ",
            "modifications.objects[3].attributes.name ",
            "modifications.objects[3].attributes.color ",
            "modifications.objects[3].attributes.gradient modifications.objects[4].text ",
            "modifications.objects[5] modifications.extra formats[1] formats[2] scale dpi ",
            "quality proxy version metadata transparent render_pdf webhook_url x ",
        );
        for want in want.split_whitespace() {
            assert!(f.iter().any(|x| x == want), "missing {want} in {f:?}");
        }
        // A nameless object with a bad name is reported once, at the name.
        assert!(!f.iter().any(|x| x == "modifications.objects[2]"), "{f:?}");
    }

    #[test]
    fn shapes_and_limits() {
        assert_eq!(fields(parse(&json!({}))), vec!["template"]);
        assert_eq!(fields(parse(&json!([1]))), vec![""]);
        assert_eq!(fields(parse(&json!({"template": 5}))), vec!["template"]);
        assert_eq!(
            fields(parse(&json!({"template": "x".repeat(65)}))),
            vec!["template"]
        );
        assert_eq!(
            fields(parse(
                &json!({"template": TEMPLATE, "modifications": [{"name": "a"}]})
            )),
            vec!["modifications"]
        );
        assert!(
            parse(&json!({"template": TEMPLATE, "formats": []}))
                .unwrap()
                .formats
                .is_empty()
        );
        let many: Vec<Value> = (0..=MAX_OBJECTS)
            .map(|i| json!({"name": format!("l{i}")}))
            .collect();
        assert_eq!(
            fields(parse(
                &json!({"template": TEMPLATE, "modifications": {"objects": many}})
            )),
            vec!["modifications.objects"]
        );
        let big = "x".repeat(MAX_MODIFICATIONS_BYTES);
        assert_eq!(
            fields(parse(&json!({"template": TEMPLATE,
                "modifications": {"objects": [{"name": "t", "attributes": {"text": big}}]}}))),
            vec!["modifications"]
        );
        for ok in [
            json!({"template": TEMPLATE, "scale": 1, "dpi": 72, "quality": 100, "version": 1}),
            json!({"template": TEMPLATE, "scale": 4, "dpi": 600, "quality": 1, "formats": ["avif", "pdf", "jpg"]}),
            json!({"template": TEMPLATE, "modifications": null, "formats": null}),
        ] {
            assert!(parse(&ok).is_ok(), "{ok}");
        }
    }
}
