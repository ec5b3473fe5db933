//! Bannerbear v5 JSON, as far as adgate writes or reads it, and its translation into
//! updates. Unknown fields are ignored everywhere; types are read leniently because several
//! shapes are undocumented or disputed (§16, §17 of the fact sheet).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adgate_generator::{JobError, Output, ProviderUpdate, UpdateTarget};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::spec::{Layer, Spec};

/// The `POST /v5/images` body (`ImageCreateRequest`) [V5-SPEC]. `modifications` is always
/// sent (the spec marks it required), at least as `{"objects": []}`. Never a `webhook_url`,
/// `project_id` or idempotency field: v5 has none [V5-SPEC], §13.
pub fn create_body(spec: &Spec, metadata: &str) -> Value {
    let mut modifications = Map::new();
    if let Some(c) = &spec.canvas {
        let mut t = Map::new();
        if let Some(w) = c.width {
            t.insert("width".into(), json!(w));
        }
        if let Some(h) = c.height {
            t.insert("height".into(), json!(h));
        }
        if let Some(tr) = c.transparent {
            t.insert("transparent".into(), json!(tr));
        }
        modifications.insert("template".into(), Value::Object(t));
    }
    let objects: Vec<Value> = spec
        .objects
        .iter()
        .map(|o| {
            let mut m = Map::new();
            match &o.layer {
                Layer::Name(n) => m.insert("name".into(), json!(n)),
                Layer::Id(i) => m.insert("id".into(), json!(i)),
            };
            // Attribute keys never collide with name/id: spec validation refuses those.
            m.extend(o.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
            Value::Object(m)
        })
        .collect();
    modifications.insert("objects".into(), Value::Array(objects));

    let mut body = Map::new();
    body.insert("template".into(), json!(spec.template));
    body.insert("modifications".into(), Value::Object(modifications));
    if !spec.formats.is_empty() {
        body.insert("formats".into(), json!(spec.formats));
    }
    let opt = [
        ("scale", spec.scale.map(|x| json!(x))),
        ("dpi", spec.dpi.map(|x| json!(x))),
        ("quality", spec.quality.map(|x| json!(x))),
        ("proxy", spec.proxy.map(|x| json!(x))),
        ("version", spec.version.map(|x| json!(x))),
    ];
    for (k, v) in opt {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    }
    body.insert("metadata".into(), json!(metadata));
    Value::Object(body)
}

/// The v5 Image object [V5-SPEC]: `uid, status, template, files, metadata, error, self,
/// created_at, completed_at`. `width`/`height` are not in the v5 list (they are in v2's
/// [AP]); they are read when present.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Image {
    #[serde(deserialize_with = "lenient_string")]
    pub uid: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub status: Option<String>,
    /// CONFLICT §16.3: an object keyed by format [V5-SPEC], [N8N] or a list of URLs [NODE5].
    /// Kept raw and read by [`outputs`].
    pub files: Value,
    #[serde(deserialize_with = "lenient_string")]
    pub metadata: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub error: Option<String>,
    #[serde(rename = "self", deserialize_with = "lenient_string")]
    pub self_url: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub created_at: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub completed_at: Option<String>,
    pub width: Value,
    pub height: Value,
    /// Echoed request modifications (v2 echoes them [BB-V2-OLD]; GUESS for v5), read only
    /// for the canvas size when the object carries no `width`/`height`.
    pub modifications: Value,
    /// Every other field of the object, verbatim (`template`, and whatever v5 adds).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

impl Image {
    /// The object's own fields, verbatim, minus those mapped to typed job fields (`status`,
    /// `files`, `width`, `height`, `error`) [V5-SPEC]: `uid`, `self`, `template`,
    /// `created_at`, `completed_at` (those four only when strings: the lenient reading above
    /// treats a null as absent), the echoed `modifications`, and anything else. Never
    /// `metadata`: the gateway always sets it to the job's identity and binding token
    /// (`adgate_job=…&adgate_token=…`, see `webhook::metadata_for`), which is ours, not the
    /// caller's, and must not leave the gateway.
    pub fn provider_result(&self) -> Map<String, Value> {
        let mut fields = self.rest.clone();
        fields.remove("metadata");
        let text = [
            ("uid", &self.uid),
            ("self", &self.self_url),
            ("created_at", &self.created_at),
            ("completed_at", &self.completed_at),
        ];
        for (k, v) in text {
            if let Some(v) = v {
                fields.insert(k.to_owned(), Value::String(v.clone()));
            }
        }
        if !self.modifications.is_null() {
            fields.insert("modifications".to_owned(), self.modifications.clone());
        }
        fields
    }

    /// Whether this object is an image (webhook resources may also carry batches, tool jobs,
    /// animations… [V5-SPEC] §8.2). GUESS: judged by `self` when present.
    pub fn is_image(&self) -> bool {
        self.self_url
            .as_deref()
            .is_none_or(|s| s.contains("/images/"))
    }

    /// The freshest time the object states: completion, else creation.
    pub fn stated_time(&self) -> Option<SystemTime> {
        self.completed_at
            .as_deref()
            .and_then(parse_rfc3339)
            .or_else(|| self.created_at.as_deref().and_then(parse_rfc3339))
    }
}

/// The v5 error body `{"message": …}` [V5-SPEC]@a9ca682; MCP also reads `error`/`errors`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub message: Value,
    pub error: Value,
    pub errors: Value,
}

