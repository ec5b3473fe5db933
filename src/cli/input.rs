//! Reading `adgate submit`'s input file into job specs: JSON Lines of JobSpec (the proto JSON
//! mapping), or CSV whose headers are JobSpec paths. CSV cells are typed by the proto field
//! they land in (the descriptor says bool, number, enum, list, Struct …), then the row goes
//! through the same JSON mapping as a JSON line, so both formats mean the same thing.

use std::collections::HashMap;

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Map, Value};

use super::csv;
use super::pbjson;
use crate::pb;

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JobSpec JSON object per line.
    Jsonl,
    /// A header row of JobSpec paths, then one job per row.
    Csv,
}

impl Format {
    pub fn of(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Self::Csv,
            _ => Self::Jsonl,
        }
    }
}

/// `CSV=PATH` of `--column`.
pub fn parse_column(s: &str) -> Result<(String, String), String> {
    let (csv, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected CSV_HEADER=JOBSPEC_PATH, got {s:?}"))?;
    if csv.is_empty() {
        return Err("the CSV header name is empty".to_owned());
    }
    Ok((csv.to_owned(), path.trim().to_owned()))
}

/// One job of the file.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line the job starts on.
    pub line: usize,
    pub spec: pb::JobSpec,
    /// The job's source text, hashed into the request id of its chunk.
    pub raw: String,
}

/// The file's jobs, plus what else decides their meaning (the CSV header and the column
/// mapping), which is hashed into every request id with the rows.
#[derive(Debug)]
pub struct Input {
    pub rows: Vec<Row>,
    pub context: String,
}

/// Every problem in the file, one `line N: …` per entry.
pub type Problems = Vec<String>;

pub fn read(text: &str, format: Format, columns: &[(String, String)]) -> Result<Input, Problems> {
    match format {
        Format::Jsonl => {
            if !columns.is_empty() {
                return Err(vec!["--column applies to CSV input only".to_owned()]);
            }
            read_jsonl(text)
        }
        Format::Csv => read_csv(text, columns),
    }
}

fn read_jsonl(text: &str) -> Result<Input, Problems> {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match pbjson::job_spec_from_str(trimmed) {
            Ok(spec) => rows.push(Row {
                line: i + 1,
                spec,
                raw: trimmed.to_owned(),
            }),
            Err(e) => problems.push(format!("line {}: {}", i + 1, within_line(&e))),
        }
    }
    finish(rows, problems, String::new())
}

/// serde_json says `at line 1 column 75` of the one line it read: keep the column only.
fn within_line(e: &str) -> String {
    match e.rsplit_once(" at line 1 column ") {
        Some((msg, col)) if col.chars().all(|c| c.is_ascii_digit()) => {
            format!("{msg} (column {col})")
        }
        _ => e.to_owned(),
    }
}

fn finish(rows: Vec<Row>, problems: Problems, context: String) -> Result<Input, Problems> {
    if !problems.is_empty() {
        return Err(problems);
    }
    if rows.is_empty() {
        return Err(vec!["no jobs in the file".to_owned()]);
    }
    Ok(Input { rows, context })
}

/// Where a CSV column's cells go.
#[derive(Debug, Clone)]
struct Column {
    segments: Vec<String>,
    leaf: Leaf,
}

/// How a cell's text becomes JSON.
#[derive(Debug, Clone)]
enum Leaf {
    /// A proto field of this kind (`repeated`: a JSON array, or values split on `|`).
    Field { kind: Kind, repeated: bool },
    /// A map or message field as a whole: the cell is a JSON object.
    Object,
    /// Inside a `google.protobuf.Struct`: JSON when the cell parses as JSON, else text.
    Loose,
}

