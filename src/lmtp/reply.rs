//! Every reply the LMTP server sends, and the one place where outcomes
//! (refused recipients, failed deliveries, protocol errors) become reply
//! codes: RFC 5321 §4.2 basic codes with RFC 3463 enhanced status codes
//! (RFC 2034). Internal details never reach the client; callers log them.
//!
//! Rule of the house (doc/lmtp.md, "Reply codes"): a fault of the store, the
//! directory or the server itself is always a 4xx, so the sending MTA keeps the
//! message queued and retries; only the client's own mistakes and definitive
//! facts (no such user, message too big) are 5xx.

use std::fmt::Write as _;

/// One reply: a code, an enhanced status code and text lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// RFC 5321 §4.2 reply code.
    pub code: u16,
    /// RFC 3463 `class.subject.detail`, absent only in the greeting and
    /// in replies to LHLO (RFC 2034 §3: not in the greeting nor in the
    /// EHLO/LHLO reply).
    pub status: Option<(u8, u16, u16)>,
    /// One or more lines of text (more than one only for LHLO).
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// Appends the reply in wire form: `code-text` on every line but the
    /// last, `code text` on the last (RFC 5321 §4.2.1).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(s, "{}{sep}", self.code);
            if let Some((class, subject, detail)) = self.status {
                let _ = write!(s, "{class}.{subject}.{detail} ");
            }
            // Text comes from this module or from a client's address; never
            // let a CR or LF from it split the reply.
            s.extend(line.chars().map(|c| if c.is_control() { '?' } else { c }));
            s.push_str("\r\n");
        }
        if self.lines.is_empty() {
            let _ = write!(s, "{}\r\n", self.code);
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// The reply as a string (tests and logs).
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whether the code is a success (2xx).
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// Why a recipient was refused at RCPT, as the delivery layer found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptRefusal {
    /// No user has this address.
    Unknown,
    /// The user exists but has no keyring yet (doc/ldap.md, "First login"):
    /// temporary, so the mail stays queued until the user logs in once.
    NotActivated,
    /// The store could not answer now.
    Unavailable,
    /// The directory (LDAP) could not answer now.
    DirectoryUnavailable,
    /// The address is not one we can look up.
    BadAddress,
    /// The user's mailbox is full (or would be with the declared SIZE).
    OverQuota { temporary: bool },
}

/// How a delivery to one user ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Both objects are durably in the store.
    Delivered,
    /// The store or something else failed; the message must be retried.
    /// Never a 5xx: nothing about the message itself was wrong.
    Failed,
    /// The message does not fit under the user's quota.
    OverQuota { temporary: bool },
}

// Greeting and session.

/// RFC 5321 §4.3.1 greeting (no enhanced code, RFC 2034 §3).
pub fn greeting(host: &str) -> Reply {
    Reply {
        code: 220,
        status: None,
        lines: vec![format!("{host} LMTP Facteur ready")],
    }
}

/// RFC 2033 §4.1 LHLO reply: host, then the extensions, one per line.
pub fn lhlo(host: &str, max_size: u64) -> Reply {
    Reply {
        code: 250,
        status: None,
        lines: vec![
            host.to_owned(),
            "PIPELINING".into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            format!("SIZE {max_size}"),
            "SMTPUTF8".into(),
        ],
    }
}

pub fn ok() -> Reply {
    Reply::new(250, (2, 0, 0), "OK")
}

pub fn sender_ok() -> Reply {
    Reply::new(250, (2, 1, 0), "sender OK")
}

pub fn recipient_ok() -> Reply {
    Reply::new(250, (2, 1, 5), "recipient OK")
}

/// RFC 5321 §4.1.4 RSET.
pub fn reset() -> Reply {
    Reply::new(250, (2, 0, 0), "reset")
}

/// RFC 5321 §4.1.1.10 QUIT.
pub fn bye() -> Reply {
    Reply::new(221, (2, 0, 0), "bye")
}

/// RFC 3030 §2: a BDAT chunk (not the last) was received.
pub fn chunk_received(total: usize) -> Reply {
    Reply::new(250, (2, 0, 0), format!("{total} octets received"))
}

/// RFC 5321 §4.1.1.4: start of mail input.
pub fn start_data() -> Reply {
    Reply {
        code: 354,
        status: None,
        lines: vec!["send the message, end with <CRLF>.<CRLF>".into()],
    }
}

/// RFC 5321 §3.5.3: VRFY is not answered, politely.
pub fn vrfy() -> Reply {
    Reply::new(
        252,
        (2, 5, 2),
        "cannot VRFY; send the message and delivery will be attempted",
    )
}

/// RFC 5321 §3.8: the server is going away (shutdown).
pub fn shutting_down() -> Reply {
    Reply::new(
        421,
        (4, 3, 2),
        "service shutting down, closing transmission channel",
    )
}

/// RFC 5321 §4.5.3.2.7: the client was idle too long.
pub fn idle_timeout() -> Reply {
    Reply::new(421, (4, 4, 2), "idle timeout, closing transmission channel")
}

/// Too many bad commands in one session.
pub fn too_many_errors() -> Reply {
    Reply::new(
        421,
        (4, 7, 0),
        "too many errors, closing transmission channel",
    )
}

// Protocol errors: the client's mistakes.

/// RFC 5321 §4.2.4 / RFC 3463 5.5.1: unknown command.
pub fn unknown_command() -> Reply {
    Reply::new(500, (5, 5, 1), "command unrecognized")
}

/// RFC 2033 §4.1: HELO and EHLO are SMTP; an LMTP client says LHLO.
pub fn use_lhlo() -> Reply {
    Reply::new(500, (5, 5, 1), "this is LMTP: say LHLO (RFC 2033)")
}

