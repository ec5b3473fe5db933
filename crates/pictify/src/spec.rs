//! The caller's Pictify spec (our API, snake_case), its validation, and the two keys derived from
//! it: the group key (batch-level options that must match to share one `batch-render` call) and
//! the correlation key and variable matching (how a `render.completed` webhook finds its job).

use adgate_generator::FieldViolation;
use serde_json::{Map, Value};

pub const MAX_TEMPLATE_UID_LEN: usize = 128;
pub const MAX_VARIABLES_BYTES: usize = 64 * 1024;
pub const FORMATS: [&str; 3] = ["png", "jpeg", "webp"];
/// Documented defaults of `batch-render` [PX-LIVE:…/batch/render].
pub const DEFAULT_FORMAT: &str = "png";
pub const DEFAULT_QUALITY: f64 = 0.9;
const FIELDS: [&str; 7] = [
    "template_uid",
    "variables",
    "format",
    "quality",
    "layout",
    "layouts",
    "concurrency",
];
/// Layouts per render: "one image per item per layout"; the SDK caps the list at 20
/// [PX-PY], providers.md §2.3.
pub const MAX_LAYOUTS: usize = 20;
/// Items rendered at once: 1–10, default 5 [PX-LIVE:…/batch/render]; plans cap it (Free 1,
/// Pro 3, Business 10 per [PX-MCP]), which the provider enforces.
pub const CONCURRENCY: std::ops::RangeInclusive<u64> = 1..=10;
pub const DEFAULT_CONCURRENCY: u32 = 5;

/// A validated spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub template_uid: String,
    pub variables: Map<String, Value>,
    pub format: Option<String>,
    pub quality: Option<f64>,
    pub layout: Option<String>,
    /// Several layouts: one image each. Empty = one image (`layout` or the default).
    pub layouts: Vec<String>,
    pub concurrency: Option<u32>,
}

