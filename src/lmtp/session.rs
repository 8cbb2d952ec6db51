//! The LMTP protocol core (RFC 2033): bytes in, replies and requests out,
//! no I/O. The driver ([`super::connection`]) feeds it what the socket
//! read, writes what it produced, and answers its two requests: resolve a
//! recipient ([`Step::Resolve`]) and deliver a message ([`Step::Deliver`]).
//!
//! Invariants:
//!
//! - One command at a time: while a request is out, the session consumes
//!   no input, so the driver reads nothing more and input stays bounded
//!   (one read plus one partial line).
//! - Commands are parsed by `smtp-proto`, one whole line at a time; a line
//!   over [`Options::max_line`] octets is read to its end and answered 500
//!   5.5.2, never parsed in pieces.
//! - A BDAT chunk (RFC 3030) is read as raw octets to its announced end,
//!   even when the BDAT is refused, so none of its bytes is taken for a
//!   command; over the size limit they are counted, not kept.
//! - After DATA there is exactly one reply per accepted recipient, in RCPT
//!   order (RFC 2033 §4.2), and a 250 only for a recipient whose user's
//!   delivery the driver reported done.
//! - The request tokens ([`PendingRcpt`], [`Delivery`]) can only be made
//!   here and are consumed by the answer, so an answer without a question
//!   cannot be written.

use std::borrow::Cow;

use smtp_proto::{
    Error as ParseError, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MailFrom, RcptTo, Request,
};

use super::data::{DataDecoder, Progress};
use super::reply::{self, DeliveryOutcome, RcptRefusal, Reply};
use super::trace;

/// The limits of a session (doc/lmtp.md, "Protocol").
#[derive(Clone, Debug)]
pub struct Options {
    /// Name in the greeting and the LHLO reply.
    pub hostname: String,
    /// Largest message accepted, in octets (advertised as SIZE).
    pub max_message_size: u64,
    /// Most RCPT commands in one transaction; later ones get 452 4.5.3.
    pub max_recipients: usize,
    /// Longest command line, CRLF included. RFC 5321 §4.5.3.1.4 says 512;
    /// we take the 1000 of a text line (§4.5.3.1.6) like Postfix.
    pub max_line: usize,
    /// Bad commands tolerated before the session is closed with 421.
    pub max_errors: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hostname: "facteur".into(),
            max_message_size: 50 << 20,
            max_recipients: 100,
            max_line: 1000,
            max_errors: 20,
        }
    }
}

/// What the driver does next.
#[derive(Debug)]
pub enum Step<U> {
    /// Write the output ([`Session::take_output`]) and read more input.
    NeedInput,
    /// Look this recipient up, then call [`Session::resolved`].
    Resolve(PendingRcpt),
    /// Store the message for each user, then call [`Session::delivered`].
    Deliver(Delivery<U>),
    /// Write the output and close the connection.
    Close,
}

/// A RCPT waiting for the directory.
#[derive(Debug)]
pub struct PendingRcpt {
    address: String,
    /// The MAIL FROM `SIZE=` the client declared (RFC 1870), 0 if none.
    declared_size: u64,
}

impl PendingRcpt {
    /// The address as the client wrote it, without angle brackets.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The message size the client announced with `SIZE=` (RFC 1870), 0
    /// when it did not: lets a full mailbox refuse at RCPT.
    pub fn declared_size(&self) -> u64 {
        self.declared_size
    }
}

/// How the driver resolved a recipient.
#[derive(Debug)]
pub enum Resolution<U> {
    Accepted(Recipient<U>),
    Refused(RcptRefusal),
}

/// An accepted recipient.
#[derive(Clone, Debug)]
pub struct Recipient<U> {
    /// Recipients with the same key are the same user and get one
    /// delivery (the normalised login).
    pub key: String,
    /// What the driver needs to deliver (the user id and public key).
    pub user: U,
    /// The folder a `+detail` address asked for.
    pub folder: Option<String>,
}

/// A received message, to be delivered once per user.
#[derive(Debug)]
pub struct Delivery<U> {
    /// The MAIL FROM reverse path, empty for `<>`.
    pub mail_from: String,
    /// Accepted recipients in RCPT order, with their address.
    recipients: Vec<(String, Recipient<U>)>,
    /// The body, CRLF line endings, as the client sent it.
    body: Vec<u8>,
    /// The client's LHLO name, for `Received:`.
    lhlo: String,
    /// The client's address, for `Received:`.
    peer: Option<std::net::IpAddr>,
    /// Our host name, for `Received:`.
    host: String,
}

/// One user's share of a [`Delivery`].
#[derive(Debug)]
pub struct Target<'a, U> {
    pub user: &'a U,
    /// The RCPT addresses of this user, in order.
    pub rcpt_to: Vec<String>,
    /// The folder the first `+detail` address of this user asked for.
    pub folder: Option<String>,
}

impl<U> Delivery<U> {
    /// The users to deliver to, each once, in order of first RCPT.
    pub fn targets(&self) -> Vec<Target<'_, U>> {
        let mut targets: Vec<(&str, Target<'_, U>)> = Vec::new();
        for (address, r) in &self.recipients {
            match targets.iter_mut().find(|(k, _)| *k == r.key) {
                Some((_, t)) => {
                    t.rcpt_to.push(address.clone());
                    if t.folder.is_none() {
                        t.folder.clone_from(&r.folder);
                    }
                }
                None => targets.push((
                    &r.key,
                    Target {
                        user: &r.user,
                        rcpt_to: vec![address.clone()],
                        folder: r.folder.clone(),
                    },
                )),
            }
        }
        targets.into_iter().map(|(_, t)| t).collect()
    }

    /// The size of the message as received (before trace fields).
    pub fn size(&self) -> u64 {
        self.body.len() as u64
    }

