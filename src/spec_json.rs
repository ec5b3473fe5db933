//! A `JobSpec`'s provider message → the adapter's spec JSON, read generically from the proto
//! descriptor, so that a new provider needs no conversion code here: the `provider` oneof's
//! field name is the provider's registry name, and its message becomes a JSON object with the
//! proto field names.
//!
//! The mapping, chosen so that adapters see what a caller meant and nothing else:
//! - fields the caller left at their proto3 default (empty string, 0, false, an empty list or
//!   map, an enum's `…_UNSPECIFIED`) are absent, so an adapter applies its documented default;
//! - enum values lose their type prefix and are lowercased (`IMAGE_FORMAT_PNG` → `"png"`);
//! - `google.protobuf.Struct` becomes the JSON object it holds (integral numbers as integers);
//! - non-finite floats and unknown enum numbers are reported as violations at their path,
//!   relative to the provider message, since JSON cannot carry them.

use std::sync::LazyLock;

use adgate_generator::FieldViolation;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value as PValue,
};
use serde_json::{Map, Number, Value};

use crate::convert::struct_to_json;
use crate::pb;

const JOB_SPEC: &str = "adgate.v1.JobSpec";
const PROVIDER_ONEOF: &str = "provider";

static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).ok());

/// The descriptors of `adgate.v1` and its imports (also the command line's JSON mapping).
pub fn descriptor_pool() -> Option<&'static DescriptorPool> {
    POOL.as_ref()
}

fn job_spec_descriptor() -> Option<MessageDescriptor> {
    POOL.as_ref()?.get_message_by_name(JOB_SPEC)
}

/// The provider and job kind a `provider` oneof field names: the field is the provider's
/// registry name (`staticadslab`: its main kind), or that name, an underscore and a kind
/// (`staticadslab_design_template`: kind `design_template`), so that another kind of job at
/// a provider needs no code here either. `None` when no registered provider matches.
pub fn provider_of<'a>(
    field: &str,
    providers: impl IntoIterator<Item = &'a str>,
) -> Option<(String, Option<String>)> {
    providers.into_iter().find_map(|p| {
        if field == p {
            Some((p.to_owned(), None))
        } else {
            field
                .strip_prefix(p)
                .and_then(|rest| rest.strip_prefix('_'))
                .filter(|kind| !kind.is_empty())
                .map(|kind| (p.to_owned(), Some(kind.to_owned())))
        }
    })
}

/// Names of the providers the proto offers (the `provider` oneof's fields), in proto order.
pub fn proto_providers() -> Vec<String> {
    job_spec_descriptor()
        .and_then(|d| d.oneofs().find(|o| o.name() == PROVIDER_ONEOF))
        .map(|o| o.fields().map(|f| f.name().to_owned()).collect())
        .unwrap_or_default()
}

/// The provider a spec targets and its spec JSON, or `None` when no provider is set.
/// Conversion problems are pushed to `out` with paths relative to the provider message.
pub fn provider_spec(spec: &pb::JobSpec, out: &mut Vec<FieldViolation>) -> Option<(String, Value)> {
    let descriptor = job_spec_descriptor()?;
    // Re-encoding costs microseconds per job and keeps the typed API everywhere else.
    let dynamic =
        DynamicMessage::decode(descriptor.clone(), spec.encode_to_vec().as_slice()).ok()?;
    let oneof = descriptor.oneofs().find(|o| o.name() == PROVIDER_ONEOF)?;
    for field in oneof.fields() {
        if dynamic.has_field(&field)
            && let PValue::Message(m) = dynamic.get_field(&field).as_ref()
        {
            return Some((field.name().to_owned(), message_to_json(m, "", out)));
        }
    }
    None
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn message_to_json(m: &DynamicMessage, path: &str, out: &mut Vec<FieldViolation>) -> Value {
    if m.descriptor().full_name() == "google.protobuf.Struct" {
        return match m.transcode_to::<prost_types::Struct>() {
            Ok(s) => struct_to_json(&s, path, out),
            Err(_) => Value::Object(Map::new()),
        };
    }
    let mut o = Map::new();
    for (field, value) in m.fields() {
        let key = field.name().to_owned();
        if let Some(v) = field_to_json(&field, value, &join(path, &key), out) {
            o.insert(key, v);
        }
    }
    Value::Object(o)
}

/// `None` for a value that means "not set".
fn field_to_json(
    field: &FieldDescriptor,
    value: &PValue,
    path: &str,
    out: &mut Vec<FieldViolation>,
) -> Option<Value> {
    match value {
        PValue::List(items) => {
            let list: Vec<Value> = items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| scalar_to_json(&field.kind(), v, &format!("{path}[{i}]"), out))
                .collect();
            (!list.is_empty()).then_some(Value::Array(list))
        }
        PValue::Map(entries) => {
            let value_kind = field
                .kind()
                .as_message()
                .and_then(|entry| entry.map_entry_value_field().kind().into());
            let mut o = Map::new();
            let mut keys: Vec<&MapKey> = entries.keys().collect();
            keys.sort();
            for k in keys {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    other => map_key_string(other),
                };
                let Some(v) = entries.get(k) else { continue };
                let Some(kind) = &value_kind else { continue };
                let v = scalar_to_json(kind, v, &format!("{path}[{key}]"), out)
                    .unwrap_or_else(|| Value::Object(Map::new()));
                o.insert(key, v);
            }
            (!o.is_empty()).then_some(Value::Object(o))
        }
        v => scalar_to_json(&field.kind(), v, path, out),
    }
}

