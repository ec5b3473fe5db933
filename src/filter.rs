//! The AIP-160 subset that ListJobs and ListBatches accept: comparisons joined by `AND`
//! (case-sensitive), turned into the store's typed filters. Anything outside the subset is an
//! `INVALID_ARGUMENT` naming the offending term, so a caller never gets a silently widened
//! (or narrowed) result for a filter the gateway did not understand.
//!
//! ```text
//! filter     = term { "AND" term }
//! term       = field op value
//! field      = "state" | "provider" | "batch_id" | "caller" | "client_ref"
//!            | "labels." key | "create_time"
//! value      = "\"" string "\"" | bare-word
//! ```

use adgate_engine::{BatchFilter, JobFilter};
use adgate_generator::JobState;

use crate::errors::{ApiError, Violation};

/// Longest filter accepted: a bound on parsing work and on what an error message repeats.
pub const MAX_FILTER_LEN: usize = 2_048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word: a field name, a keyword or an unquoted value.
    Word(String),
    Quoted(String),
    Op(Op),
}

/// One `field op value` comparison, with its source text for error messages.
#[derive(Debug)]
struct Term {
    field: String,
    op: Op,
    value: Token,
    text: String,
}

fn invalid(description: String) -> ApiError {
    ApiError::InvalidRequest(vec![Violation::new("filter", description)])
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.:/".contains(c)
}

fn tokenize(text: &str) -> Result<Vec<Token>, ApiError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' {
            chars.next();
            let mut s = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, e @ ('"' | '\\'))) => s.push(e),
                        _ => {
                            return Err(invalid(format!(
                                "only \\\" and \\\\ may be escaped in a string, at `{}`",
                                &text[start..]
                            )));
                        }
                    },
                    c => s.push(c),
                }
            }
            if !closed {
                return Err(invalid(format!("unterminated string `{}`", &text[start..])));
            }
            out.push(Token::Quoted(s));
            continue;
        }
        if "=!<>".contains(c) {
            chars.next();
            let two = chars.peek().is_some_and(|&(_, n)| n == '=');
            if two {
                chars.next();
            }
            let op = match (c, two) {
                ('=', false) => Op::Eq,
                ('!', true) => Op::Ne,
                ('<', false) => Op::Lt,
                ('<', true) => Op::Le,
                ('>', false) => Op::Gt,
                ('>', true) => Op::Ge,
                _ => {
                    return Err(invalid(format!("unknown operator at `{}`", &text[start..])));
                }
            };
            out.push(Token::Op(op));
            continue;
        }
        if word_char(c) {
            let mut s = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if !word_char(c) {
                    break;
                }
                s.push(c);
                chars.next();
            }
            out.push(Token::Word(s));
            continue;
        }
        return Err(invalid(format!("unexpected {c:?} at `{}`", &text[start..])));
    }
    Ok(out)
}

