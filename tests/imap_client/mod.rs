//! A small IMAP client for tests: sends commands, reads responses line by
//! line (literals appended to their line) up to the tagged one, or streams
//! them (a large FETCH); with the large messages and the `/proc` memory
//! figures that the FETCH memory test and the IMAP benchmark share.

#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// A client on one connection (in-memory by default, TCP in benches).
pub struct Client<S = DuplexStream> {
    io: S,
    buf: Vec<u8>,
    next_tag: u32,
}

/// The lines a command got, tagged one last.
#[derive(Debug)]
pub struct Reply {
    pub lines: Vec<String>,
}

impl Reply {
    pub fn tagged(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or("")
    }
    pub fn ok(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("OK")
    }
    pub fn no(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("NO")
    }
    pub fn bad(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("BAD")
    }
    pub fn has(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }
    pub fn untagged(&self, prefix: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.starts_with(&format!("* {prefix}")))
            .map(String::as_str)
            .collect()
    }
    pub fn all(&self) -> String {
        self.lines.join("\n")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// A client on `io`, after reading the greeting (returned).
    pub async fn start(io: S) -> (Client<S>, String) {
        let mut c = Client {
            io,
            buf: Vec::new(),
            next_tag: 1,
        };
        let greeting = c.line().await;
        (c, greeting)
    }

    /// The stream, e.g. to switch it to compression (COMPRESS).
    pub fn io_mut(&mut self) -> &mut S {
        &mut self.io
    }

    pub async fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(120), self.io.read(&mut chunk))
            .await
            .expect("server answered in time")
            .unwrap();
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// One response line; a literal's data is appended to its line.
    pub async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..end + 2).collect();
                line.truncate(line.len() - 2);
                // `{n}` at the end: the literal follows.
                if line.ends_with(b"}")
                    && let Some(open) = line.iter().rposition(|b| *b == b'{')
                    && let Ok(n) = std::str::from_utf8(&line[open + 1..line.len() - 1])
                        .unwrap_or("x")
                        .parse::<usize>()
                {
                    while self.buf.len() < n {
                        self.fill().await;
                    }
                    line.extend(self.buf.drain(..n));
                    let rest = Box::pin(self.line()).await;
                    line.extend_from_slice(rest.as_bytes());
                }
                return String::from_utf8_lossy(&line).into_owned();
            }
            self.fill().await;
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.io.write_all(raw).await.unwrap();
    }

    pub fn tag(&mut self) -> String {
        let t = format!("a{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    pub async fn until_tagged(&mut self, tag: &str) -> Reply {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return Reply { lines };
            }
        }
    }

    pub async fn run(&mut self, command: &str) -> Reply {
        let tag = self.tag();
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until_tagged(&tag).await
    }

    /// APPEND with a synchronizing literal: waits for the continuation.
    pub async fn append(&mut self, mailbox: &str, extra: &str, message: &str) -> Reply {
        let tag = self.tag();
        self.send(format!("{tag} APPEND {mailbox} {extra}{{{}}}\r\n", message.len()).as_bytes())
            .await;
        let cont = self.line().await;
        assert!(cont.starts_with('+'), "{cont}");
        self.send(message.as_bytes()).await;
        self.send(b"\r\n").await;
        self.until_tagged(&tag).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Runs `command` and reads its response without keeping it: each
    /// literal goes whole to `literal`, with the text of its response
    /// line up to it (`* 3 FETCH (UID 3 BODY[] {1234}`), and is dropped.
    /// Reading a FETCH of many large bodies thus holds one body at a time.
    /// Returns the tagged line.
    pub async fn run_streaming(
        &mut self,
        command: &str,
        mut literal: impl FnMut(&[u8], &[u8]),
    ) -> String {
        let tag = self.tag();
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        let mut start_of_line = true;
        loop {
            let end = loop {
                if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break end;
                }
                self.fill().await;
            };
            if start_of_line && self.buf.starts_with(format!("{tag} ").as_bytes()) {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            let text: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
            match literal_size(&text) {
                Some(n) => {
                    while self.buf.len() < n {
                        self.fill().await;
                    }
                    literal(&text, &self.buf[..n]);
                    self.buf.drain(..n);
                    start_of_line = false;
                }
                None => start_of_line = true,
            }
        }
    }
}

/// `n` when `text` ends with `{n}` or `{n+}` (a literal follows).
fn literal_size(text: &[u8]) -> Option<usize> {
    let inner = text.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|b| *b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Message `i` of `size` bytes or a line more: a few headers, then lines
/// of pseudo-random base64 characters (so compression shrinks it only to
/// 6 bits a byte); the same for the same `i` and `size`.
pub fn large_message(i: usize, size: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut m = format!(
        "From: Bench <bench@example.org>\r\nTo: user@example.org\r\n\
         Subject: large message {i}\r\nMessage-ID: <large-{i}@example.org>\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    m.reserve(size.saturating_sub(m.len()) + 80);
    // xorshift64*: cheap, and good enough not to compress.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    while m.len() < size {
        for _ in 0..7 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let mut r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            for _ in 0..10 {
                m.push(ALPHABET[(r & 63) as usize]);
                r >>= 6;
            }
        }
        // 70 characters a line, then CRLF.
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Memory of a process, from `/proc/<pid>/status` (Linux).
pub mod memory {
    /// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`), as bytes.
    pub fn status_bytes(pid: u32, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
        kib * 1024
    }

    /// Resident memory now.
    pub fn rss(pid: u32) -> u64 {
        status_bytes(pid, "VmRSS")
    }

    /// Peak resident memory since the last [`reset_peak`].
    pub fn peak(pid: u32) -> u64 {
        status_bytes(pid, "VmHWM")
    }

    /// Resets the peak to the resident memory now (`clear_refs` 5,
    /// Linux ≥ 4.0; needs to own the process or be root).
    pub fn reset_peak(pid: u32) {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap_or_else(|e| {
            panic!("cannot reset the peak RSS of {pid} (/proc/{pid}/clear_refs): {e}")
        });
    }
}