/// RFC 5321 §4.5.3.1.4 / RFC 3463 5.5.2: command line too long.
pub fn line_too_long() -> Reply {
    Reply::new(500, (5, 5, 2), "line too long")
}

/// RFC 5321 §4.2.4: a command we do not implement.
pub fn not_implemented() -> Reply {
    Reply::new(502, (5, 5, 1), "command not implemented")
}

/// RFC 5321 §4.1.4 / RFC 3463 5.5.1: command out of sequence.
pub fn bad_sequence(what: &str) -> Reply {
    Reply::new(503, (5, 5, 1), what)
}

/// RFC 5321 §4.2.2 501 / RFC 3463 5.5.4: bad arguments.
pub fn syntax(what: &str) -> Reply {
    Reply::new(501, (5, 5, 4), format!("syntax error: {what}"))
}

/// RFC 3463 5.1.7: bad sender address syntax.
pub fn bad_sender() -> Reply {
    Reply::new(501, (5, 1, 7), "bad sender address syntax")
}

/// RFC 3463 5.1.3: bad recipient address syntax.
pub fn bad_recipient() -> Reply {
    Reply::new(501, (5, 1, 3), "bad recipient address syntax")
}

/// RFC 5321 §4.1.1.11: a MAIL or RCPT parameter we do not support.
pub fn unsupported_parameter(param: &str) -> Reply {
    Reply::new(555, (5, 5, 4), format!("parameter {param} not supported"))
}

/// RFC 1870 §6.1 / RFC 3463 5.3.4: the message is bigger than we take.
pub fn too_big(max: u64) -> Reply {
    Reply::new(
        552,
        (5, 3, 4),
        format!("message size exceeds fixed maximum of {max} bytes"),
    )
}

/// RFC 5321 §4.5.3.1.8 / RFC 3463 4.5.3: too many recipients in one
/// transaction; the client sends the rest in another one.
pub fn too_many_recipients() -> Reply {
    Reply::new(452, (4, 5, 3), "too many recipients")
}

/// The reply to a refused RCPT.
pub fn rcpt_refused(refusal: &RcptRefusal) -> Reply {
    match refusal {
        // RFC 3463 5.1.1: bad destination mailbox address.
        RcptRefusal::Unknown => Reply::new(550, (5, 1, 1), "no such user here"),
        // RFC 3463 4.2.1: mailbox disabled, not accepting messages (yet).
        RcptRefusal::NotActivated => Reply::new(
            450,
            (4, 2, 1),
            "mailbox not activated: the user has never logged in",
        ),
        // RFC 3463 4.3.0: other or undefined mail system status.
        RcptRefusal::Unavailable => temporary_failure(),
        // RFC 3463 4.4.3: directory server failure.
        RcptRefusal::DirectoryUnavailable => Reply::new(
            451,
            (4, 4, 3),
            "directory server unavailable, try again later",
        ),
        RcptRefusal::BadAddress => bad_recipient(),
        RcptRefusal::OverQuota { temporary } => over_quota(None, *temporary),
    }
}

/// RFC 3463 5.2.2 / 4.2.2: mailbox full. Permanent by default, like
/// Dovecot (the sender learns at once); temporary when configured, so
/// the mail waits in the sender's queue while the user makes room.
pub fn over_quota(address: Option<&str>, temporary: bool) -> Reply {
    let text = match address {
        Some(a) => format!("<{a}> mailbox full: over quota"),
        None => "mailbox full: over quota".to_owned(),
    };
    if temporary {
        Reply::new(452, (4, 2, 2), text)
    } else {
        Reply::new(552, (5, 2, 2), text)
    }
}

/// The reply for one recipient after DATA (RFC 2033 §4.2).
pub fn delivery(address: &str, outcome: &DeliveryOutcome) -> Reply {
    match outcome {
        DeliveryOutcome::Delivered => Reply::new(250, (2, 0, 0), format!("<{address}> delivered")),
        DeliveryOutcome::Failed => Reply::new(
            451,
            (4, 3, 0),
            format!("<{address}> temporary failure, try again later"),
        ),
        DeliveryOutcome::OverQuota { temporary } => over_quota(Some(address), *temporary),
    }
}

/// A fault on our side: 451 4.3.0, never a 5xx (doc/lmtp.md, "Reply codes").
pub fn temporary_failure() -> Reply {
    Reply::new(451, (4, 3, 0), "temporary failure, try again later")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_use_dashes_but_on_the_last_line() {
        assert_eq!(
            lhlo("mx", 10).to_wire(),
            "250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n\
             250-CHUNKING\r\n250-SIZE 10\r\n250 SMTPUTF8\r\n"
        );
        assert_eq!(ok().to_wire(), "250 2.0.0 OK\r\n");
    }

    #[test]
    fn over_quota_is_552_or_452_when_configured() {
        assert_eq!(
            rcpt_refused(&RcptRefusal::OverQuota { temporary: false }).to_wire(),
            "552 5.2.2 mailbox full: over quota\r\n"
        );
        assert_eq!(
            delivery("a@b", &DeliveryOutcome::OverQuota { temporary: true }).to_wire(),
            "452 4.2.2 <a@b> mailbox full: over quota\r\n"
        );
    }

    #[test]
    fn control_characters_cannot_split_a_reply() {
        let r = delivery("a\r\n250 b@c", &DeliveryOutcome::Delivered);
        assert_eq!(r.to_wire(), "250 2.0.0 <a??250 b@c> delivered\r\n");
    }
}