    /// The message stored for a target, received at `at` (seconds since
    /// the epoch): `Return-Path`, `Delivered-To` (the first RCPT address
    /// of this user) and `Received` ([`trace`]) prepended to the body.
    pub fn message_for(&self, target: &Target<'_, U>, at: i64) -> Vec<u8> {
        let delivered_to = target.rcpt_to.first().map_or("", String::as_str);
        let head = trace::header(
            &self.mail_from,
            delivered_to,
            &trace::Stamp {
                lhlo: &self.lhlo,
                peer: self.peer,
                host: &self.host,
                rcpt: delivered_to,
                at,
            },
        );
        let mut message = Vec::with_capacity(head.len() + self.body.len());
        message.extend_from_slice(head.as_bytes());
        message.extend_from_slice(&self.body);
        message
    }
}

/// Where the session stands (RFC 5321 §4.1.4 command order).
#[derive(Debug)]
enum Phase<U> {
    /// Before LHLO.
    Greeted,
    /// After LHLO, no transaction.
    Ready,
    /// After MAIL FROM, collecting recipients.
    Mail(Transaction<U>),
    /// Reading the message.
    Data(Transaction<U>, DataDecoder),
    /// Between two BDAT chunks (RFC 3030): the message so far, `None` once
    /// it went over the size limit.
    Chunks(Transaction<U>, Option<Vec<u8>>),
    /// Reading the octets of one BDAT chunk.
    Chunk(Chunk<U>),
    /// A request is out; nothing moves until it is answered.
    Waiting(Waiting<U>),
    /// After QUIT or a fatal error.
    Closed,
}

/// A BDAT chunk being read (RFC 3030 §2): exactly `remaining` more raw
/// octets, no dot-stuffing, no line rules.
#[derive(Debug)]
struct Chunk<U> {
    target: ChunkTarget<U>,
    remaining: u64,
    /// `BDAT <n> LAST`.
    last: bool,
}

#[derive(Debug)]
enum ChunkTarget<U> {
    /// Appended to the message (`None`: over the size limit, discarded).
    Message(Transaction<U>, Option<Vec<u8>>),
    /// A BDAT that cannot be accepted: its octets are read and dropped
    /// (they could look like commands), then `reply` is sent and the
    /// session goes back to `after`.
    Discard(Reply, Box<Phase<U>>),
}

#[derive(Debug)]
enum Waiting<U> {
    Rcpt(Transaction<U>),
    Delivery,
}

#[derive(Debug)]
struct Transaction<U> {
    mail_from: String,
    /// Accepted recipients, in RCPT order.
    recipients: Vec<(String, Recipient<U>)>,
    /// RCPT commands seen, accepted or not.
    attempts: usize,
    /// MAIL FROM `SIZE=`, 0 if absent.
    declared_size: u64,
}

/// One LMTP session.
#[derive(Debug)]
pub struct Session<U> {
    options: Options,
    phase: Phase<U>,
    /// Unconsumed input.
    input: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding_line: bool,
    /// Replies not yet taken by the driver.
    output: Vec<u8>,
    /// Bad commands so far.
    errors: u32,
    /// The name the client gave in its last LHLO.
    lhlo: String,
    /// The client's address, when the transport has one.
    peer: Option<std::net::IpAddr>,
}

impl<U> Session<U> {
    /// A new session; the greeting is already in the output.
    pub fn new(options: Options) -> Session<U> {
        let mut s = Session {
            phase: Phase::Greeted,
            input: Vec::new(),
            discarding_line: false,
            output: Vec::new(),
            errors: 0,
            lhlo: String::new(),
            peer: None,
            options,
        };
        s.reply(reply::greeting(&s.options.hostname.clone()));
        s
    }

    /// Records the client's address (for `Received:`).
    pub fn with_peer(mut self, peer: Option<std::net::IpAddr>) -> Session<U> {
        self.peer = peer;
        self
    }

    /// Bytes to write to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Whether a mail transaction is open (shutdown waits for it).
    pub fn in_transaction(&self) -> bool {
        matches!(
            self.phase,
            Phase::Mail(_)
                | Phase::Data(..)
                | Phase::Chunks(..)
                | Phase::Chunk(_)
                | Phase::Waiting(_)
        )
    }

    /// Whether the session is reading a message body.
    pub fn in_data(&self) -> bool {
        matches!(
            self.phase,
            Phase::Data(..) | Phase::Chunks(..) | Phase::Chunk(_)
        )
    }

    /// Bytes held for the client: input not yet consumed (at most one
    /// read plus [`Options::max_line`]), the message being received (at
    /// most [`Options::max_message_size`]) and replies not yet taken.
    pub fn buffered(&self) -> usize {
        let body = match &self.phase {
            Phase::Data(_, decoder) => decoder.held(),
            Phase::Chunks(_, Some(body))
            | Phase::Chunk(Chunk {
                target: ChunkTarget::Message(_, Some(body)),
                ..
            }) => body.len(),
            _ => 0,
        };
        self.input.len() + body + self.output.len()
    }

    /// Adds input read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Ends the session with a reply (shutdown, idle timeout).
    pub fn close_with(&mut self, r: Reply) {
        self.reply(r);
        self.phase = Phase::Closed;
    }

    fn reply(&mut self, r: Reply) {
        r.write_to(&mut self.output);
    }

    fn error(&mut self, r: Reply) {
        self.reply(r);
        self.errors += 1;
        if self.errors >= self.options.max_errors {
            self.close_with(reply::too_many_errors());
        }
    }

