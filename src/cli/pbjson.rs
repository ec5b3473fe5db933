//! The proto JSON mapping for the command line, read from the gateway's own descriptors (the
//! pool `spec_json` uses), so the CLI accepts and prints exactly what grpcurl does.

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;

use crate::pb;
use crate::spec_json::descriptor_pool;

/// The descriptor of a message by full name (`adgate.v1.JobSpec`).
pub fn descriptor(full_name: &str) -> Result<MessageDescriptor, String> {
    descriptor_pool()
        .and_then(|p| p.get_message_by_name(full_name))
        .ok_or_else(|| format!("no descriptor for {full_name} in this build"))
}

/// One JobSpec from its JSON text (field names as in the proto or in lowerCamelCase, enums
/// by name, durations as `"30s"`). Unknown fields are errors, so typos do not pass silently.
pub fn job_spec_from_str(text: &str) -> Result<pb::JobSpec, String> {
    let desc = descriptor("adgate.v1.JobSpec")?;
    let mut de = serde_json::Deserializer::from_str(text);
    let dynamic =
        DynamicMessage::deserialize_with_options(desc, &mut de, &DeserializeOptions::new())
            .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    dynamic.transcode_to().map_err(|e| e.to_string())
}

/// One JobSpec from a JSON value (the CSV reader builds one per row).
pub fn job_spec_from_value(value: Value) -> Result<pb::JobSpec, String> {
    let desc = descriptor("adgate.v1.JobSpec")?;
    let dynamic = DynamicMessage::deserialize_with_options(desc, value, &DeserializeOptions::new())
        .map_err(|e| e.to_string())?;
    dynamic.transcode_to().map_err(|e| e.to_string())
}

/// A message in the proto JSON mapping (lowerCamelCase names, enums by name, defaults
/// omitted), as grpcurl prints it. `Value::Null` if the message cannot be re-read, which only a
/// build whose descriptors disagree with its types could cause.
pub fn to_json<M: Message>(message: &M, full_name: &str) -> Value {
    let Ok(desc) = descriptor(full_name) else {
        return Value::Null;
    };
    let Ok(dynamic) = DynamicMessage::decode(desc, message.encode_to_vec().as_slice()) else {
        return Value::Null;
    };
    dynamic
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new().skip_default_fields(true),
        )
        .unwrap_or(Value::Null)
}

pub fn job_json(job: &pb::Job) -> Value {
    to_json(job, "adgate.v1.Job")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn specs_read_both_name_styles_enums_and_durations() {
        let a = job_spec_from_str(
            r#"{"client_ref": "a", "deadline": "30s", "pictify": {"templateUid": "t", "format": "PICTIFY_FORMAT_WEBP", "variables": {"n": 2}}}"#,
        )
        .unwrap();
        assert_eq!(a.client_ref, "a");
        assert_eq!(a.deadline.unwrap().seconds, 30);
        let Some(pb::job_spec::Provider::Pictify(p)) = a.provider else {
            panic!("not pictify")
        };
        assert_eq!(p.template_uid, "t");
        assert_eq!(p.format, pb::PictifyFormat::Webp as i32);
        assert!(p.variables.unwrap().fields.contains_key("n"));
    }

    #[test]
    fn unknown_fields_and_trailing_text_are_errors() {
        let e =
            job_spec_from_str(r#"{"pictify": {"template_uid": "t", "colour": 1}}"#).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        assert!(job_spec_from_str(r#"{"client_ref": "a"} x"#).is_err());
    }

    #[test]
    fn jobs_print_as_proto_json() {
        let job = pb::Job {
            id: "job_1".into(),
            state: pb::JobState::Completed as i32,
            client_ref: "r".into(),
            ..Default::default()
        };
        let v = job_json(&job);
        assert_eq!(v["id"], "job_1");
        assert_eq!(v["state"], "JOB_STATE_COMPLETED");
        assert_eq!(v["clientRef"], "r");
        assert!(v.get("batchId").is_none());
    }
}
