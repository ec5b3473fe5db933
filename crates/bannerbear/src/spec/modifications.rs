//! `modifications` of a v5 image (`{template, objects}` [V5-SPEC]) and their validation, split
//! from [`super`] to keep files short.

use adgate_generator::FieldViolation;
use serde_json::{Map, Value};

use super::{Canvas, DIMENSIONS, Layer, MAX_OBJECTS, Object, bad, bool_field};

/// `[A-Za-z0-9]+(-[A-Za-z0-9]+)*`: v5 attribute names are kebab-case (`font-family`) with a
/// few camelCase ones (`rotateX`, `skewY`) [V5-SPEC]@a9ca682; never snake_case.
fn is_attribute_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('-')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

pub(super) fn parse(
    m: &Map<String, Value>,
    v: &mut Vec<FieldViolation>,
) -> (Option<Canvas>, Vec<Object>) {
    for key in m.keys() {
        if key != "template" && key != "objects" {
            bad(v, format!("modifications.{key}"), "unknown field");
        }
    }
    let canvas = match m.get("template") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) => {
            let mut c = Canvas::default();
            for key in t.keys() {
                if !["width", "height", "transparent"].contains(&key.as_str()) {
                    bad(v, format!("modifications.template.{key}"), "unknown field");
                }
            }
            for (field, slot) in [("width", &mut c.width), ("height", &mut c.height)] {
                match t.get(field) {
                    None | Some(Value::Null) => {}
                    Some(n) => match n.as_u64().filter(|x| DIMENSIONS.contains(x)) {
                        Some(x) => *slot = u32::try_from(x).ok(),
                        None => bad(
                            v,
                            format!("modifications.template.{field}"),
                            format!(
                                "must be an integer from {} to {} (pixels)",
                                DIMENSIONS.start(),
                                DIMENSIONS.end()
                            ),
                        ),
                    },
                }
            }
            c.transparent = bool_field(t, "transparent", "modifications.template.transparent", v);
            Some(c)
        }
        Some(_) => {
            bad(
                v,
                "modifications.template",
                "must be an object {width, height, transparent}",
            );
            None
        }
    };
    let mut objects = Vec::new();
    match m.get("objects") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            if items.len() > MAX_OBJECTS {
                bad(
                    v,
                    "modifications.objects",
                    format!("at most {MAX_OBJECTS} objects"),
                );
            }
            for (i, item) in items.iter().enumerate() {
                if let Some(o) = object(item, &format!("modifications.objects[{i}]"), v) {
                    objects.push(o);
                }
            }
        }
        Some(_) => bad(v, "modifications.objects", "must be an array of objects"),
    }
    (canvas, objects)
}

fn layer_ref(
    o: &Map<String, Value>,
    field: &str,
    path: &str,
    v: &mut Vec<FieldViolation>,
) -> Option<String> {
    match o.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && !s.chars().any(char::is_control) => {
            Some(s.clone())
        }
        Some(_) => {
            bad(
                v,
                format!("{path}.{field}"),
                "must be a non-empty string without control characters",
            );
            None
        }
    }
}

fn object(item: &Value, path: &str, v: &mut Vec<FieldViolation>) -> Option<Object> {
    let Some(o) = item.as_object() else {
        bad(v, path, "must be an object {name|id, attributes}");
        return None;
    };
    let before = v.len();
    for key in o.keys() {
        if !["name", "id", "attributes"].contains(&key.as_str()) {
            bad(
                v,
                format!("{path}.{key}"),
                "unknown field (layer attributes go in attributes)",
            );
        }
    }
    let name = layer_ref(o, "name", path, v);
    let id = layer_ref(o, "id", path, v);
    let layer = match (name, id) {
        (Some(n), None) => Some(Layer::Name(n)),
        (None, Some(i)) => Some(Layer::Id(i)),
        (Some(_), Some(_)) => {
            bad(v, path, "name a layer by name or by id, not both");
            None
        }
        (None, None) => {
            if v.len() == before {
                bad(v, path, "must name a layer by name or id");
            }
            None
        }
    };
    let mut attributes = Map::new();
    match o.get("attributes") {
        None | Some(Value::Null) => {}
        Some(Value::Object(a)) => {
            for (key, value) in a {
                let at = format!("{path}.attributes.{key}");
                if key == "name" || key == "id" {
                    bad(v, at, "is the layer target: set it beside attributes");
                } else if key == "image_url" || key == "image-url" {
                    // CONFLICT §16.2: SDK READMEs send `image_url`, the spec says
                    // `background-image`; we send what the spec defines.
                    bad(v, at, "is background-image in Bannerbear v5");
                } else if !is_attribute_name(key) {
                    bad(
                        v,
                        at,
                        "must be a kebab-case v5 attribute name (e.g. font-family)",
                    );
                } else if value.is_object() || value.is_array() {
                    // Every v5 attribute is a string, number, boolean (or null) [V5-SPEC].
                    bad(v, at, "must be a string, number, boolean or null");
                } else {
                    attributes.insert(key.clone(), value.clone());
                }
            }
        }
        Some(_) => bad(
            v,
            format!("{path}.attributes"),
            "must be an object of attribute values",
        ),
    }
    layer.map(|layer| Object { layer, attributes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names() {
        for ok in ["font-family", "text", "ai-prompt", "rotateX"] {
            assert!(is_attribute_name(ok), "{ok}");
        }
        for bad in ["font--family", "-x", "font_family", "a.b", ""] {
            assert!(!is_attribute_name(bad), "{bad}");
        }
    }
}