impl Spec {
    /// Parse and validate; every problem is reported, with paths relative to the spec.
    pub fn parse(spec: &Value) -> Result<Self, Vec<FieldViolation>> {
        let mut v = Vec::new();
        let Some(obj) = spec.as_object() else {
            return Err(vec![FieldViolation::new("", "must be a JSON object")]);
        };
        for key in obj.keys() {
            if !FIELDS.contains(&key.as_str()) {
                v.push(FieldViolation::new(key.as_str(), "unknown field"));
            }
        }
        let template_uid = match obj.get("template_uid") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_TEMPLATE_UID_LEN => {
                // It becomes a URL path segment: allow the characters Pictify uids use only.
                if s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                {
                    s.clone()
                } else {
                    v.push(FieldViolation::new(
                        "template_uid",
                        "may contain only letters, digits, '_' and '-'",
                    ));
                    String::new()
                }
            }
            Some(Value::String(_)) => {
                v.push(FieldViolation::new(
                    "template_uid",
                    format!("must be 1–{MAX_TEMPLATE_UID_LEN} characters"),
                ));
                String::new()
            }
            Some(_) => {
                v.push(FieldViolation::new("template_uid", "must be a string"));
                String::new()
            }
            None => {
                v.push(FieldViolation::new("template_uid", "is required"));
                String::new()
            }
        };
        let variables = match obj.get("variables") {
            Some(Value::Object(m)) => {
                let size = Value::Object(m.clone()).to_string().len();
                if size > MAX_VARIABLES_BYTES {
                    v.push(FieldViolation::new(
                        "variables",
                        format!(
                            "must serialise to at most {MAX_VARIABLES_BYTES} bytes (got {size})"
                        ),
                    ));
                }
                m.clone()
            }
            Some(_) => {
                v.push(FieldViolation::new("variables", "must be a JSON object"));
                Map::new()
            }
            None => {
                v.push(FieldViolation::new("variables", "is required"));
                Map::new()
            }
        };
        let format = match obj.get("format") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if FORMATS.contains(&s.as_str()) => Some(s.clone()),
            Some(_) => {
                v.push(FieldViolation::new(
                    "format",
                    "must be one of png, jpeg, webp",
                ));
                None
            }
        };
        let quality = match obj.get("quality") {
            None | Some(Value::Null) => None,
            Some(q) => match q.as_f64() {
                Some(q) if q.is_finite() && (0.1..=1.0).contains(&q) => Some(q),
                _ => {
                    v.push(FieldViolation::new(
                        "quality",
                        "must be a number between 0.1 and 1.0",
                    ));
                    None
                }
            },
        };
        let layout = match obj.get("layout") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if layout_ok(s) => Some(s.clone()),
            Some(_) => {
                v.push(FieldViolation::new(
                    "layout",
                    "must match ^[a-z0-9-]{1,64}$",
                ));
                None
            }
        };
        let layouts = match obj.get("layouts") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let names: Vec<String> = items
                    .iter()
                    .filter_map(|i| i.as_str().filter(|s| layout_ok(s)).map(str::to_owned))
                    .collect();
                let unique: std::collections::BTreeSet<&String> = names.iter().collect();
                if names.len() != items.len()
                    || items.is_empty()
                    || items.len() > MAX_LAYOUTS
                    || unique.len() != names.len()
                {
                    v.push(FieldViolation::new(
                        "layouts",
                        "must be 1-20 distinct names matching ^[a-z0-9-]{1,64}$",
                    ));
                }
                names
            }
            Some(_) => {
                v.push(FieldViolation::new(
                    "layouts",
                    "must be a list of layout names",
                ));
                Vec::new()
            }
        };
        // GUESS: the documents give `layout` and `layouts` side by side without saying which
        // wins when both are set; refusing both is the reading that cannot surprise anyone.
        if layout.is_some() && !layouts.is_empty() {
            v.push(FieldViolation::new(
                "layouts",
                "set layout or layouts, not both",
            ));
        }
        let concurrency = match obj.get("concurrency") {
            None | Some(Value::Null) => None,
            Some(c) => match c.as_u64().filter(|n| CONCURRENCY.contains(n)) {
                Some(n) => u32::try_from(n).ok(),
                None => {
                    v.push(FieldViolation::new(
                        "concurrency",
                        "must be an integer between 1 and 10",
                    ));
                    None
                }
            },
        };
        if v.is_empty() {
            Ok(Self {
                template_uid,
                variables,
                format,
                quality,
                layout,
                layouts,
                concurrency,
            })
        } else {
            Err(v)
        }
    }

    pub fn format(&self) -> &str {
        self.format.as_deref().unwrap_or(DEFAULT_FORMAT)
    }

    pub fn quality(&self) -> f64 {
        self.quality.unwrap_or(DEFAULT_QUALITY)
    }

    /// Template + format + quality + layout + concurrency (batch-level options), with
    /// documented defaults filled in so that an omitted option groups with its explicit default.
    pub fn group_key(&self) -> String {
        format!(
            "{}|{}|{:?}|{}|{}|{}",
            self.template_uid,
            self.format(),
            self.quality(),
            self.layout.as_deref().unwrap_or(""),
            self.layouts.join(","),
            self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
        )
    }

    pub fn correlation_key(&self) -> String {
        correlation_key(&self.template_uid)
    }

    /// Images this item produces: one per layout.
    pub fn images(&self) -> usize {
        self.layouts.len().max(1)
    }
}

/// `^[a-z0-9-]{1,64}$`
pub fn layout_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// The store-side half of correlation: the template. A `render.completed` event names the
/// template and (some of) the variable values, never the batch or the item index ([SEED-3]),
/// so candidates are the unfinished jobs of the template and [`variables_match`] picks one.
pub fn correlation_key(template_uid: &str) -> String {
    template_uid.to_owned()
}

/// A fingerprint of a template and variables as an event would print them: equal for a job
/// and an event that carries every one of its variables with the same printed value (in any
/// order), so that `variables_match` holds between them. Stable within one process only (it
/// indexes jobs in memory, never on disk).
pub fn fingerprint(template_uid: &str, variables: &Map<String, Value>) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let mut h = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().build_hasher();
    h.write(template_uid.as_bytes());
    h.write_u8(0xff);
    for name in names {
        h.write(name.as_bytes());
        h.write_u8(0xff);
        if let Some(value) = variables.get(name) {
            h.write(printed(value).as_bytes());
        }
        h.write_u8(0xfe);
    }
    h.finish()
}