impl ErrorBody {
    /// The human-readable message, from the first field that has one.
    pub fn text(&self) -> Option<String> {
        for v in [&self.message, &self.error, &self.errors] {
            match v {
                Value::String(s) if !s.trim().is_empty() => return Some(s.clone()),
                Value::Array(items) => {
                    let parts: Vec<String> = items
                        .iter()
                        .filter_map(|i| match i {
                            Value::String(s) => Some(s.clone()),
                            Value::Object(o) => {
                                o.get("message").and_then(Value::as_str).map(str::to_owned)
                            }
                            _ => None,
                        })
                        .collect();
                    if !parts.is_empty() {
                        return Some(parts.join("; "));
                    }
                }
                _ => {}
            }
        }
        None
    }
}

pub fn mime(format: &str) -> &'static str {
    match format {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "pdf" => "application/pdf",
        "webp" => "image/webp",
        "avif" => "image/avif",
        _ => "application/octet-stream",
    }
}

fn px(v: &Value) -> u32 {
    v.as_f64()
        .filter(|x| x.is_finite() && *x > 0.0)
        .map_or(0, |x| x.round().min(f64::from(u32::MAX)) as u32)
}

/// The format a URL's extension names (for the list form of `files`).
fn format_of_url(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("jpeg") => "jpg".to_owned(),
        Some(e) if crate::spec::FORMATS.contains(&e) => e.to_owned(),
        _ => String::new(),
    }
}

/// One output per file URL. The canvas size is the object's `width`/`height` or the echoed
/// `modifications.template` (0 when neither is there; `scale` multiplies it, GUESS).
pub fn outputs(image: &Image) -> Vec<Output> {
    let canvas = image.modifications.get("template");
    let width = match px(&image.width) {
        0 => canvas.map_or(0, |t| px(&t["width"])),
        w => w,
    };
    let height = match px(&image.height) {
        0 => canvas.map_or(0, |t| px(&t["height"])),
        h => h,
    };
    let files: Vec<(String, &str)> = match &image.files {
        Value::Object(m) => m
            .iter()
            .filter_map(|(fmt, url)| Some((fmt.to_ascii_lowercase(), url.as_str()?)))
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|u| (format_of_url(u), u))
            .collect(),
        _ => Vec::new(),
    };
    files
        .into_iter()
        .filter(|(_, url)| url.starts_with("http://") || url.starts_with("https://"))
        .map(|(format, url)| Output {
            url: url.to_owned(),
            width,
            height,
            mime_type: mime(&format).to_owned(),
            format,
            provider_fields: Map::new(),
            custody: Default::default(),
        })
        .collect()
}

/// The update an Image object means. Statuses `pending|completed|failed` [V5-SPEC]; any other
/// is a terminal error (CONFLICT §16.1: the adapter's reading of an unknown status).
pub fn to_update(provider_ref: &str, image: &Image) -> ProviderUpdate {
    let update = mapped_update(provider_ref, image);
    let result = image.provider_result();
    if result.is_empty() {
        update
    } else {
        update.with_provider_result(result)
    }
}

fn mapped_update(provider_ref: &str, image: &Image) -> ProviderUpdate {
    let target = UpdateTarget::ProviderRef(provider_ref.to_owned());
    match image.status.as_deref() {
        Some("pending") => ProviderUpdate::processing(target, None),
        Some("completed") => {
            let out = outputs(image);
            if out.is_empty() {
                ProviderUpdate::failed(
                    target,
                    JobError::new(
                        "PROVIDER_NO_OUTPUT",
                        "Bannerbear reported the image completed without any file URL",
                        true,
                    )
                    .with_provider_code("completed"),
                )
            } else {
                ProviderUpdate::completed(target, out)
            }
        }
        Some("failed") => {
            let message = image
                .error
                .clone()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| "Bannerbear failed to render the image".to_owned());
            // GUESS: failure reasons are free text, so whether the same spec fails again is
            // unknown; retryable = true lets the caller decide.
            ProviderUpdate::failed(
                target,
                JobError::new("PROVIDER_JOB_FAILED", message, true).with_provider_code("failed"),
            )
        }
        other => {
            let status = other.unwrap_or_default();
            ProviderUpdate::failed(
                target,
                JobError::new(
                    "PROVIDER_UNKNOWN_STATUS",
                    format!("Bannerbear reported an unknown image status {status:?}"),
                    true,
                )
                .with_provider_code(status),
            )
        }
    }
}

