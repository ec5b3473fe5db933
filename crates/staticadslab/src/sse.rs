//! Server-sent events: a pure, incremental parser (bytes in, events out) and the translation
//! of StaticAdsLab's events (`started`, `progress`, `complete`, `error`, `heartbeat` [SEED-1])
//! into updates.
//!
//! The parser follows the WHATWG event-stream rules: lines end in `\n`, `\r\n` or `\r` (also
//! when split across chunks), `:` starts a comment, one optional space after the colon is
//! dropped, several `data:` lines join with `\n`, and a blank line dispatches the event.

use adgate_generator::{ProviderUpdate, UpdateTarget};

use crate::wire::{WireJobError, WireProgress};

/// A line longer than this is garbage, not an event; the parser drops it.
const MAX_LINE: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` when the event had no `event:` field.
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Incremental event-stream parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// The previous chunk ended in `\r`: a leading `\n` in the next one belongs to it.
    skip_lf: bool,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    oversized: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.skip_lf = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    if std::mem::take(&mut self.oversized) {
                        continue;
                    }
                    if let Some(ev) = self.line(&line) {
                        out.push(ev);
                    }
                }
                _ if self.oversized => {}
                _ => {
                    self.buf.push(b);
                    if self.buf.len() > MAX_LINE {
                        self.buf.clear();
                        self.oversized = true;
                    }
                }
            }
        }
        out
    }

    fn line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None; // comment
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                let d = self.data.get_or_insert_with(String::new);
                d.push_str(value);
                d.push('\n');
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {} // `retry` and unknown fields are ignored
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        let data = self.data.take();
        let id = self.id.take();
        if event.is_none() && data.is_none() {
            return None;
        }
        Some(SseEvent {
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".to_owned()),
            data: data
                .map(|mut d| {
                    d.pop(); // the '\n' after the last data line
                    d
                })
                .unwrap_or_default(),
            id,
        })
    }
}

/// What one event means for the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// Nothing to report (`started`, `heartbeat`, unknown events, unparsable progress).
    Ignore,
    Update(ProviderUpdate),
    /// A terminal event: emit the update if any, then end the stream.
    End(Option<ProviderUpdate>),
}

/// Translate one event for the ad `provider_ref`.
pub fn interpret(provider_ref: &str, ev: &SseEvent) -> Signal {
    let target = || UpdateTarget::ProviderRef(provider_ref.to_owned());
    match ev.event.as_str() {
        "progress" => match serde_json::from_str::<WireProgress>(&ev.data) {
            Ok(p) => Signal::Update(ProviderUpdate::processing(target(), Some(p.to_model()))),
            Err(_) => Signal::Ignore,
        },
        // No image_url in `complete` [SEED-1]: the engine's final GET reads the outputs.
        "complete" => Signal::End(None),
        "error" => {
            let err = serde_json::from_str::<WireJobError>(&ev.data).unwrap_or(WireJobError {
                code: None,
                message: Some(ev.data.clone()).filter(|d| !d.is_empty()),
            });
            Signal::End(Some(ProviderUpdate::failed(target(), err.to_model())))
        }
        _ => Signal::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adgate_generator::RemoteState;

    fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        chunks.iter().flat_map(|c| p.push(c)).collect()
    }

    const DOC_STREAM: &[u8] = b"event: started\ndata: {\"id\":\"ia_1\"}\n\n\
event: progress\ndata: {\"step\":\"perfect_ad\",\"message\":\"Running\",\"percentage\":0.5}\n\n\
event: heartbeat\ndata: \n\n\
event: complete\ndata: {\"id\":\"ia_1\"}\n\n";

    #[test]
    fn documented_events_parse() {
        let evs = all(&[DOC_STREAM]);
        let names: Vec<_> = evs.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["started", "progress", "heartbeat", "complete"]);
        assert_eq!(evs[2].data, "");
        assert_eq!(evs[0].data, r#"{"id":"ia_1"}"#);
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let whole = all(&[DOC_STREAM]);
        for size in [1, 2, 3, 7, 16] {
            let chunks: Vec<&[u8]> = DOC_STREAM.chunks(size).collect();
            assert_eq!(all(&chunks), whole, "chunk size {size}");
        }
    }

    #[test]
    fn crlf_cr_comments_and_multiline_data() {
        let evs = all(&[
            b": keep-alive comment\r\n\r\nevent:progress\r\ndata: line1\r",
            b"\ndata:line2\r\rdata: {}\n\nid: 7\nretry: 100\ndata\n\n",
        ]);
        assert_eq!(evs.len(), 3, "{evs:?}");
        assert_eq!(evs[0].event, "progress");
        assert_eq!(evs[0].data, "line1\nline2");
        assert_eq!(evs[1].event, "message");
        assert_eq!(evs[1].data, "{}");
        assert_eq!(evs[2].id.as_deref(), Some("7"));
        assert_eq!(evs[2].data, "");
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        assert!(all(&[b"event: complete\ndata: {}\n"]).is_empty());
    }

    #[test]
    fn oversized_lines_are_dropped() {
        let mut p = SseParser::new();
        let junk = vec![b'x'; MAX_LINE + 10];
        assert!(p.push(&junk).is_empty());
        let evs = p.push(b"\nevent: complete\ndata: {}\n\n");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].event, "complete");
    }

    #[test]
    fn events_become_signals() {
        let evs = all(&[DOC_STREAM]);
        assert_eq!(interpret("ia_1", &evs[0]), Signal::Ignore);
        match interpret("ia_1", &evs[1]) {
            Signal::Update(u) => {
                assert_eq!(u.state, RemoteState::Processing);
                let p = u.progress.unwrap();
                assert_eq!(p.percentage, 50.0);
                assert_eq!(p.step, "perfect_ad");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(interpret("ia_1", &evs[2]), Signal::Ignore);
        assert_eq!(interpret("ia_1", &evs[3]), Signal::End(None));
        let err = SseEvent {
            event: "error".into(),
            data:
                r#"{"code":"PIPELINE_ERROR","message":"Image generation failed after 3 attempts"}"#
                    .into(),
            id: None,
        };
        match interpret("ia_1", &err) {
            Signal::End(Some(u)) => {
                assert_eq!(u.state, RemoteState::Failed);
                assert_eq!(u.error.unwrap().provider_code, "PIPELINE_ERROR");
            }
            other => panic!("{other:?}"),
        }
    }
}
