//! Incremental server-sent-events parser: bytes arrive in arbitrary pieces (an event may be split
//! anywhere, even inside a UTF-8 sequence); complete events come out.

/// Longest event accepted; a provider that sends more without a blank line is broken.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    #[error("event is not valid UTF-8")]
    Utf8,
}

#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    /// How far `buffer` has been searched for a line end.
    scanned: usize,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            let Some(offset) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buffer.len();
                if self.buffer.len() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
                return Ok(events);
            };
            let end = self.scanned + offset;
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            self.scanned = 0;
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| SseError::Utf8)?;
            if let Some(event) = self.line(&line)? {
                events.push(event);
            }
        }
    }

    /// Bytes received after the last complete line (a stream that ends here was cut mid-event).
    pub fn has_partial_event(&self) -> bool {
        !self.buffer.is_empty() || self.has_data
    }

    fn line(&mut self, line: &str) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            if !self.has_data {
                self.event = None;
                return Ok(None);
            }
            let event = SseEvent {
                event: self.event.take(),
                data: self.data.join("\n"),
            };
            self.data.clear();
            self.has_data = false;
            return Ok(Some(event));
        }
        if line.starts_with(':') {
            return Ok(None); // comment / keep-alive
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                self.data.push(value.to_string());
                self.has_data = true;
                if self.data.iter().map(String::len).sum::<usize>() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
            }
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields do not matter here
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn events_survive_any_split() {
        let stream = "data: {\"a\":1}\n\n: keep-alive\n\nevent: x\r\ndata: line1\r\ndata: line2\r\n\r\ndata: é\n\ndata: [DONE]\n\n";
        let bytes = stream.as_bytes();
        for cut in 0..bytes.len() {
            for second in cut..bytes.len() {
                let mut p = SseParser::default();
                let mut events = p.push(&bytes[..cut]).unwrap();
                events.extend(p.push(&bytes[cut..second]).unwrap());
                events.extend(p.push(&bytes[second..]).unwrap());
                assert_eq!(
                    data(&events),
                    ["{\"a\":1}", "line1\nline2", "é", "[DONE]"],
                    "cut {cut}/{second}"
                );
                assert_eq!(events[1].event.as_deref(), Some("x"));
                assert!(!p.has_partial_event());
            }
        }
    }

    #[test]
    fn reports_a_cut_event_and_oversized_or_invalid_input() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").unwrap().is_empty());
        assert!(p.has_partial_event());
        let mut p = SseParser::default();
        assert!(p.push(b"data: x\n").unwrap().is_empty());
        assert!(
            p.has_partial_event(),
            "data without its blank line is incomplete"
        );
        let mut p = SseParser::default();
        assert_eq!(
            p.push(&vec![b'a'; MAX_EVENT_BYTES + 1]),
            Err(SseError::TooLarge)
        );
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: \xff\n\n"), Err(SseError::Utf8));
    }
}
