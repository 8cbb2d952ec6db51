//! The DATA body decoder (RFC 5321 §4.1.1.4, §4.5.2): removes the
//! transparency dot, finds the end of data, writes every line ending as
//! CRLF, and bounds what it keeps.
//!
//! Lines end at CRLF (RFC 5321 §2.3.8), and only `CRLF . CRLF` ends the
//! data (§4.1.1.4), as Postfix 3.9 and later read it: a bare LF (which
//! real clients send) is written as CRLF but starts no line, so neither
//! `LF . LF`, `LF . CRLF` nor `CRLF . LF` ends the message, and a client
//! cannot smuggle a second message into one DATA. A leading dot is removed
//! only at the start of a CRLF line; any CR not before LF is data.
//!
//! Streaming: input arrives in arbitrary pieces; nothing is buffered but
//! the body itself and at most two bytes of state. Past the size limit the
//! decoder keeps reading to the final dot and discards (never cut
//! mid-stream: the rest of the body could read as commands).

/// Where in a line the decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// At the start of a line.
    LineStart,
    /// After a `.` at the start of a line: the end, or a stuffed dot.
    Dot,
    /// After `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Line,
}

/// Decodes one DATA body.
#[derive(Debug)]
pub struct DataDecoder {
    at: At,
    /// Whether the last byte written to the body was a CR.
    last_cr: bool,
    /// The decoded body, CRLF line endings; emptied once over the limit.
    body: Vec<u8>,
    /// Decoded bytes, counted even once discarding.
    size: u64,
    max: u64,
}

/// What [`DataDecoder::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; the body goes on.
    More,
    /// The final dot line ended after `consumed` bytes of this input; the
    /// rest is commands.
    Done { consumed: usize },
}

impl DataDecoder {
    pub fn new(max: u64) -> DataDecoder {
        DataDecoder {
            at: At::LineStart,
            last_cr: false,
            body: Vec::new(),
            size: 0,
            max,
        }
    }

    /// Whether the body went over the limit (it was discarded).
    pub fn overflowed(&self) -> bool {
        self.size > self.max
    }

    /// Bytes of body held (at most the limit).
    pub fn held(&self) -> usize {
        self.body.len()
    }

    /// The decoded body, or `None` if it went over the limit.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.overflowed()).then_some(self.body)
    }

    fn emit(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else { return };
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size > self.max {
            if !self.body.is_empty() {
                self.body = Vec::new();
            }
        } else {
            self.body.extend_from_slice(bytes);
        }
        self.last_cr = last == b'\r';
    }

    /// An LF inside a line: after a CR it ends the line; a bare one is
    /// written as CRLF but the line goes on (no dot rule after it).
    fn line_feed(&mut self) {
        if self.last_cr {
            self.emit(b"\n");
            self.at = At::LineStart;
        } else {
            self.emit(b"\r\n");
            self.at = At::Line;
        }
    }

    /// Decodes a piece of input.
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        let mut i = 0;
        while i < input.len() {
            match self.at {
                At::LineStart => {
                    self.last_cr = false;
                    if input[i] == b'.' {
                        // RFC 5321 §4.5.2: a leading dot is removed.
                        self.at = At::Dot;
                        i += 1;
                    } else {
                        self.at = At::Line;
                    }
                }
                At::Dot => match input[i] {
                    b'\r' => {
                        self.at = At::DotCr;
                        i += 1;
                    }
                    // `.` LF ends nothing: the dot was a stuffed one.
                    _ => self.at = At::Line,
                },
                At::DotCr => {
                    if input[i] == b'\n' {
                        return self.done(i + 1);
                    }
                    // `.` CR then data: the CR was data.
                    self.emit(b"\r");
                    self.at = At::Line;
                }
                At::Line => {
                    let rest = &input[i..];
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(n) => {
                            self.emit(&rest[..n]);
                            self.line_feed();
                            i += n + 1;
                        }
                        None => {
                            self.emit(rest);
                            i = input.len();
                        }
                    }
                }
            }
        }
        Progress::More
    }

    fn done(&mut self, consumed: usize) -> Progress {
        self.at = At::LineStart;
        Progress::Done { consumed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of every size and checks each gives the same
    /// body and end position.
    fn decode(input: &[u8], max: u64) -> (Option<Vec<u8>>, Option<usize>) {
        let mut whole = None;
        for piece in 1..=input.len().max(1) {
            let mut d = DataDecoder::new(max);
            let mut end = None;
            let mut offset = 0;
            for chunk in input.chunks(piece) {
                if let Progress::Done { consumed } = d.feed(chunk) {
                    end = Some(offset + consumed);
                    break;
                }
                offset += chunk.len();
            }
            let got = (d.finish(), end);
            if let Some(w) = &whole {
                assert_eq!(&got, w, "piece size {piece}");
            }
            whole = Some(got);
        }
        whole.unwrap()
    }

    /// Input, decoded body, end of data.
    type Case = (&'static [u8], Option<&'static [u8]>, Option<usize>);

    #[test]
    fn table() {
        let cases: &[Case] = &[
            (b".\r\n", Some(b""), Some(3)),
            (b"a\r\n.\r\nQUIT\r\n", Some(b"a\r\n"), Some(6)),
            // Dot-stuffing removed (RFC 5321 §4.5.2).
            (b"..x\r\n..\r\n.\r\n", Some(b".x\r\n.\r\n"), Some(12)),
            // A bare LF is written CRLF but ends no line.
            (b"a\nb\r\n.\r\n", Some(b"a\r\nb\r\n"), Some(8)),
            // Only CRLF . CRLF ends the data (RFC 5321 §4.1.1.4): not
            // LF . LF, LF . CRLF nor CRLF . LF.
            (b"a\n.\nb\r\n.\r\n", Some(b"a\r\n.\r\nb\r\n"), Some(10)),
            (b"a\n.\r\nb\r\n.\r\n", Some(b"a\r\n.\r\nb\r\n"), Some(11)),
            (b"a\r\n.\nb\r\n.\r\n", Some(b"a\r\n\r\nb\r\n"), Some(11)),
            (b"a\n.\n", None, None),
            (b"a\r\n.\n", None, None),
            (b".\n", None, None),
            (b"\n.\r\n", None, None),
            // A dot after a bare LF is data, not stuffing.
            (b"a\n..\r\n.\r\n", Some(b"a\r\n..\r\n"), Some(9)),
            // A CR not before LF stays data.
            (b"a\rb\r\n.\r\n", Some(b"a\rb\r\n"), Some(8)),
            (b".\rx\r\n.\r\n", Some(b"\rx\r\n"), Some(8)),
            // No final dot: not done.
            (b"a\r\n.x", None, None),
            // Non-UTF-8 bytes pass untouched.
            (b"S: \xff\xfe\r\n.\r\n", Some(b"S: \xff\xfe\r\n"), Some(10)),
        ];
        for (input, body, end) in cases {
            let (got, got_end) = decode(input, 1000);
            assert_eq!(got_end, *end, "{:?}", String::from_utf8_lossy(input));
            if end.is_some() {
                assert_eq!(
                    got.as_deref(),
                    *body,
                    "{:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn over_the_limit_is_read_to_the_end_and_discarded() {
        let (body, end) = decode(b"0123456789\r\n.\r\nNOOP\r\n", 8);
        assert_eq!(body, None);
        assert_eq!(end, Some(15));
        let (body, _) = decode(b"012345\r\n.\r\n", 8);
        assert_eq!(body.as_deref(), Some(&b"012345\r\n"[..]));
    }
}
