//! A small IMAP client for tests: sends commands, reads responses line by
//! line (literals appended to their line) up to the tagged one.

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