fn map_key_string(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn scalar_to_json(
    kind: &Kind,
    value: &PValue,
    path: &str,
    out: &mut Vec<FieldViolation>,
) -> Option<Value> {
    Some(match value {
        PValue::Bool(b) => Value::Bool(*b),
        PValue::I32(n) => Value::from(*n),
        PValue::I64(n) => Value::from(*n),
        PValue::U32(n) => Value::from(*n),
        PValue::U64(n) => Value::from(*n),
        PValue::F32(f) => finite(f64::from(*f), path, out)?,
        PValue::F64(f) => finite(*f, path, out)?,
        PValue::String(s) => Value::String(s.clone()),
        PValue::Bytes(_) => {
            out.push(FieldViolation::new(
                path.to_owned(),
                "bytes are not accepted in a provider spec",
            ));
            return None;
        }
        PValue::EnumNumber(n) => {
            let Kind::Enum(e) = kind else { return None };
            let Some(v) = e.get_value(*n) else {
                out.push(FieldViolation::new(
                    path.to_owned(),
                    format!("unknown {} value {n}", e.name()),
                ));
                return None;
            };
            let prefix = screaming_snake(e.name()) + "_";
            let name = v.name().strip_prefix(&prefix).unwrap_or(v.name());
            if name == "UNSPECIFIED" {
                return None;
            }
            Value::String(name.to_ascii_lowercase())
        }
        PValue::Message(m) => message_to_json(m, path, out),
        PValue::List(_) | PValue::Map(_) => return None,
    })
}

fn finite(f: f64, path: &str, out: &mut Vec<FieldViolation>) -> Option<Value> {
    match Number::from_f64(f) {
        Some(n) => Some(Value::Number(n)),
        None => {
            out.push(FieldViolation::new(
                path.to_owned(),
                "must be a finite number",
            ));
            None
        }
    }
}

/// `ImageFormat` → `IMAGE_FORMAT` (the buf STANDARD enum value prefix).
fn screaming_snake(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn spec(p: pb::job_spec::Provider) -> pb::JobSpec {
        pb::JobSpec {
            provider: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn the_oneof_field_names_the_provider_and_defaults_are_absent() {
        let mut out = Vec::new();
        let (name, json) = provider_spec(
            &spec(pb::job_spec::Provider::Pictify(pb::PictifyRender {
                template_uid: "tmpl_a".into(),
                format: pb::PictifyFormat::Webp as i32,
                quality: Some(0.5),
                ..Default::default()
            })),
            &mut out,
        )
        .unwrap();
        assert_eq!(name, "pictify");
        assert_eq!(
            json,
            json!({"template_uid": "tmpl_a", "format": "webp", "quality": 0.5})
        );
        assert!(out.is_empty());
        assert!(provider_spec(&pb::JobSpec::default(), &mut out).is_none());
        assert_eq!(screaming_snake("PictifyFormat"), "PICTIFY_FORMAT");
        let names = proto_providers();
        assert!(names.len() >= 3 && names[0] == "staticadslab", "{names:?}");
    }

    #[test]
    fn a_field_names_its_provider_and_kind() {
        let names = ["staticadslab", "pictify"];
        assert_eq!(
            provider_of("staticadslab", names),
            Some(("staticadslab".to_owned(), None))
        );
        assert_eq!(
            provider_of("staticadslab_design_template", names),
            Some((
                "staticadslab".to_owned(),
                Some("design_template".to_owned())
            ))
        );
        assert_eq!(provider_of("staticadslab_", names), None);
        assert_eq!(provider_of("staticadslabx", names), None);
        assert_eq!(provider_of("abyssale", names), None);
        let mut out = Vec::new();
        let (field, json) = provider_spec(
            &spec(pb::job_spec::Provider::StaticadslabDesignTemplate(
                pb::StaticAdsLabDesignTemplate {
                    body: Some(prost_types::Struct {
                        fields: [(
                            "name".to_owned(),
                            prost_types::Value {
                                kind: Some(prost_types::value::Kind::StringValue("spring".into())),
                            },
                        )]
                        .into(),
                    }),
                },
            )),
            &mut out,
        )
        .unwrap();
        assert_eq!(field, "staticadslab_design_template");
        assert_eq!(json, json!({"body": {"name": "spring"}}));
    }

    #[test]
    fn unknown_enums_and_non_finite_numbers_are_violations() {
        let mut out = Vec::new();
        let (_, json) = provider_spec(
            &spec(pb::job_spec::Provider::Pictify(pb::PictifyRender {
                template_uid: "t".into(),
                format: 99,
                quality: Some(f64::NAN),
                ..Default::default()
            })),
            &mut out,
        )
        .unwrap();
        assert_eq!(json, json!({"template_uid": "t"}));
        let paths: Vec<&str> = out.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(paths, ["format", "quality"], "{out:?}");
    }
}