/// Whether an event's variables name a job with `job` variables: every variable the event
/// carries must be one the job set, with the same value as the provider would print it (the
/// document's example payload carries only `title`; a provider may echo `5` for `"5"` or `1`
/// for `1.0`). An event that carries no variables matches any job of its template.
pub fn variables_match(job: &Map<String, Value>, event: &Map<String, Value>) -> bool {
    event.iter().all(|(name, value)| {
        job.get(name)
            .is_some_and(|mine| printed(mine) == printed(value))
    })
}

/// A value as it appears in a rendered image: strings bare, numbers without a needless `.0`,
/// null as nothing, anything structured as canonical JSON.
fn printed(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => {
            let mut out = String::new();
            write_canonical(other, &mut out);
            out
        }
    }
}

/// JSON with sorted object keys, no whitespace, and integral floats written as integers (a
/// provider that re-serialises `1.0` as `1` must still correlate).
pub fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str(&n.to_string());
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
                    out.push_str(&(f as i64).to_string());
                } else {
                    out.push_str(&f.to_string());
                }
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: &Value) -> Vec<String> {
        Spec::parse(v)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.field)
            .collect()
    }

    #[test]
    fn valid_spec_parses_with_defaults() {
        let s = Spec::parse(&json!({"template_uid": "tmpl_a", "variables": {"t": 1}})).unwrap();
        assert_eq!(s.format(), "png");
        assert_eq!(s.quality(), 0.9);
        assert_eq!(s.group_key(), "tmpl_a|png|0.9|||5");
    }

    #[test]
    fn violations_name_their_fields() {
        assert_eq!(fields(&json!({})), ["template_uid", "variables"]);
        assert_eq!(fields(&json!([])), [""]);
        let bad = json!({
            "template_uid": "tmpl/../x", "variables": [], "format": "jpg",
            "quality": 1.5, "layout": "Bad_Layout", "extra": 1,
        });
        assert_eq!(
            fields(&bad),
            [
                "extra",
                "template_uid",
                "variables",
                "format",
                "quality",
                "layout"
            ]
        );
        assert_eq!(
            fields(&json!({"template_uid": "x".repeat(129), "variables": {}})),
            ["template_uid"]
        );
        let big = json!({"template_uid": "tmpl_a", "variables": {"v": "x".repeat(70_000)}});
        assert_eq!(fields(&big), ["variables"]);
        assert_eq!(
            fields(&json!({"template_uid": "tmpl_a", "variables": {}, "quality": 0.05})),
            ["quality"]
        );
    }

    #[test]
    fn group_key_fills_defaults_and_separates_options() {
        let a = Spec::parse(&json!({"template_uid": "t", "variables": {}})).unwrap();
        let b = Spec::parse(
            &json!({"template_uid": "t", "variables": {"x": 1}, "format": "png", "quality": 0.9}),
        )
        .unwrap();
        let c =
            Spec::parse(&json!({"template_uid": "t", "variables": {}, "format": "jpeg"})).unwrap();
        let d =
            Spec::parse(&json!({"template_uid": "t", "variables": {}, "layout": "story"})).unwrap();
        assert_eq!(a.group_key(), b.group_key());
        assert_ne!(a.group_key(), c.group_key());
        assert_ne!(a.group_key(), d.group_key());
    }

    fn map(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn variables_match_on_what_the_event_carries_as_printed() {
        let job = map(
            r#"{"title": "Spring sale", "price": 5, "ratio": 1.0, "n": {"y": [1], "x": null}}"#,
        );
        // The document's example carries one variable; it is enough.
        assert!(variables_match(&job, &map(r#"{"title": "Spring sale"}"#)));
        // Numbers and strings compared as printed; key order inside objects is irrelevant.
        assert!(variables_match(
            &job,
            &map(r#"{"price": "5", "ratio": 1, "n": {"x": null, "y": [1]}}"#)
        ));
        assert!(variables_match(&job, &map(r#"{"price": 5.0}"#)));
        // Every variable present must equal; one the job never set cannot match.
        assert!(!variables_match(
            &job,
            &map(r#"{"title": "Spring sale", "price": 6}"#)
        ));
        assert!(!variables_match(&job, &map(r#"{"subtitle": "x"}"#)));
        assert!(!variables_match(&job, &map(r#"{"title": "spring sale"}"#)));
        // Nothing carried: any job of the template (the oldest is chosen by the engine).
        assert!(variables_match(&job, &Map::new()));
        assert_eq!(correlation_key("tmpl_a"), "tmpl_a");
    }

    #[test]
    fn a_fingerprint_is_equal_exactly_when_an_event_echoes_every_variable() {
        let job = map(r#"{"title": "Spring sale", "price": 5, "n": {"y": [1], "x": null}}"#);
        let fp = fingerprint("tmpl_a", &job);
        // Every variable, printed alike, in another order.
        let echoed = map(r#"{"n": {"x": null, "y": [1]}, "price": "5", "title": "Spring sale"}"#);
        assert!(variables_match(&job, &echoed));
        assert_eq!(fingerprint("tmpl_a", &echoed), fp);
        // A subset still matches by scan but is not an exact echo; another template or value
        // is another fingerprint.
        assert_ne!(
            fingerprint("tmpl_a", &map(r#"{"title": "Spring sale"}"#)),
            fp
        );
        assert_ne!(fingerprint("tmpl_b", &job), fp);
        let other = map(r#"{"title": "Spring sale", "price": 6, "n": {"y": [1], "x": null}}"#);
        assert_ne!(fingerprint("tmpl_a", &other), fp);
        // Names and values cannot run into each other.
        assert_ne!(
            fingerprint("t", &map(r#"{"ab": "c"}"#)),
            fingerprint("t", &map(r#"{"a": "bc"}"#))
        );
    }

    #[test]
    fn layouts_are_validated_and_each_is_an_image() {
        let parse = |v: Value| Spec::parse(&v);
        let two =
            parse(json!({"template_uid": "t", "variables": {}, "layouts": ["story", "square"]}))
                .unwrap();
        assert_eq!(two.images(), 2);
        assert_eq!(
            parse(json!({"template_uid": "t", "variables": {}}))
                .unwrap()
                .images(),
            1
        );
        assert_ne!(
            two.group_key(),
            parse(json!({"template_uid": "t", "variables": {}}))
                .unwrap()
                .group_key()
        );
        for bad in [
            json!([]),
            json!(["Story"]),
            json!(["a", "a"]),
            json!("story"),
            json!((0..21).map(|i| format!("l{i}")).collect::<Vec<_>>()),
        ] {
            let err =
                parse(json!({"template_uid": "t", "variables": {}, "layouts": bad})).unwrap_err();
            assert_eq!(err[0].field, "layouts", "{err:?}");
        }
        let both =
            parse(json!({"template_uid": "t", "variables": {}, "layout": "a", "layouts": ["b"]}));
        assert_eq!(both.unwrap_err()[0].field, "layouts");
    }

    #[test]
    fn concurrency_is_validated_and_part_of_the_group() {
        let parse = |v: Value| Spec::parse(&v);
        let five = parse(json!({"template_uid": "t", "variables": {}, "concurrency": 5})).unwrap();
        let unset = parse(json!({"template_uid": "t", "variables": {}})).unwrap();
        let one = parse(json!({"template_uid": "t", "variables": {}, "concurrency": 1})).unwrap();
        assert_eq!(five.concurrency, Some(5));
        assert_eq!(unset.concurrency, None, "only what the caller set is sent");
        assert_eq!(
            five.group_key(),
            unset.group_key(),
            "5 is the documented default"
        );
        assert_ne!(one.group_key(), unset.group_key());
        for bad in [json!(0), json!(11), json!(2.5), json!("3")] {
            let err = parse(json!({"template_uid": "t", "variables": {}, "concurrency": bad}))
                .unwrap_err();
            assert_eq!(err[0].field, "concurrency");
        }
        let body = crate::wire::BatchRenderRequest {
            variable_sets: vec![],
            format: "png",
            quality: 0.9,
            layout: None,
            layouts: None,
            concurrency: unset.concurrency,
        };
        assert!(
            !serde_json::to_string(&body)
                .unwrap()
                .contains("concurrency")
        );
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_integral_fractions() {
        let a = map(r#"{"b": 1.0, "a": {"y": [1, "x"], "x": null}}"#);
        let mut s = String::new();
        write_canonical(&Value::Object(a), &mut s);
        assert_eq!(s, r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
    }
}
