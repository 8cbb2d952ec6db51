//! The trace header fields LMTP prepends to each stored copy: `Return-Path`
//! and `Received` (RFC 5321 §4.4), and `Delivered-To` (the de-facto header
//! Postfix and Dovecot write, so that a message forwarded back to us is
//! recognisable). Their order follows Dovecot's LMTP: Return-Path,
//! Delivered-To, then Received, all above the message's own header.
//!
//! Everything in them that a client chose (the LHLO name, the addresses)
//! is cleaned of characters that could end the field or open a comment,
//! so a client cannot inject header lines.

use std::fmt::Write as _;

/// What one `Received:` field records.
#[derive(Clone, Debug)]
pub struct Stamp<'a> {
    /// The name the client gave in LHLO.
    pub lhlo: &'a str,
    /// The client's IP address, when the connection has one (TCP).
    pub peer: Option<std::net::IpAddr>,
    /// Our host name (the by-domain).
    pub host: &'a str,
    /// The recipient address this copy is for (RFC 5321 §4.4 `For`: one
    /// recipient only, so no copy names another user's address).
    pub rcpt: &'a str,
    /// Reception time, seconds since the Unix epoch.
    pub at: i64,
}

/// The trace fields of one stored copy, CRLF-terminated.
pub fn header(mail_from: &str, delivered_to: &str, stamp: &Stamp<'_>) -> String {
    let mut h = String::with_capacity(256);
    let _ = write!(
        h,
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        clean(mail_from),
        clean(delivered_to)
    );
    // RFC 5321 §4.4 Stamp: From-domain By-domain Opt-info ";" date-time,
    // folded like Postfix and Dovecot do. Protocol "LMTP" is registered
    // by RFC 3848.
    let lhlo = match clean(stamp.lhlo) {
        s if s.is_empty() => "unknown".to_owned(),
        s => s,
    };
    let _ = write!(h, "Received: from {lhlo}");
    match stamp.peer {
        Some(std::net::IpAddr::V4(ip)) => {
            let _ = write!(h, " ([{ip}])");
        }
        Some(std::net::IpAddr::V6(ip)) => {
            let _ = write!(h, " ([IPv6:{ip}])");
        }
        None => {}
    }
    let _ = write!(
        h,
        "\r\n\tby {} (Facteur) with LMTP\r\n\tfor <{}>; {}\r\n",
        clean(stamp.host),
        clean(stamp.rcpt),
        rfc5322_date(stamp.at)
    );
    h
}

/// Keeps visible ASCII but the characters that would end a comment or an
/// angle-bracketed path; anything else becomes `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '(' | ')' | '<' | '>' | '\\') {
                c
            } else if c.is_alphanumeric() {
                // SMTPUTF8 addresses keep their letters (RFC 6532).
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// RFC 5322 §3.3 date-time in UTC: `Wed, 25 Nov 2026 21:06:04 +0000`.
pub fn rfc5322_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[month as usize - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc5322_in_utc() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_633_564),
            "Wed, 25 Nov 2026 19:06:04 +0000"
        );
        assert_eq!(rfc5322_date(-1), "Wed, 31 Dec 1969 23:59:59 +0000");
    }

    #[test]
    fn the_header_has_dovecots_order_and_rfc5321_shape() {
        let h = header(
            "sender@example.net",
            "alice+lists@example.org",
            &Stamp {
                lhlo: "mx.example.org",
                peer: Some("127.0.0.1".parse().unwrap()),
                host: "facteur.example.org",
                rcpt: "alice+lists@example.org",
                at: 0,
            },
        );
        assert_eq!(
            h,
            "Return-Path: <sender@example.net>\r\n\
             Delivered-To: alice+lists@example.org\r\n\
             Received: from mx.example.org ([127.0.0.1])\r\n\
             \tby facteur.example.org (Facteur) with LMTP\r\n\
             \tfor <alice+lists@example.org>; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn client_chosen_text_cannot_inject_lines() {
        let h = header(
            "a>\r\nX-Evil: 1\r\n<b",
            "x@y",
            &Stamp {
                lhlo: "a)\r\nX-Evil: 2",
                peer: Some("::1".parse().unwrap()),
                host: "h",
                rcpt: "x@y",
                at: 0,
            },
        );
        assert_eq!(h.matches("\r\n").count(), 5, "{h}");
        assert!(!h.contains("\r\nX-Evil"), "{h}");
        assert!(h.contains("from a???X-Evil:?2 ([IPv6:::1])"), "{h}");
        assert!(h.starts_with("Return-Path: <a???X-Evil:?1???b>\r\n"), "{h}");
    }
}