    /// Advances as far as the input allows.
    pub fn step(&mut self) -> Step<U> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Closed) {
                Phase::Closed => return Step::Close,
                Phase::Waiting(w) => {
                    // The driver stepped without answering: nothing moves.
                    self.phase = Phase::Waiting(w);
                    return Step::NeedInput;
                }
                Phase::Chunk(mut chunk) => {
                    let take = self
                        .input
                        .len()
                        .min(usize::try_from(chunk.remaining).unwrap_or(usize::MAX));
                    chunk.remaining -= take as u64;
                    if let ChunkTarget::Message(_, body) = &mut chunk.target {
                        let max = self.options.max_message_size;
                        match body {
                            Some(b) if (b.len() + take) as u64 <= max => {
                                b.extend_from_slice(&self.input[..take]);
                            }
                            _ => *body = None,
                        }
                    }
                    self.input.drain(..take);
                    if chunk.remaining > 0 {
                        self.phase = Phase::Chunk(chunk);
                        return Step::NeedInput;
                    }
                    if let Some(step) = self.end_of_chunk(chunk) {
                        return step;
                    }
                }
                Phase::Data(tx, mut decoder) => {
                    let input = std::mem::take(&mut self.input);
                    match decoder.feed(&input) {
                        Progress::More => {
                            self.phase = Phase::Data(tx, decoder);
                            return Step::NeedInput;
                        }
                        Progress::Done { consumed } => {
                            self.input = input[consumed..].to_vec();
                            if let Some(step) = self.end_of_data(tx, decoder) {
                                return step;
                            }
                        }
                    }
                }
                phase => {
                    self.phase = phase;
                    let Some(line) = self.next_line() else {
                        return Step::NeedInput;
                    };
                    if let Some(step) = self.command(&line) {
                        return step;
                    }
                }
            }
        }
    }

    /// The next complete command line, handling over-long lines.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            let lf = self.input.iter().position(|&b| b == b'\n');
            if self.discarding_line {
                match lf {
                    Some(n) => {
                        self.input.drain(..=n);
                        self.discarding_line = false;
                        self.error(reply::line_too_long());
                        if matches!(self.phase, Phase::Closed) {
                            return None;
                        }
                        continue;
                    }
                    None => {
                        self.input.clear();
                        return None;
                    }
                }
            }
            return match lf {
                Some(n) if n < self.options.max_line => Some(self.input.drain(..=n).collect()),
                Some(n) => {
                    self.input.drain(..=n);
                    self.error(reply::line_too_long());
                    if matches!(self.phase, Phase::Closed) {
                        return None;
                    }
                    continue;
                }
                None if self.input.len() >= self.options.max_line => {
                    self.input.clear();
                    self.discarding_line = true;
                    None
                }
                None => None,
            };
        }
    }

    /// Handles one command line; `Some` when the driver must act.
    fn command(&mut self, line: &[u8]) -> Option<Step<U>> {
        if oversized_number(line) {
            self.error(reply::syntax("size does not fit in 64 bits"));
            return None;
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => {
                self.error(parse_error(&e));
                return None;
            }
        };
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        match (request, phase) {
            (Request::Lhlo { host }, phase) => {
                // RFC 5321 §4.1.4: a second LHLO resets the transaction.
                drop(phase);
                self.lhlo = host.into_owned();
                let r = reply::lhlo(&self.options.hostname, self.options.max_message_size);
                self.reply(r);
                self.phase = Phase::Ready;
            }
            (Request::Helo { .. } | Request::Ehlo { .. }, phase) => {
                self.phase = phase;
                self.error(reply::use_lhlo());
            }
            (
                Request::Mail { .. } | Request::Rcpt { .. } | Request::Data,
                phase @ Phase::Chunks(..),
            ) => {
                // RFC 3030 §3: a BDAT transaction continues with BDAT only.
                self.phase = phase;
                self.error(reply::bad_sequence(
                    "BDAT transaction in progress: BDAT or RSET",
                ));
            }
            (Request::Mail { from }, Phase::Ready) => {
                self.phase = Phase::Ready;
                if let Some(tx) = self.mail(from) {
                    self.phase = Phase::Mail(tx);
                }
            }
            (Request::Mail { .. }, phase @ Phase::Mail(_)) => {
                self.phase = phase;
                self.error(reply::bad_sequence("nested MAIL command"));
            }
            (Request::Mail { .. }, phase) => {
                self.phase = phase;
                self.error(reply::bad_sequence("say LHLO first"));
            }
            (Request::Rcpt { to }, Phase::Mail(mut tx)) => {
                tx.attempts += 1;
                if tx.attempts > self.options.max_recipients {
                    self.reply(reply::too_many_recipients());
                    self.phase = Phase::Mail(tx);
                    return None;
                }
                match rcpt_address(to) {
                    Ok(address) => {
                        let declared_size = tx.declared_size;
                        self.phase = Phase::Waiting(Waiting::Rcpt(tx));
                        return Some(Step::Resolve(PendingRcpt {
                            address,
                            declared_size,
                        }));
                    }
                    Err(r) => {
                        self.phase = Phase::Mail(tx);
                        self.error(r);
                    }
                }
            }
            (Request::Rcpt { .. }, phase) => {
                self.phase = phase;
                self.error(reply::bad_sequence("need MAIL before RCPT"));
            }
            (Request::Data, Phase::Mail(tx)) if !tx.recipients.is_empty() => {
                self.reply(reply::start_data());
                self.phase = Phase::Data(tx, DataDecoder::new(self.options.max_message_size));
            }
            // RFC 3030 §2: BDAT; the chunk's octets follow the command.
            (
                Request::Bdat {
                    chunk_size,
                    is_last,
                },
                phase,
            ) => {
                let target = match phase {
                    Phase::Mail(tx) if !tx.recipients.is_empty() => {
                        ChunkTarget::Message(tx, Some(Vec::new()))
                    }
                    Phase::Chunks(tx, body) => ChunkTarget::Message(tx, body),
                    phase @ Phase::Mail(_) => ChunkTarget::Discard(
                        reply::bad_sequence("no valid recipients"),
                        Box::new(phase),
                    ),
                    phase => ChunkTarget::Discard(
                        reply::bad_sequence("need MAIL and RCPT before BDAT"),
                        Box::new(phase),
                    ),
                };
                self.phase = Phase::Chunk(Chunk {
                    target,
                    remaining: chunk_size as u64,
                    last: is_last,
                });
            }
            (Request::Data, phase @ Phase::Mail(_)) => {
                // RFC 2033 §4.2: DATA with no accepted recipient fails 503.
                self.phase = phase;
                self.error(reply::bad_sequence("no valid recipients"));
            }
            (Request::Data, phase) => {
                self.phase = phase;
                self.error(reply::bad_sequence("need MAIL and RCPT before DATA"));
            }
            (Request::Rset, phase) => {
                self.phase = match phase {
                    Phase::Greeted => Phase::Greeted,
                    _ => Phase::Ready,
                };
                self.reply(reply::reset());
            }
            (Request::Noop { .. }, phase) => {
                self.phase = phase;
                self.reply(reply::ok());
            }
            (Request::Vrfy { .. }, phase) => {
                self.phase = phase;
                self.reply(reply::vrfy());
            }
            (Request::Quit, _) => {
                self.reply(reply::bye());
                self.phase = Phase::Closed;
            }
            // AUTH, STARTTLS, EXPN, HELP, ETRN, ATRN, BURL.
            (_, phase) => {
                self.phase = phase;
                self.error(reply::not_implemented());
            }
        }
        None
    }

    /// MAIL FROM (RFC 5321 §4.1.1.2, RFC 1870 SIZE, RFC 6152 8BITMIME,
    /// RFC 6531 SMTPUTF8).
    fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Option<Transaction<U>> {
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            self.error(reply::unsupported_parameter("BODY=BINARYMIME"));
            return None;
        }
        if from.flags & MAIL_REQUIRETLS != 0 {
            self.error(reply::unsupported_parameter("REQUIRETLS"));
            return None;
        }
        if from.size as u64 > self.options.max_message_size {
            // RFC 1870 §6.1.
            self.reply(reply::too_big(self.options.max_message_size));
            return None;
        }
        self.reply(reply::sender_ok());
        Some(Transaction {
            mail_from: from.address.into_owned(),
            recipients: Vec::new(),
            attempts: 0,
            declared_size: from.size as u64,
        })
    }

    /// Answers a [`Step::Resolve`].
    pub fn resolved(&mut self, pending: PendingRcpt, resolution: Resolution<U>) {
        let Phase::Waiting(Waiting::Rcpt(mut tx)) =
            std::mem::replace(&mut self.phase, Phase::Closed)
        else {
            // Unreachable through the API: the token comes from this state.
            self.close_with(reply::temporary_failure());
            return;
        };
        match resolution {
            Resolution::Accepted(r) => {
                tx.recipients.push((pending.address, r));
                self.reply(reply::recipient_ok());
            }
            Resolution::Refused(refusal) => {
                self.reply(reply::rcpt_refused(&refusal));
            }
        }
        self.phase = Phase::Mail(tx);
    }

    /// A BDAT chunk was read to its end.
    fn end_of_chunk(&mut self, chunk: Chunk<U>) -> Option<Step<U>> {
        match chunk.target {
            ChunkTarget::Discard(r, after) => {
                self.phase = *after;
                self.error(r);
                None
            }
            ChunkTarget::Message(tx, body) if chunk.last => self.end_of_message(tx, body),
            ChunkTarget::Message(_, None) => {
                // RFC 3030 §2: the transaction is over; further chunks of it
                // are read and refused 503.
                self.phase = Phase::Ready;
                self.reply(reply::too_big(self.options.max_message_size));
                None
            }
            ChunkTarget::Message(tx, Some(body)) => {
                self.reply(reply::chunk_received(body.len()));
                self.phase = Phase::Chunks(tx, Some(body));
                None
            }
        }
    }

    fn end_of_data(&mut self, tx: Transaction<U>, decoder: DataDecoder) -> Option<Step<U>> {
        self.end_of_message(tx, decoder.finish())
    }

    /// The whole message was received (`None`: it went over the limit).
    fn end_of_message(&mut self, tx: Transaction<U>, body: Option<Vec<u8>>) -> Option<Step<U>> {
        // RFC 5321 §4.1.1.4: the transaction ends with the data, whatever
        // the replies.
        self.phase = Phase::Ready;
        match body {
            None => {
                let r = reply::too_big(self.options.max_message_size);
                for _ in &tx.recipients {
                    self.reply(r.clone());
                }
                None
            }
            Some(body) => {
                self.phase = Phase::Waiting(Waiting::Delivery);
                Some(Step::Deliver(Delivery {
                    mail_from: tx.mail_from,
                    recipients: tx.recipients,
                    body,
                    lhlo: self.lhlo.clone(),
                    peer: self.peer,
                    host: self.options.hostname.clone(),
                }))
            }
        }
    }

    /// Answers a [`Step::Deliver`]: `outcomes` holds one entry per
    /// [`Delivery::targets`] entry, in that order; a missing one counts as
    /// failed. Replies once per accepted RCPT, in RCPT order (RFC 2033
    /// §4.2); recipients of one user share that user's outcome.
    pub fn delivered(&mut self, delivery: Delivery<U>, outcomes: &[DeliveryOutcome]) {
        let mut keys: Vec<&str> = Vec::new();
        for (_, r) in &delivery.recipients {
            if !keys.contains(&r.key.as_str()) {
                keys.push(&r.key);
            }
        }
        for (address, r) in &delivery.recipients {
            let index = keys.iter().position(|k| *k == r.key);
            let outcome = index
                .and_then(|i| outcomes.get(i))
                .unwrap_or(&DeliveryOutcome::Failed);
            reply::delivery(address, outcome).write_to(&mut self.output);
        }
        if matches!(self.phase, Phase::Waiting(Waiting::Delivery)) {
            self.phase = Phase::Ready;
        }
    }
}