fn read_csv(text: &str, columns: &[(String, String)]) -> Result<Input, Problems> {
    let records = csv::parse(text).map_err(|e| vec![e])?;
    let Some((header, body)) = records.split_first() else {
        return Err(vec!["the CSV file is empty".to_owned()]);
    };
    let mapping: HashMap<&str, &str> = columns
        .iter()
        .map(|(c, p)| (c.as_str(), p.as_str()))
        .collect();
    let mut problems = Vec::new();
    for (csv_name, _) in columns {
        if !header.fields.iter().any(|h| h.trim() == csv_name) {
            problems.push(format!("--column {csv_name}: no such header in the CSV"));
        }
    }
    let spec = match pbjson::descriptor("adgate.v1.JobSpec") {
        Ok(d) => d,
        Err(e) => return Err(vec![e]),
    };
    let mut resolved: Vec<Option<Column>> = Vec::new();
    for name in &header.fields {
        let name = name.trim();
        let path = mapping.get(name).copied().unwrap_or(name);
        if path.is_empty() {
            resolved.push(None);
            continue;
        }
        match resolve(&spec, path) {
            Ok(c) => resolved.push(Some(c)),
            Err(e) => {
                problems.push(format!(
                    "line {}: column {name:?}: {e} (map it with --column '{name}=PATH', or \
                     ignore it with --column '{name}=')",
                    header.line
                ));
                resolved.push(None);
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut rows = Vec::new();
    for record in body {
        if record.fields.len() != resolved.len() {
            problems.push(format!(
                "line {}: {} fields, the header has {}",
                record.line,
                record.fields.len(),
                resolved.len()
            ));
            continue;
        }
        match row_json(&resolved, &header.fields, &record.fields)
            .and_then(pbjson::job_spec_from_value)
        {
            Ok(spec) => rows.push(Row {
                line: record.line,
                spec,
                raw: record.raw.clone(),
            }),
            Err(e) => problems.push(format!("line {}: {e}", record.line)),
        }
    }
    let mut context = header.raw.clone();
    for (c, p) in columns {
        context.push_str(&format!("\n{c}={p}"));
    }
    finish(rows, problems, context)
}

/// The JobSpec JSON of one row; empty cells are left out.
fn row_json(
    columns: &[Option<Column>],
    names: &[String],
    cells: &[String],
) -> Result<Value, String> {
    let mut root = Map::new();
    for ((column, name), cell) in columns.iter().zip(names).zip(cells) {
        let Some(column) = column else { continue };
        if cell.trim().is_empty() {
            continue;
        }
        let value = cell_value(&column.leaf, cell.trim())
            .map_err(|e| format!("column {:?}: {e}", name.trim()))?;
        insert(&mut root, &column.segments, value)
            .map_err(|e| format!("column {:?}: {e}", name.trim()))?;
    }
    Ok(Value::Object(root))
}

fn insert(root: &mut Map<String, Value>, segments: &[String], value: Value) -> Result<(), String> {
    let Some((last, parents)) = segments.split_last() else {
        return Err("empty path".to_owned());
    };
    let mut node = root;
    for s in parents {
        let entry = node
            .entry(s.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        node = entry
            .as_object_mut()
            .ok_or_else(|| format!("{s} is set by another column as a whole"))?;
    }
    if node.insert(last.clone(), value).is_some() {
        return Err(format!("{last} is set by two columns"));
    }
    Ok(())
}

/// Follow a dotted path through the JobSpec descriptor.
fn resolve(spec: &MessageDescriptor, path: &str) -> Result<Column, String> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segments.iter().any(String::is_empty) {
        return Err(format!("{path:?} is not a dotted path"));
    }
    let mut message = spec.clone();
    for (i, seg) in segments.iter().enumerate() {
        let field = message
            .get_field_by_name(seg)
            .or_else(|| message.get_field_by_json_name(seg))
            .ok_or_else(|| format!("{} has no field {seg:?}", message.full_name()))?;
        let last = i + 1 == segments.len();
        let kind = field.kind();
        if field.is_map() {
            return match segments.len() - i - 1 {
                0 => Ok(Column {
                    segments,
                    leaf: Leaf::Object,
                }),
                1 => {
                    let value_kind = kind
                        .as_message()
                        .map(|entry| entry.map_entry_value_field().kind())
                        .ok_or_else(|| format!("{seg} is not a map"))?;
                    Ok(Column {
                        segments,
                        leaf: Leaf::Field {
                            kind: value_kind,
                            repeated: false,
                        },
                    })
                }
                _ => Err(format!("{seg}.KEY is as deep as a map goes")),
            };
        }
        if let Kind::Message(m) = &kind {
            let name = m.full_name();
            if name == "google.protobuf.Struct" || name == "google.protobuf.Value" {
                // Below a Struct the path names JSON keys the descriptor knows nothing of.
                let leaf = if last && name == "google.protobuf.Struct" {
                    Leaf::Object
                } else {
                    Leaf::Loose
                };
                return Ok(Column { segments, leaf });
            }
            if name == "google.protobuf.Duration" || name == "google.protobuf.Timestamp" {
                if !last {
                    return Err(format!("{seg} is a {name}, written as one value"));
                }
                return Ok(Column {
                    segments,
                    leaf: Leaf::Field {
                        kind: Kind::String,
                        repeated: false,
                    },
                });
            }
            if field.is_list() {
                if !last {
                    return Err(format!("{seg} is a list, written as one JSON array"));
                }
                return Ok(Column {
                    segments,
                    leaf: Leaf::Field {
                        kind,
                        repeated: true,
                    },
                });
            }
            if last {
                return Ok(Column {
                    segments,
                    leaf: Leaf::Object,
                });
            }
            message = m.clone();
            continue;
        }
        if !last {
            return Err(format!("{seg} is not a message"));
        }
        return Ok(Column {
            segments,
            leaf: Leaf::Field {
                kind,
                repeated: field.is_list(),
            },
        });
    }
    Err(format!("{path:?} names no field"))
}

fn cell_value(leaf: &Leaf, cell: &str) -> Result<Value, String> {
    match leaf {
        Leaf::Object => match serde_json::from_str::<Value>(cell) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(format!("expected a JSON object, got {cell:?}")),
        },
        Leaf::Loose => Ok(loose(cell)),
        Leaf::Field {
            kind,
            repeated: true,
        } => {
            if cell.starts_with('[') {
                return serde_json::from_str(cell).map_err(|e| format!("a JSON array: {e}"));
            }
            cell.split('|')
                .map(|part| scalar(kind, part.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Leaf::Field { kind, .. } => scalar(kind, cell),
    }
}

/// JSON numbers, booleans, arrays and objects as such; anything else as text.
fn loose(cell: &str) -> Value {
    match serde_json::from_str::<Value>(cell) {
        Ok(v) if !v.is_string() => v,
        _ => Value::String(cell.to_owned()),
    }
}

fn scalar(kind: &Kind, cell: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Bool => match cell.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            _ => return Err(format!("expected true or false, got {cell:?}")),
        },
        Kind::Double | Kind::Float => cell
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, got {cell:?}"))?,
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64 => Value::from(
            cell.parse::<i64>()
                .map_err(|_| format!("expected an integer, got {cell:?}"))?,
        ),
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => Value::from(
            cell.parse::<u64>()
                .map_err(|_| format!("expected a non-negative integer, got {cell:?}"))?,
        ),
        Kind::Enum(e) => {
            if e.get_value_by_name(cell).is_some() {
                Value::String(cell.to_owned())
            } else {
                // `webp` for `PICTIFY_FORMAT_WEBP`: the prefix is the zero value's name minus
                // `UNSPECIFIED`.
                let prefix = e
                    .default_value()
                    .name()
                    .strip_suffix("UNSPECIFIED")
                    .unwrap_or("")
                    .to_owned();
                let full = format!("{prefix}{}", cell.to_ascii_uppercase());
                if e.get_value_by_name(&full).is_none() {
                    return Err(format!("{cell:?} is not a {} value", e.name()));
                }
                Value::String(full)
            }
        }
        Kind::Message(_) => loose(cell),
        Kind::String | Kind::Bytes => Value::String(cell.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn csv_headers_are_paths_and_cells_are_typed() {
        let text = "client_ref,labels.campaign,Template,pictify.variables.title,pictify.variables.discount,pictify.format,pictify.concurrency\n\
                    card-1,spring,tmpl_a,Spring sale,25,webp,3\n";
        let cols = [("Template".to_owned(), "pictify.template_uid".to_owned())];
        let input = read(text, Format::Csv, &cols).unwrap();
        assert_eq!(input.rows.len(), 1);
        let row = &input.rows[0];
        assert_eq!(row.line, 2);
        assert_eq!(row.spec.client_ref, "card-1");
        assert_eq!(row.spec.labels["campaign"], "spring");
        let Some(pb::job_spec::Provider::Pictify(p)) = &row.spec.provider else {
            panic!("not pictify")
        };
        assert_eq!(p.template_uid, "tmpl_a");
        assert_eq!(p.format, pb::PictifyFormat::Webp as i32);
        assert_eq!(p.concurrency, Some(3));
        let vars = &p.variables.as_ref().unwrap().fields;
        assert_eq!(
            vars["discount"].kind,
            Some(prost_types::value::Kind::NumberValue(25.0))
        );
        assert!(input.context.contains("Template=pictify.template_uid"));
    }

    #[test]
    fn lists_split_on_bars_and_empty_cells_stay_unset() {
        let text = "abyssale.design_id,abyssale.format_names,staticadslab.brand_id\n\
                    8c3d2a8e-5b1f-4c1e-9d55-0f2e4b6a7c10,facebook-feed|iab-medium,\n";
        let input = read(text, Format::Csv, &[]).unwrap();
        let Some(pb::job_spec::Provider::Abyssale(a)) = &input.rows[0].spec.provider else {
            panic!("not abyssale")
        };
        assert_eq!(a.format_names, ["facebook-feed", "iab-medium"]);
    }

    #[test]
    fn unknown_headers_and_bad_cells_name_their_line() {
        let e = read("client_ref,Brand\nx,y\n", Format::Csv, &[]).unwrap_err();
        assert!(
            e[0].contains("line 1") && e[0].contains("--column 'Brand="),
            "{e:?}"
        );
        let e = read(
            "client_ref,staticadslab.editable\nx,maybe\n",
            Format::Csv,
            &[],
        )
        .unwrap_err();
        assert!(
            e[0].starts_with("line 2:") && e[0].contains("true or false"),
            "{e:?}"
        );
        let ignored = read(
            "client_ref,notes,pictify.template_uid\nx,hello,t\n",
            Format::Csv,
            &[("notes".to_owned(), String::new())],
        )
        .unwrap();
        assert_eq!(ignored.rows.len(), 1);
    }

    #[test]
    fn jsonl_errors_name_their_line_and_blank_lines_are_skipped() {
        let ok = read(
            "{\"client_ref\": \"a\", \"pictify\": {\"template_uid\": \"t\"}}\n\n{\"clientRef\": \"b\"}\n",
            Format::Jsonl,
            &[],
        )
        .unwrap();
        assert_eq!(ok.rows.len(), 2);
        assert_eq!(ok.rows[1].line, 3);
        let e = read(
            "{\"client_ref\": \"a\"}\n{\"nope\": 1}\n",
            Format::Jsonl,
            &[],
        )
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("line 2:"), "{e:?}");
    }
}
