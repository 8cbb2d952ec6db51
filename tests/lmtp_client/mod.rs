//! A line-level LMTP client for the in-process server tests (tests/lmtp.rs,
//! tests/quota_lmtp_imap.rs): replies read whole, CRLF kept.

#![allow(dead_code)] // each test binary uses its own part of this module

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub struct Client {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(stream: TcpStream) -> Client {
        let (r, w) = stream.into_split();
        let mut c = Client {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// One reply, all its lines, CRLF kept.
    pub async fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line).await.unwrap();
            assert!(n > 0, "connection closed after {reply:?}");
            let line = String::from_utf8(line).unwrap();
            let last = line.as_bytes().get(3) == Some(&b' ');
            reply.push_str(&line);
            if last {
                return reply;
            }
        }
    }

    /// Sends one command line and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn hello(&mut self) {
        let r = self.cmd("LHLO test").await;
        assert!(
            r.contains("250-PIPELINING") && r.ends_with("250 SMTPUTF8\r\n"),
            "{r}"
        );
    }

    /// Expects the server to close the connection.
    pub async fn closed(&mut self) {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
}