/// Whether the size of `BDAT chunk-size` (RFC 3030 §2, `chunk-size = 1*DIGIT`) or
/// of a MAIL `SIZE=` parameter (RFC 1870 §3) when it does not fit in 64
/// bits. smtp-proto saturates such numbers, then starts again from the
/// next digit: `BDAT 99999999999999999999999 LAST` would read as a chunk of
/// 999 octets, and the rest of the real chunk as commands. So the digits
/// are checked here before parsing, and such a command refused with 501.
fn oversized_number(line: &[u8]) -> bool {
    let line = line.trim_ascii();
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let Some(verb) = words.next() else {
        return false;
    };
    let numbers: Vec<&[u8]> = if verb.eq_ignore_ascii_case(b"BDAT") {
        words.next().into_iter().collect()
    } else if verb.len() >= 4 && verb[..4].eq_ignore_ascii_case(b"MAIL") {
        words
            .filter_map(|w| {
                let (key, value) = w.split_at(w.iter().position(|&b| b == b'=')?);
                key.eq_ignore_ascii_case(b"SIZE").then_some(&value[1..])
            })
            .collect()
    } else {
        return false;
    };
    numbers.into_iter().any(|n| {
        n.iter()
            .take_while(|b| b.is_ascii_digit())
            .try_fold(0u64, |v, d| {
                v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .is_none()
    })
}

/// The RCPT address, checked; `+detail` handling is the driver's.
fn rcpt_address(to: RcptTo<Cow<'_, str>>) -> Result<String, Reply> {
    if to.orcpt.is_some() || to.flags != 0 {
        // DSN (RFC 3461) and friends are not advertised.
        return Err(reply::unsupported_parameter("RCPT parameters"));
    }
    let address = to.address.into_owned();
    if address.is_empty() || !address.contains('@') {
        return Err(reply::bad_recipient());
    }
    Ok(address)
}

/// A parse error from `smtp-proto`, as a reply.
fn parse_error(e: &ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand => reply::unknown_command(),
        ParseError::InvalidSenderAddress => reply::bad_sender(),
        ParseError::InvalidRecipientAddress => reply::bad_recipient(),
        ParseError::SyntaxError { syntax } => reply::syntax(syntax),
        ParseError::InvalidParameter { param } => reply::syntax(&format!("invalid {param}")),
        ParseError::UnsupportedParameter { param } => reply::unsupported_parameter(param),
        ParseError::NeedsMoreData { .. }
        | ParseError::ResponseTooLong
        | ParseError::InvalidResponse { .. } => reply::syntax("malformed command"),
    }
}

#[cfg(test)]
mod tests {
    //! Transcripts: `C:` lines are what the client sends (CRLF added), `S:`
    //! lines the replies expected. Each is replayed with the whole input at
    //! once (pipelining) and split into every piece size.
    use super::*;

    /// A fake directory: `alice`, `bob` (and `alias` for alice) exist;
    /// `new` has no keyring; `down` finds the directory unavailable.
    fn resolve(address: &str) -> Resolution<String> {
        let address = address.to_lowercase();
        let local = address.split('@').next().unwrap_or("");
        let (user, folder) = match local.split_once('+') {
            Some((u, d)) => (u, Some(d.to_owned())),
            None => (local, None),
        };
        let key = match user {
            "alice" | "alias" => "alice",
            "bob" => "bob",
            "new" => return Resolution::Refused(RcptRefusal::NotActivated),
            "down" => return Resolution::Refused(RcptRefusal::Unavailable),
            _ => return Resolution::Refused(RcptRefusal::Unknown),
        };
        Resolution::Accepted(Recipient {
            key: key.into(),
            user: key.into(),
            folder,
        })
    }

    /// One delivery made: user, RCPT addresses, folder, message.
    type Stored = (String, Vec<String>, Option<String>, Vec<u8>);

    struct Run {
        output: String,
        stored: Vec<Stored>,
    }

    fn options() -> Options {
        Options {
            hostname: "mx.test".into(),
            max_message_size: 64,
            max_recipients: 3,
            max_line: 100,
            max_errors: 20,
        }
    }

    /// Runs `input` fed in pieces of `piece` bytes; users in `failing` get
    /// a failed delivery.
    fn run(input: &[u8], piece: usize, failing: &[&str]) -> Run {
        let mut s: Session<String> = Session::new(options());
        let mut chunks = input.chunks(piece.max(1));
        let mut output = Vec::new();
        let mut stored = Vec::new();
        loop {
            match s.step() {
                Step::NeedInput => {
                    output.extend(s.take_output());
                    match chunks.next() {
                        Some(c) => s.feed(c),
                        None => break,
                    }
                }
                Step::Resolve(p) => {
                    let r = resolve(p.address());
                    s.resolved(p, r);
                }
                Step::Deliver(d) => {
                    let mut outcomes = Vec::new();
                    for t in d.targets() {
                        if failing.contains(&t.user.as_str()) {
                            outcomes.push(DeliveryOutcome::Failed);
                        } else {
                            let m = d.message_for(&t, 0);
                            stored.push((t.user.clone(), t.rcpt_to.clone(), t.folder.clone(), m));
                            outcomes.push(DeliveryOutcome::Delivered);
                        }
                    }
                    s.delivered(d, &outcomes);
                }
                Step::Close => {
                    output.extend(s.take_output());
                    break;
                }
            }
        }
        Run {
            output: String::from_utf8_lossy(&output).into_owned(),
            stored,
        }
    }

    /// Replays a transcript whole and in every piece size, checks the
    /// replies, and returns the whole run.
    fn transcript(t: &str, failing: &[&str]) -> Run {
        let mut input = Vec::new();
        let mut expected = String::new();
        for line in t.lines().map(str::trim_start).filter(|l| !l.is_empty()) {
            if line == "C:" {
                input.extend_from_slice(b"\r\n");
            } else if let Some(c) = line.strip_prefix("C: ") {
                input.extend_from_slice(c.as_bytes());
                input.extend_from_slice(b"\r\n");
            } else if let Some(s) = line.strip_prefix("S: ") {
                expected.push_str(s);
                expected.push_str("\r\n");
            } else {
                panic!("transcript line {line:?}");
            }
        }
        let whole = run(&input, input.len(), failing);
        assert_eq!(whole.output, expected);
        for piece in [1, 2, 3, 7, 64] {
            let r = run(&input, piece, failing);
            assert_eq!(r.output, expected, "piece size {piece}");
            assert_eq!(r.stored, whole.stored, "piece size {piece}");
        }
        whole
    }

    const HELLO: &str = "
        S: 220 mx.test LMTP Facteur ready
        C: LHLO client
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250-SIZE 64
        S: 250 SMTPUTF8
    ";

    #[test]
    fn delivery_with_mixed_recipients_replies_per_rcpt_in_order() {
        let r = transcript(
            &format!(
                "{HELLO}
                C: MAIL FROM:<sender@example.org> BODY=8BITMIME SMTPUTF8
                S: 250 2.1.0 sender OK
                C: RCPT TO:<ghost@example.org>
                S: 550 5.1.1 no such user here
                C: RCPT TO:<alice+lists@example.org>
                S: 250 2.1.5 recipient OK
                C: RCPT TO:<new@example.org>
                S: 450 4.2.1 mailbox not activated: the user has never logged in
                C: RCPT TO:<bob@example.org>
                S: 452 4.5.3 too many recipients
                C: DATA
                S: 354 send the message, end with <CRLF>.<CRLF>
                C: Subject: hi
                C:
                C: ..dot
                C: .
                S: 250 2.0.0 <alice+lists@example.org> delivered
                C: QUIT
                S: 221 2.0.0 bye"
            ),
            &[],
        );
        assert_eq!(r.stored.len(), 1);
        let (user, rcpt_to, folder, message) = &r.stored[0];
        assert_eq!(user, "alice");
        assert_eq!(rcpt_to, &["alice+lists@example.org"]);
        assert_eq!(folder.as_deref(), Some("lists"));
        assert_eq!(
            String::from_utf8_lossy(message),
            "Return-Path: <sender@example.org>\r\nDelivered-To: alice+lists@example.org\r\n\
             Received: from client\r\n\tby mx.test (Facteur) with LMTP\r\n\
             \tfor <alice+lists@example.org>; Thu, 01 Jan 1970 00:00:00 +0000\r\n\
             Subject: hi\r\n\r\n.dot\r\n"
        );
    }

    #[test]
    fn one_user_twice_is_delivered_once_and_answered_twice() {
        let r = transcript(
            &format!(
                "{HELLO}
                C: MAIL FROM:<>
                S: 250 2.1.0 sender OK
                C: RCPT TO:<alice@example.org>
                S: 250 2.1.5 recipient OK
                C: RCPT TO:<bob@example.org>
                S: 250 2.1.5 recipient OK
                C: RCPT TO:<Alias@example.org>
                S: 250 2.1.5 recipient OK
                C: DATA
                S: 354 send the message, end with <CRLF>.<CRLF>
                C: x
                C: .
                S: 250 2.0.0 <alice@example.org> delivered
                S: 451 4.3.0 <bob@example.org> temporary failure, try again later
                S: 250 2.0.0 <Alias@example.org> delivered
                C: MAIL FROM:<a@b>
                S: 250 2.1.0 sender OK"
            ),
            &["bob"],
        );
        assert_eq!(r.stored.len(), 1);
        assert_eq!(r.stored[0].1, ["alice@example.org", "Alias@example.org"]);
        assert!(r.stored[0].3.starts_with(b"Return-Path: <>\r\n"));
    }

    #[test]
    fn commands_out_of_order_get_503() {
        transcript(
            "S: 220 mx.test LMTP Facteur ready
            C: MAIL FROM:<a@b>
            S: 503 5.5.1 say LHLO first
            C: HELO client
            S: 500 5.5.1 this is LMTP: say LHLO (RFC 2033)
            C: EHLO client
            S: 500 5.5.1 this is LMTP: say LHLO (RFC 2033)
            C: LHLO client
            S: 250-mx.test
            S: 250-PIPELINING
            S: 250-8BITMIME
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-SIZE 64
            S: 250 SMTPUTF8
            C: RCPT TO:<alice@example.org>
            S: 503 5.5.1 need MAIL before RCPT
            C: DATA
            S: 503 5.5.1 need MAIL and RCPT before DATA
            C: MAIL FROM:<a@b>
            S: 250 2.1.0 sender OK
            C: MAIL FROM:<a@b>
            S: 503 5.5.1 nested MAIL command
            C: RCPT TO:<ghost@example.org>
            S: 550 5.1.1 no such user here
            C: DATA
            S: 503 5.5.1 no valid recipients
            C: RSET
            S: 250 2.0.0 reset
            C: RCPT TO:<alice@example.org>
            S: 503 5.5.1 need MAIL before RCPT
            C: VRFY alice
            S: 252 2.5.2 cannot VRFY; send the message and delivery will be attempted
            C: NOOP
            S: 250 2.0.0 OK
            C: BDAT 9 LAST
            C: FOO bar
            S: 503 5.5.1 need MAIL and RCPT before BDAT
            C: STARTTLS
            S: 502 5.5.1 command not implemented
            C: FOO bar
            S: 500 5.5.1 command unrecognized
            C: QUIT
            S: 221 2.0.0 bye
            C: NOOP",
            &[],
        );
    }

    /// RFC 3030: chunks are raw octets (no dot-unstuffing, a line that
    /// looks like a command is data); one reply per chunk, then one per
    /// recipient after the last.
    #[test]
    fn bdat_chunks_are_delivered_raw() {
        let r = transcript(
            &format!(
                "{HELLO}
                C: MAIL FROM:<a@b>
                S: 250 2.1.0 sender OK
                C: RCPT TO:<alice@example.org>
                S: 250 2.1.5 recipient OK
                C: RCPT TO:<bob@example.org>
                S: 250 2.1.5 recipient OK
                C: BDAT 13
                C: Subject: hi
                S: 250 2.0.0 13 octets received
                C: DATA
                S: 503 5.5.1 BDAT transaction in progress: BDAT or RSET
                C: BDAT 15
                C:
                C: ..dot
                C: QUIT
                S: 250 2.0.0 28 octets received
                C: BDAT 0 LAST
                S: 250 2.0.0 <alice@example.org> delivered
                S: 451 4.3.0 <bob@example.org> temporary failure, try again later
                C: NOOP
                S: 250 2.0.0 OK"
            ),
            &["bob"],
        );
        assert_eq!(r.stored.len(), 1);
        let message = String::from_utf8_lossy(&r.stored[0].3).into_owned();
        assert!(
            message.ends_with("\r\nSubject: hi\r\n\r\n..dot\r\nQUIT\r\n"),
            "{message}"
        );
    }

    #[test]
    fn bdat_out_of_sequence_or_too_big_is_read_and_refused() {
        let long = "x".repeat(60);
        let r = transcript(
            &format!(
                "{HELLO}
                C: BDAT 6 LAST
                C: QUIT
                S: 503 5.5.1 need MAIL and RCPT before BDAT
                C: MAIL FROM:<a@b>
                S: 250 2.1.0 sender OK
                C: RCPT TO:<ghost@example.org>
                S: 550 5.1.1 no such user here
                C: BDAT 6
                C: NOOP
                S: 503 5.5.1 no valid recipients
                C: RCPT TO:<alice@example.org>
                S: 250 2.1.5 recipient OK
                C: BDAT 62
                C: {long}
                S: 250 2.0.0 62 octets received
                C: BDAT 62
                C: {long}
                S: 552 5.3.4 message size exceeds fixed maximum of 64 bytes
                C: BDAT 6 LAST
                C: QUIT
                S: 503 5.5.1 need MAIL and RCPT before BDAT
                C: MAIL FROM:<a@b>
                S: 250 2.1.0 sender OK
                C: RCPT TO:<alice@example.org>
                S: 250 2.1.5 recipient OK
                C: BDAT 65 LAST
                C: {long}
                C: x
                S: 552 5.3.4 message size exceeds fixed maximum of 64 bytes
                C: NOOP
                S: 250 2.0.0 OK"
            ),
            &[],
        );
        assert!(r.stored.is_empty());
    }

    #[test]
    fn size_limits_at_mail_and_at_data() {
        let r = transcript(
            &format!(
                "{HELLO}
                C: MAIL FROM:<a@b> SIZE=65
                S: 552 5.3.4 message size exceeds fixed maximum of 64 bytes
                C: MAIL FROM:<a@b> SIZE=64
                S: 250 2.1.0 sender OK
                C: RCPT TO:<alice@example.org>
                S: 250 2.1.5 recipient OK
                C: RCPT TO:<bob@example.org>
                S: 250 2.1.5 recipient OK
                C: DATA
                S: 354 send the message, end with <CRLF>.<CRLF>
                C: 0123456789012345678901234567890123456789
                C: 0123456789012345678901234567890123456789
                C: MAIL FROM:<looks@like.a.command>
                C: .
                S: 552 5.3.4 message size exceeds fixed maximum of 64 bytes
                S: 552 5.3.4 message size exceeds fixed maximum of 64 bytes
                C: NOOP
                S: 250 2.0.0 OK"
            ),
            &[],
        );
        assert!(r.stored.is_empty());
    }

    #[test]
    fn long_lines_are_read_to_their_end_and_refused() {
        let long = "x".repeat(250);
        transcript(
            &format!(
                "{HELLO}
                C: NOOP {long}
                S: 500 5.5.2 line too long
                C: RCPT TO:<{long}@example.org>
                S: 500 5.5.2 line too long
                C: NOOP
                S: 250 2.0.0 OK"
            ),
            &[],
        );
    }

    #[test]
    fn bad_syntax_and_unsupported_parameters() {
        transcript(
            &format!(
                "{HELLO}
                C: MAIL FROM:<a@b> BODY=BINARYMIME
                S: 555 5.5.4 parameter BODY=BINARYMIME not supported
                C: MAIL FROM:a@b
                S: 501 5.5.4 syntax error: MAIL FROM:<reverse-path> [parameters]
                C: MAIL FROM:<a@b>
                S: 250 2.1.0 sender OK
                C: RCPT TO:<alice@example.org> NOTIFY=NEVER
                S: 555 5.5.4 parameter RCPT parameters not supported
                C: RCPT TO:<down@example.org>
                S: 451 4.3.0 temporary failure, try again later"
            ),
            &[],
        );
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let mut t = String::from("S: 220 mx.test LMTP Facteur ready\n");
        for _ in 0..19 {
            t += "C: FOO\nS: 500 5.5.1 command unrecognized\n";
        }
        t += "C: FOO\nS: 500 5.5.1 command unrecognized\n\
              S: 421 4.7.0 too many errors, closing transmission channel\nC: NOOP\n";
        transcript(&t, &[]);
    }

    #[test]
    fn a_message_without_its_final_dot_is_never_delivered() {
        let input = b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\n\
                      DATA\r\nSubject: x\r\n\r\nbody\r\n";
        let r = run(input, 5, &[]);
        assert!(r.stored.is_empty());
        assert!(
            r.output
                .ends_with("354 send the message, end with <CRLF>.<CRLF>\r\n")
        );
    }

    /// Only CRLF . CRLF ends DATA (RFC 5321 §4.1.1.4): a bare-LF end of
    /// data (`LF . LF`, `LF . CRLF`, `CRLF . LF`) inside one DATA must not
    /// end it and let the rest be read as a second transaction.
    #[test]
    fn bare_lf_end_of_data_smuggles_no_second_message() {
        for fake_end in ["\n.\n", "\n.\r\n", "\r\n.\n"] {
            // The whole text stays under the tests' 64-byte limit.
            let input = format!(
                "LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n\
                 x{fake_end}MAIL FROM:<f@x>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
                 y\r\n.\r\nQUIT\r\n"
            );
            for piece in [1, 3, input.len()] {
                let r = run(input.as_bytes(), piece, &[]);
                assert_eq!(r.stored.len(), 1, "{fake_end:?}: {}", r.output);
                let (user, _, _, message) = &r.stored[0];
                assert_eq!(user, "alice", "{fake_end:?}");
                let message = String::from_utf8_lossy(message);
                assert!(
                    message.contains("RCPT TO:<bob@example.org>"),
                    "{fake_end:?}: the rest is the same message: {message}"
                );
                assert_eq!(r.output.matches(" delivered").count(), 1, "{}", r.output);
                assert!(r.output.ends_with("221 2.0.0 bye\r\n"), "{}", r.output);
            }
        }
    }

    /// smtp-proto wraps sizes past 64 bits (`BDAT 99999999999999999999999
    /// LAST` read as a 999-octet chunk): such a BDAT or SIZE= is refused
    /// with 501, and nothing of it is taken as a chunk.
    #[test]
    fn bdat_and_size_past_64_bits_are_refused() {
        transcript(
            &format!(
                "{HELLO}
                C: MAIL FROM:<a@b> SIZE=99999999999999999999999
                S: 501 5.5.4 syntax error: size does not fit in 64 bits
                C: MAIL FROM:<a@b>
                S: 250 2.1.0 sender OK
                C: RCPT TO:<alice@example.org>
                S: 250 2.1.5 recipient OK
                C: BDAT 99999999999999999999999 LAST
                S: 501 5.5.4 syntax error: size does not fit in 64 bits
                C: bdat 18446744073709551616
                S: 501 5.5.4 syntax error: size does not fit in 64 bits
                C: NOOP
                S: 250 2.0.0 OK
                C: BDAT 4 LAST
                C: ab
                S: 250 2.0.0 <alice@example.org> delivered"
            ),
            &[],
        );
        assert!(!oversized_number(b"BDAT 18446744073709551615 LAST\r\n"));
        assert!(!oversized_number(b"BDAT 0000000000000000000000001\r\n"));
        assert!(!oversized_number(b"MAIL FROM:<a@b> SIZE=123\r\n"));
    }

    /// Drives a session over `input` in pieces of `piece` bytes, every
    /// recipient accepted and every delivery done, and returns the most it
    /// ever buffered.
    fn most_buffered(input: &[u8], piece: usize) -> usize {
        let mut s: Session<String> = Session::new(options());
        let mut chunks = input.chunks(piece.max(1));
        let mut most = 0;
        loop {
            most = most.max(s.buffered());
            match s.step() {
                Step::NeedInput => {
                    s.take_output();
                    match chunks.next() {
                        Some(c) => s.feed(c),
                        None => return most,
                    }
                }
                Step::Resolve(p) => {
                    let r = resolve(p.address());
                    s.resolved(p, r);
                }
                Step::Deliver(d) => {
                    let outcomes = vec![DeliveryOutcome::Delivered; d.targets().len()];
                    s.delivered(d, &outcomes);
                }
                Step::Close => return most,
            }
        }
    }

    /// Adversarial LMTP input: protocol words, long lines, dots, bare CR
    /// and LF, BDAT sizes, raw bytes.
    fn hostile_lmtp() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(b"LHLO x\r\n".to_vec()),
            Just(b"MAIL FROM:<a@b>\r\n".to_vec()),
            Just(b"RCPT TO:<alice@example.org>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()),
            Just(b"\n.\n".to_vec()),
            Just(b"RSET\r\n".to_vec()),
            (0u64..200, any::<bool>()).prop_map(|(n, last)| format!(
                "BDAT {n}{}\r\n",
                if last { " LAST" } else { "" }
            )
            .into_bytes()),
            "[0-9]{1,40}".prop_map(|n| format!("BDAT {n} LAST\r\n").into_bytes()),
            (
                1usize..3000,
                prop::sample::select(vec![b'x', b'.', b'\r', b'\n', b' '])
            )
                .prop_map(|(n, b)| vec![b; n]),
            prop::collection::vec(any::<u8>(), 0..64),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        /// Whatever the input and however it is split: no panic, and the
        /// session holds at most one read, one line and one message
        /// (plus the replies to one read's commands).
        #[test]
        fn hostile_input_keeps_the_session_bounded(
            input in hostile_lmtp(),
            piece in 1usize..2048,
        ) {
            let o = options();
            let most = most_buffered(&input, piece);
            // Replies: fewer than one per input byte, each under 512 bytes.
            let bound = piece + o.max_line + o.max_message_size as usize + 512 * (piece + 1);
            proptest::prop_assert!(most <= bound, "{most} > {bound}");
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let mut input = Vec::new();
            for _ in 0..(seed % 300) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pick = [b'\r', b'\n', b'.', b'<', b'>', b':', b' ', b'@', 0xff];
                input.push(if seed.is_multiple_of(3) {
                    pick[(seed >> 8) as usize % pick.len()]
                } else {
                    b"LHLO MAIL FROM:<a@b> RCPT TO:<alice@x> DATA QUIT"[(seed >> 16) as usize % 47]
                });
            }
            let _ = run(&input, (seed % 17) as usize + 1, &["bob"]);
        }
    }
}