fn show(t: &Token) -> String {
    match t {
        Token::Word(w) => w.clone(),
        Token::Quoted(q) => format!("{q:?}"),
        Token::Op(op) => match op {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
        .to_owned(),
    }
}

/// Splits the filter into terms: `field op value` separated by `AND`.
fn terms(text: &str) -> Result<Vec<Term>, ApiError> {
    if text.len() > MAX_FILTER_LEN {
        return Err(invalid(format!("at most {MAX_FILTER_LEN} bytes")));
    }
    let tokens = tokenize(text)?;
    let mut out = Vec::new();
    let mut rest = tokens.as_slice();
    while !rest.is_empty() {
        let (term, tail) = rest.split_at(rest.len().min(3));
        let text = term.iter().map(show).collect::<Vec<_>>().join(" ");
        let parsed = match term {
            [
                Token::Word(field),
                Token::Op(op),
                value @ (Token::Word(_) | Token::Quoted(_)),
            ] => Term {
                field: field.clone(),
                op: *op,
                value: value.clone(),
                text,
            },
            _ => {
                return Err(invalid(format!(
                    "expected `field operator value`, got `{text}`"
                )));
            }
        };
        out.push(parsed);
        rest = match tail {
            [] => tail,
            [Token::Word(and), more @ ..] if and == "AND" && !more.is_empty() => more,
            [other, ..] => {
                return Err(invalid(format!(
                    "expected AND after `{}`, got `{}` (only AND joins terms)",
                    out.last().map_or("", |t: &Term| t.text.as_str()),
                    show(other)
                )));
            }
        };
    }
    Ok(out)
}

fn string_value(t: &Term) -> Result<String, ApiError> {
    match &t.value {
        Token::Quoted(s) => Ok(s.clone()),
        _ => Err(invalid(format!(
            "`{}`: the value must be a quoted string",
            t.text
        ))),
    }
}

fn only_eq(t: &Term) -> Result<(), ApiError> {
    if t.op == Op::Eq {
        Ok(())
    } else {
        Err(invalid(format!("`{}`: {} takes only =", t.text, t.field)))
    }
}

fn state_value(t: &Term) -> Result<JobState, ApiError> {
    let raw = match &t.value {
        Token::Word(w) | Token::Quoted(w) => w.as_str(),
        Token::Op(_) => "",
    };
    let name = raw.strip_prefix("JOB_STATE_").unwrap_or(raw);
    match name {
        "QUEUED" => Ok(JobState::Queued),
        "PROCESSING" => Ok(JobState::Processing),
        "COMPLETED" => Ok(JobState::Completed),
        "FAILED" => Ok(JobState::Failed),
        "CANCELLED" => Ok(JobState::Cancelled),
        _ => Err(invalid(format!(
            "`{}`: state is one of QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED",
            t.text
        ))),
    }
}

/// Applies a `create_time` comparison to an inclusive range in Unix milliseconds (stored
/// times are whole milliseconds, so `> t` starts at the first millisecond after `t`).
fn time_bound(t: &Term, from: &mut Option<i64>, to: &mut Option<i64>) -> Result<(), ApiError> {
    let text = string_value(t)?;
    let ts: prost_types::Timestamp = text.parse().map_err(|_| {
        invalid(format!(
            "`{}`: create_time takes an RFC 3339 time, e.g. \"2026-01-31T12:00:00Z\"",
            t.text
        ))
    })?;
    let floor = ts.seconds.saturating_mul(1000) + i64::from(ts.nanos) / 1_000_000;
    let exact = ts.nanos % 1_000_000 == 0;
    let ceil = if exact { floor } else { floor + 1 };
    let (lower, upper) = match t.op {
        Op::Ge => (Some(ceil), None),
        Op::Gt => (Some(floor + 1), None),
        Op::Le => (None, Some(floor)),
        Op::Lt => (None, Some(ceil - 1)),
        Op::Eq | Op::Ne => {
            return Err(invalid(format!(
                "`{}`: create_time takes <, <=, > or >=",
                t.text
            )));
        }
    };
    if let Some(l) = lower {
        *from = Some(from.map_or(l, |f| f.max(l)));
    }
    if let Some(u) = upper {
        *to = Some(to.map_or(u, |x| x.min(u)));
    }
    Ok(())
}

/// The label key of a `labels.<key>` field. Keys are bare words (letters, digits, `_-.:/`), so
/// one never holds the `"` or `\` that SQLite's quoted JSON path could not express.
fn label_key(t: &Term) -> Result<Option<String>, ApiError> {
    let Some(key) = t.field.strip_prefix("labels.") else {
        return Ok(None);
    };
    if key.is_empty() {
        return Err(invalid(format!("`{}`: labels.<key> needs a key", t.text)));
    }
    Ok(Some(key.to_owned()))
}

fn unknown(t: &Term, fields: &str) -> ApiError {
    invalid(format!(
        "`{}`: unknown field {:?}; filterable fields are {fields}",
        t.text, t.field
    ))
}

/// Parses a ListJobs filter. Empty (or blank) matches every job.
pub fn job_filter(text: &str) -> Result<JobFilter, ApiError> {
    let mut f = JobFilter::default();
    for t in terms(text)? {
        match t.field.as_str() {
            "state" => {
                let s = state_value(&t)?;
                match t.op {
                    Op::Eq => f.states.push(s),
                    Op::Ne => f.not_states.push(s),
                    _ => {
                        return Err(invalid(format!("`{}`: state takes = or !=", t.text)));
                    }
                }
            }
            "provider" | "batch_id" | "caller" | "client_ref" => {
                only_eq(&t)?;
                let v = string_value(&t)?;
                match t.field.as_str() {
                    "provider" => f.providers.push(v),
                    "batch_id" => f.batch_ids.push(v),
                    "caller" => f.callers.push(v),
                    _ => f.client_refs.push(v),
                }
            }
            "create_time" => time_bound(&t, &mut f.created_from_ms, &mut f.created_to_ms)?,
            _ => match label_key(&t)? {
                Some(key) => {
                    only_eq(&t)?;
                    f.labels.push((key, string_value(&t)?));
                }
                None => {
                    return Err(unknown(
                        &t,
                        "state, provider, batch_id, caller, client_ref, labels.<key>, \
                         create_time",
                    ));
                }
            },
        }
    }
    Ok(f)
}

/// Parses a ListBatches filter (`caller`, `create_time`). Empty matches every batch.
pub fn batch_filter(text: &str) -> Result<BatchFilter, ApiError> {
    let mut f = BatchFilter::default();
    for t in terms(text)? {
        match t.field.as_str() {
            "caller" => {
                only_eq(&t)?;
                f.callers.push(string_value(&t)?);
            }
            "create_time" => time_bound(&t, &mut f.created_from_ms, &mut f.created_to_ms)?,
            _ => return Err(unknown(&t, "caller, create_time")),
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The description of the one `filter` violation `r` fails with.
    fn err<T: std::fmt::Debug>(r: Result<T, ApiError>) -> String {
        match r.expect_err("should be refused") {
            ApiError::InvalidRequest(v) if v.len() == 1 && v[0].field == "filter" => {
                v[0].description.clone()
            }
            other => panic!("not a filter violation: {other:?}"),
        }
    }

    const T: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn every_job_field() {
        let f = job_filter(
            r#"state = FAILED AND state != "JOB_STATE_QUEUED" AND provider = "pictify"
               AND batch_id = "bat_1" AND caller = "team-a" AND client_ref = "r \"1\""
               AND labels.campaign = "spring" AND labels.a.b-c = "x"
               AND create_time >= "2026-01-01T00:00:00Z" AND create_time < "2026-01-02T00:00:00Z""#,
        )
        .unwrap();
        assert_eq!(f.states, vec![JobState::Failed]);
        assert_eq!(f.not_states, vec![JobState::Queued]);
        assert_eq!(f.providers, vec!["pictify"]);
        assert_eq!(f.batch_ids, vec!["bat_1"]);
        assert_eq!(f.callers, vec!["team-a"]);
        assert_eq!(f.client_refs, vec!["r \"1\""]);
        assert_eq!(
            f.labels,
            vec![
                ("campaign".to_owned(), "spring".to_owned()),
                ("a.b-c".to_owned(), "x".to_owned())
            ]
        );
        assert_eq!(f.created_from_ms, Some(T));
        assert_eq!(f.created_to_ms, Some(T + 86_400_000 - 1));
        assert_eq!(job_filter("  ").unwrap(), JobFilter::default());
    }

    #[test]
    fn time_bounds_are_inclusive_milliseconds_and_intersect() {
        let f = job_filter(
            r#"create_time > "2026-01-01T00:00:00Z" AND create_time > "2026-01-01T00:00:00.0005Z"
               AND create_time <= "2026-01-01T01:00:00+01:00""#,
        )
        .unwrap();
        // > t.0005 starts at t + 1 ms; both lower bounds keep the larger.
        assert_eq!(f.created_from_ms, Some(T + 1));
        assert_eq!(f.created_to_ms, Some(T));
        let f = job_filter(r#"create_time < "2026-01-01T00:00:00.0005Z""#).unwrap();
        assert_eq!(f.created_to_ms, Some(T));
        let f = job_filter(r#"create_time >= "2026-01-01T00:00:00.0005Z""#).unwrap();
        assert_eq!(f.created_from_ms, Some(T + 1));
    }

    #[test]
    fn refusals_name_the_offending_term() {
        let cases = [
            ("colour = \"red\"", "unknown field \"colour\""),
            ("state = DONE", "state = DONE"),
            ("state < FAILED", "state takes = or !="),
            ("provider = pictify", "must be a quoted string"),
            ("provider != \"pictify\"", "provider takes only ="),
            ("labels.x > \"1\"", "labels.x takes only ="),
            ("state = FAILED and provider = \"x\"", "got `and`"),
            ("state = FAILED OR state = QUEUED", "got `OR`"),
            ("state = FAILED AND", "expected AND"),
            ("state =", "expected `field operator value`"),
            ("create_time > \"yesterday\"", "RFC 3339"),
            (
                "create_time = \"2026-01-01T00:00:00Z\"",
                "takes <, <=, > or >=",
            ),
            ("provider = \"pictify", "unterminated string"),
            ("state == FAILED", "unknown operator at `== FAILED`"),
            ("NOT state = FAILED", "expected"),
            ("labels. = \"x\"", "needs a key"),
            ("(state = FAILED)", "unexpected '('"),
        ];
        for (filter, want) in cases {
            let got = err(job_filter(filter));
            assert!(got.contains(want), "{filter}: {got}");
        }
        assert!(err(job_filter(&"a".repeat(MAX_FILTER_LEN + 1))).contains("at most"));
    }

    #[test]
    fn batch_filters_take_caller_and_create_time_only() {
        let f =
            batch_filter(r#"caller = "team-b" AND create_time <= "2026-01-01T00:00:00Z""#).unwrap();
        assert_eq!(f.callers, vec!["team-b"]);
        assert_eq!(f.created_to_ms, Some(T));
        assert!(err(batch_filter("state = FAILED")).contains("caller, create_time"));
    }
}
