//! A small RFC 4180 reader (quoted fields, doubled quotes, newlines inside quotes, CRLF or LF)
//! for the command line's CSV input. Each record keeps its first line number and its source
//! text, so errors name lines and request ids can hash exactly what was read.

/// One CSV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based line number where the record starts.
    pub line: usize,
    pub fields: Vec<String>,
    /// The record's text as in the file (without its line ending).
    pub raw: String,
}

/// Every record of `text`. Blank lines are skipped. A quote left open is an error naming
/// the line it opened on.
pub fn parse(text: &str) -> Result<Vec<Record>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut quote_line = 0;
    let mut line = 1;
    let mut start_line = 1;
    let mut start_byte = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek().is_some_and(|(_, n)| *n == '"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => {
                in_quotes = true;
                quote_line = line;
            }
            ',' => fields.push(std::mem::take(&mut field)),
            '\r' if chars.peek().is_some_and(|(_, n)| *n == '\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                push(&mut records, &mut fields, start_line, &text[start_byte..i]);
                line += 1;
                start_line = line;
                start_byte = i + 1;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(format!("line {quote_line}: a quoted field is never closed"));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        push(&mut records, &mut fields, start_line, &text[start_byte..]);
    }
    Ok(records)
}

fn push(records: &mut Vec<Record>, fields: &mut Vec<String>, line: usize, raw: &str) {
    let fields = std::mem::take(fields);
    if fields.len() == 1 && fields[0].trim().is_empty() {
        return;
    }
    records.push(Record {
        line,
        fields,
        raw: raw.trim_end_matches('\r').to_owned(),
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn quotes_commas_newlines_and_crlf() {
        let r = parse("a,b,c\r\n\"x, y\",\"say \"\"hi\"\"\",\n\n\"two\nlines\",2,3").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].fields, ["a", "b", "c"]);
        assert_eq!(r[0].raw, "a,b,c");
        assert_eq!(r[1].fields, ["x, y", "say \"hi\"", ""]);
        assert_eq!(r[1].line, 2);
        assert_eq!(r[2].fields, ["two\nlines", "2", "3"]);
        assert_eq!(r[2].line, 4);
    }

    #[test]
    fn an_open_quote_names_its_line() {
        let e = parse("a\n\"b,c\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }
}