/// Fill in outputs whose size the object did not state with the size the create asked for
/// (`modifications.template` × `scale`), when the adapter remembers it.
pub fn fill_size(update: &mut ProviderUpdate, size: Option<(u32, u32)>) {
    let Some((w, h)) = size else {
        return;
    };
    for o in &mut update.outputs {
        if o.width == 0 {
            o.width = w;
        }
        if o.height == 0 {
            o.height = h;
        }
    }
}

/// `2020-02-20T07:59:23.077Z` or with a `±hh:mm` offset [BB-V2-OLD] (v5 samples use the same
/// ISO-8601 form). `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &frac[..digits.min(9)];
        nanos = kept.parse::<u32>().ok()? * 10u32.pow(9 - kept.len() as u32);
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh: i64 = o.get(1..3)?.parse().ok()?;
            let om: i64 = o.get(4..6)?.parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

// Howard Hinnant's days-from-civil algorithm.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::spec;
    use adgate_generator::RemoteState;

    /// A pending v5 image as a 202 answers it, fields per [V5-SPEC] §6 (the sheet gives the
    /// field list, not a verbatim sample; uid and timestamp from the [BB-V2-OLD] sample).
    const PENDING: &str = r#"{"uid":"kG39R5XbvPQpLENKBWJj","status":"pending","template":"A89wavQyY3Bebk3djP","files":{},"metadata":"adgate_job=job_1","self":"https://api.bannerbear.com/v5/images/kG39R5XbvPQpLENKBWJj","created_at":"2020-02-20T07:59:23.077Z","completed_at":null}"#;

    /// The object's own fields reach the job verbatim, minus the mapped ones and never the
    /// gateway's `metadata` (the job identity and binding token) [V5-SPEC].
    #[test]
    fn provider_result_keeps_the_object_but_not_our_metadata() {
        let i: Image = serde_json::from_str(PENDING).unwrap();
        let r = to_update("kG39R5XbvPQpLENKBWJj", &i)
            .provider_result
            .unwrap();
        assert_eq!(
            Value::Object(r),
            json!({
                "uid": "kG39R5XbvPQpLENKBWJj",
                "template": "A89wavQyY3Bebk3djP",
                "self": "https://api.bannerbear.com/v5/images/kG39R5XbvPQpLENKBWJj",
                "created_at": "2020-02-20T07:59:23.077Z",
            }),
            "a null `completed_at` reads as absent"
        );
    }

    #[test]
    fn pending_is_processing() {
        let i: Image = serde_json::from_str(PENDING).unwrap();
        assert_eq!(i.uid.as_deref(), Some("kG39R5XbvPQpLENKBWJj"));
        assert!(i.is_image());
        let u = to_update("kG39R5XbvPQpLENKBWJj", &i);
        assert_eq!(u.state, RemoteState::Processing);
        assert_eq!(
            i.stated_time(),
            Some(UNIX_EPOCH + Duration::from_millis(1_582_185_563_077))
        );
    }

    #[test]
    fn completed_files_become_outputs() {
        let i: Image = serde_json::from_str(
            r#"{"uid":"VA54EW2ZqQr5eKOP6egGPNXJl","status":"completed","template":"A89wavQyY3Bebk3djP",
            "files":{"png":"https://images.bannerbear.com/direct/x/a.png","webp":"https://images.bannerbear.com/direct/x/a.webp"},
            "metadata":null,"self":"https://api.bannerbear.com/v5/images/VA54EW2ZqQr5eKOP6egGPNXJl",
            "created_at":"2026-03-13T10:00:00.000Z","completed_at":"2026-03-13T10:00:03.500Z",
            "modifications":{"template":{"width":1200,"height":628}}}"#,
        )
        .unwrap();
        let u = to_update("VA54EW2ZqQr5eKOP6egGPNXJl", &i);
        assert_eq!(u.state, RemoteState::Completed);
        assert_eq!(u.outputs.len(), 2);
        assert_eq!(u.outputs[0].format, "png");
        assert_eq!(u.outputs[0].mime_type, "image/png");
        assert_eq!((u.outputs[1].width, u.outputs[1].height), (1200, 628));
        assert_eq!(u.outputs[1].mime_type, "image/webp");
    }

    #[test]
    fn list_form_of_files_and_odd_shapes() {
        // CONFLICT §16.3: the fork's `string[]`.
        let i: Image = serde_json::from_str(
            r#"{"uid":"u1","status":"completed","files":["https://cdn.x/a.JPEG?x=1","ftp://no","https://cdn.x/b"],"width":300,"height":250.4}"#,
        )
        .unwrap();
        let u = to_update("u1", &i);
        let got: Vec<(&str, &str, u32)> = u
            .outputs
            .iter()
            .map(|o| (o.format.as_str(), o.mime_type.as_str(), o.height))
            .collect();
        assert_eq!(
            got,
            vec![
                ("jpg", "image/jpeg", 250),
                ("", "application/octet-stream", 250)
            ]
        );
        // Wrong types never fail the parse.
        let i: Image =
            serde_json::from_str(r#"{"uid":5,"status":["x"],"files":"nope","width":-1}"#).unwrap();
        assert!(i.uid.is_none());
        assert_eq!(to_update("u", &i).state, RemoteState::Failed);
    }

    #[test]
    fn failures_and_unknown_statuses_are_terminal() {
        let i: Image = serde_json::from_str(
            r#"{"uid":"u1","status":"failed","error":"Could not load image layer photo","files":{}}"#,
        )
        .unwrap();
        let u = to_update("u1", &i);
        assert_eq!(u.state, RemoteState::Failed);
        let e = u.error.unwrap();
        assert_eq!(e.code, "PROVIDER_JOB_FAILED");
        assert_eq!(e.message, "Could not load image layer photo");
        for body in [
            r#"{"uid":"u1","status":"completed","files":{}}"#,
            r#"{"uid":"u1","status":"rendering"}"#,
            r#"{"uid":"u1"}"#,
        ] {
            let i: Image = serde_json::from_str(body).unwrap();
            let u = to_update("u1", &i);
            assert_eq!(u.state, RemoteState::Failed, "{body}");
            assert!(u.error.is_some());
        }
        let batch: Image = serde_json::from_str(
            r#"{"uid":"b1","type":"images","status":"completed","self":"https://api.bannerbear.com/v5/batches/b1"}"#,
        )
        .unwrap();
        assert!(!batch.is_image());
    }

    #[test]
    fn error_bodies_yield_their_message() {
        let t = |s: &str| serde_json::from_str::<ErrorBody>(s).unwrap().text();
        assert_eq!(
            t(r#"{"message":"Slow down!"}"#).as_deref(),
            Some("Slow down!")
        );
        assert_eq!(t(r#"{"error":"bad"}"#).as_deref(), Some("bad"));
        assert_eq!(
            t(r#"{"errors":["a",{"message":"b"},3]}"#).as_deref(),
            Some("a; b")
        );
        assert_eq!(t(r#"{"message":""}"#), None);
    }

    #[test]
    fn create_body_is_the_v5_request() {
        let s = spec::parse(&serde_json::json!({
            "template": "A89wavQyY3Bebk3djP",
            "modifications": {"template": {"transparent": true},
                "objects": [{"name": "headline", "attributes": {"text": "Hi", "font-family": "Inter"}},
                            {"id": "l2", "attributes": {"hidden": true}}]},
            "formats": ["png"], "quality": 90,
        }))
        .unwrap();
        let b = create_body(&s, "adgate_job=job_1");
        assert_eq!(
            b,
            serde_json::json!({
                "template": "A89wavQyY3Bebk3djP",
                "modifications": {"template": {"transparent": true},
                    "objects": [{"name": "headline", "text": "Hi", "font-family": "Inter"},
                                {"id": "l2", "hidden": true}]},
                "formats": ["png"], "quality": 90, "metadata": "adgate_job=job_1",
            })
        );
        let minimal = spec::parse(&serde_json::json!({"template": "T1"})).unwrap();
        assert_eq!(
            serde_json::to_string(&create_body(&minimal, "m")).unwrap(),
            r#"{"metadata":"m","modifications":{"objects":[]},"template":"T1"}"#
        );
    }

    #[test]
    fn timestamps_parse() {
        let t = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_millis());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("2020-02-20T07:59:23.077Z"), Some(1_582_185_563_077));
        assert_eq!(t("2020-02-20T08:59:23.077+01:00"), Some(1_582_185_563_077));
        assert_eq!(t("2000-02-29T00:00:00.000Z"), Some(951_782_400_000));
        for bad in [
            "",
            "2020-02-20",
            "2020-13-01T00:00:00Z",
            "2020-02-20T07:59:23",
            "x020-02-20T07:59:23Z",
            "2020-02-20T07:59:23.Z",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
