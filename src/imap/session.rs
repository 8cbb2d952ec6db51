//! One IMAP session's state machine (RFC 9051 §3): not authenticated,
//! authenticated, selected, logout. [`Session::handle`] runs one decoded
//! command and writes its responses; it never reads the socket (the driver
//! does, for the few commands that exchange more than one message: STARTTLS,
//! AUTHENTICATE, IDLE, which come back as a [`Flow`]).
//!
//! Invariants:
//! - Every command gets exactly one tagged response, written here.
//! - A command allowed only in some states gets `BAD` in the others; the
//!   handlers get the per-state context they need as arguments, so a
//!   handler cannot run in the wrong state.
//! - Pending changes of the selected mailbox (other sessions, other
//!   instances) are reported after every command, never mid-response, and
//!   expunges never during a FETCH, STORE or SEARCH by sequence number
//!   (RFC 9051 §7.5.1).

use std::sync::Arc;

use imap_codec::imap_types::command::{CommandBody, FetchModifier, StoreModifier};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::fetch::MessageDataItemName;
use imap_codec::imap_types::response::StatusKind;
use imap_codec::imap_types::sequence::SequenceSet;

use super::auth::{self, Sasl};
use super::cmd::{
    append, copy_move, enable, expunge, fetch, mailboxes, quota, search, select, sort, store,
    thread,
};
use super::grammar::ext::{Ext, Message};
use super::response::{Done, Failure, Out, Outcome, code};
use super::state::{Authed, Peer, Selected, name_of};
use super::{Imap, capability};
use crate::crypto::Password;

/// A decoded command with what [`super::grammar`] found beyond
/// imap-codec's grammar.
#[derive(Debug)]
pub struct Request {
    pub tag: Tag<'static>,
    pub body: CommandBody<'static>,
    pub ext: Ext,
}

/// What the driver does after a command.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Upgrade the connection to TLS (the tagged OK is already written).
    StartTls,
    /// Enter IDLE: send the continuation, wait for DONE.
    Idle(Tag<'static>),
    /// Continue an AUTHENTICATE exchange.
    Sasl(Tag<'static>, Sasl),
    /// The connection ends (BYE and tagged OK written).
    Logout,
}

pub enum State {
    Fresh,
    Authed(Box<Authed>),
    Selected(Box<Authed>, Box<Selected>),
    Logout,
}

pub struct Session {
    pub imap: Arc<Imap>,
    pub peer: Peer,
    /// Whether the connection is TLS now (implicit or after STARTTLS).
    pub tls: bool,
    pub state: State,
}

impl Session {
    pub fn new(imap: Arc<Imap>, peer: Peer) -> Session {
        Session {
            tls: peer.tls,
            imap,
            peer,
            state: State::Fresh,
        }
    }

    /// Whether LOGIN/AUTHENTICATE may be used on this connection now.
    pub fn login_allowed(&self) -> bool {
        self.tls || self.imap.options.plaintext_auth || self.peer.remote.ip().is_loopback()
    }

    /// RFC 9051 §11.1: no password in clear text off loopback unless
    /// configured.
    fn require_login_allowed(&self) -> Result<(), Failure> {
        if self.login_allowed() {
            return Ok(());
        }
        Err(Failure::no(
            Some(code("PRIVACYREQUIRED")),
            "Use STARTTLS or the TLS port before logging in",
        ))
    }

    pub fn capabilities(&self) -> String {
        let authenticated = matches!(self.state, State::Authed(_) | State::Selected(..));
        capability::list(
            authenticated,
            self.tls,
            self.login_allowed(),
            self.imap.tls.is_some(),
            self.imap.options.max_message,
        )
    }

    /// The state's row in [`allowed_in`]'s table.
    fn phase(&self) -> Phase {
        match self.state {
            State::Fresh => Phase::NotAuthenticated,
            State::Authed(_) => Phase::Authenticated,
            State::Selected(..) => Phase::Selected,
            State::Logout => Phase::Logout,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authed(_) | State::Selected(..))
    }

    /// Whether the logged-in account locked itself (its user was
    /// deleted, `Account::check_keyring`): the connection ends with BYE.
    pub fn account_locked(&self) -> bool {
        match &self.state {
            State::Authed(a) | State::Selected(a, _) => a.account.is_locked(),
            _ => false,
        }
    }

    /// The logged-in account, shared (for waits that outlive a borrow).
    pub fn account(&self) -> Option<Arc<crate::account::Account>> {
        match &self.state {
            State::Authed(a) | State::Selected(a, _) => Some(a.account.clone()),
            _ => None,
        }
    }

    pub fn selected(&mut self) -> Option<&mut Selected> {
        match &mut self.state {
            State::Selected(_, s) => Some(s),
            _ => None,
        }
    }

    /// Runs one command; writes its untagged and tagged responses.
    pub async fn handle(&mut self, request: Request, out: &mut Out<'_>) -> std::io::Result<Flow> {
        let Request { tag, body, ext } = request;
        let expunges = expunge_allowed(&body);
        let mut flow = Flow::Continue;
        let outcome = self.dispatch(&tag, body, ext, out, &mut flow).await;
        match outcome {
            Ok(done) => {
                if !matches!(flow, Flow::Idle(_) | Flow::Sasl(..)) {
                    self.report(out, expunges).await?;
                    out.status(Some(&tag), StatusKind::Ok, done.code, &done.text);
                }
            }
            Err(failure) => {
                flow = Flow::Continue;
                if let Err(e) = self.report(out, expunges).await {
                    tracing::debug!(error = %e, "update report failed");
                }
                failure.write(&tag, out)?;
            }
        }
        Ok(flow)
    }

    /// Reports pending changes of the selected mailbox.
    pub async fn report(&mut self, out: &mut Out<'_>, expunges: bool) -> std::io::Result<()> {
        if let State::Selected(authed, selected) = &mut self.state {
            selected.report(authed.enabled, out, expunges).await;
        }
        Ok(())
    }

    async fn dispatch(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
        ext: Ext,
        out: &mut Out<'_>,
        flow: &mut Flow,
    ) -> Outcome {
        // Any state (RFC 9051 §6.1).
        match body {
            CommandBody::Capability => {
                out.untagged(&format!("CAPABILITY {}", self.capabilities()));
                Done::ok("CAPABILITY completed")
            }
            CommandBody::Noop => {
                self.refresh().await?;
                Done::ok("NOOP completed")
            }
            CommandBody::Logout => {
                out.bye("Logging out");
                *flow = Flow::Logout;
                // Dropping the state ends the session's hold on its account.
                self.state = State::Logout;
                Done::ok("LOGOUT completed")
            }
            CommandBody::Id { .. } => {
                out.untagged(&format!(
                    "ID (\"name\" \"Facteur\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                Done::ok("ID completed")
            }
            CommandBody::Enable { capabilities } => match &mut self.state {
                State::Authed(a) => enable::enable(a, None, &capabilities, out),
                State::Selected(a, s) => enable::enable(a, Some(s), &capabilities, out),
                _ => Err(Failure::bad("ENABLE needs an authenticated session")),
            },
            body => self.dispatch_state(tag, body, ext, out, flow).await,
        }
    }

    async fn dispatch_state(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
        ext: Ext,
        out: &mut Out<'_>,
        flow: &mut Flow,
    ) -> Outcome {
        if let Some(refusal) = refusal(self.phase(), &body) {
            return Err(refusal);
        }
        if let State::Fresh = self.state {
            return self.not_authenticated(tag, body, out, flow).await;
        }
        // Selected-state commands first (RFC 9051 §6.4).
        if let State::Selected(authed, selected) = &mut self.state {
            match body {
                CommandBody::Check => {
                    authed.account.refresh(Some(&selected.mailbox)).await?;
                    return Done::ok("CHECK completed");
                }
                CommandBody::Close => {
                    if !selected.read_only {
                        expunge::expunge_deleted(selected, None).await?;
                        quota::changed(&self.imap, authed).await;
                    }
                    self.deselect();
                    return Done::ok("CLOSE completed");
                }
                CommandBody::Unselect => {
                    self.deselect();
                    return Done::ok("UNSELECT completed");
                }
                CommandBody::Expunge => {
                    read_write(selected)?;
                    expunge::expunge_deleted(selected, None).await?;
                    quota::changed(&self.imap, authed).await;
                    return Done::ok("EXPUNGE completed");
                }
                CommandBody::ExpungeUid { sequence_set } => {
                    read_write(selected)?;
                    let uids = selected.resolve(set_of(&sequence_set, &ext), true)?;
                    expunge::expunge_deleted(selected, Some(&uids)).await?;
                    if !uids.is_empty() {
                        quota::changed(&self.imap, authed).await;
                    }
                    return Done::ok("UID EXPUNGE completed");
                }
                CommandBody::Search {
                    charset,
                    criteria,
                    uid,
                } => {
                    // A MODSEQ key enables CONDSTORE (RFC 7162 §3.1).
                    return search::search(
                        tag,
                        authed,
                        selected,
                        charset,
                        criteria.into_inner(),
                        uid,
                        ext,
                        out,
                    )
                    .await;
                }
                CommandBody::Sort {
                    sort_criteria,
                    charset,
                    search_criteria,
                    uid,
                } => {
                    let criteria = sort_criteria.as_ref();
                    let keys = search_criteria.as_ref();
                    return sort::sort(
                        tag, authed, selected, criteria, &charset, keys, uid, ext, out,
                    )
                    .await;
                }
                CommandBody::Thread {
                    algorithm,
                    charset,
                    search_criteria,
                    uid,
                } => {
                    let keys = search_criteria.as_ref();
                    return thread::thread(selected, &algorithm, &charset, keys, uid, out).await;
                }
                CommandBody::Fetch {
                    sequence_set,
                    macro_or_item_names,
                    uid,
                    modifiers,
                } => {
                    let mut changed_since = None;
                    let mut vanished = false;
                    for m in &modifiers {
                        match m {
                            FetchModifier::ChangedSince(v) => changed_since = Some(v.get()),
                            FetchModifier::Vanished => vanished = true,
                        }
                    }
                    if vanished {
                        // RFC 7162 §3.2.6: UID FETCH only, with CHANGEDSINCE,
                        // after ENABLE QRESYNC.
                        if !(uid && changed_since.is_some() && authed.enabled.qresync) {
                            return Err(Failure::bad(
                                "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC",
                            ));
                        }
                        let gone = match set_of(&sequence_set, &ext) {
                            Some(set) => selected.vanished_among(Some(set)).await,
                            None => String::new(),
                        };
                        if !gone.is_empty() {
                            out.untagged(&format!("VANISHED (EARLIER) {gone}"));
                        }
                    }
                    let items = fetch::items(macro_or_item_names);
                    let uids = selected.resolve(set_of(&sequence_set, &ext), uid)?;
                    if changed_since.is_some()
                        || items
                            .iter()
                            .any(|i| matches!(i, MessageDataItemName::ModSeq))
                    {
                        // RFC 7162 §3.1: a CONDSTORE-enabling command.
                        authed.enable_condstore(Some(selected), out);
                    }
                    let condstore = authed.enabled.condstore;
                    return fetch::fetch(
                        selected,
                        &uids,
                        items,
                        uid,
                        changed_since,
                        condstore,
                        out,
                    )
                    .await;
                }
                CommandBody::Store {
                    sequence_set,
                    kind,
                    response,
                    flags,
                    uid,
                    modifiers,
                } => {
                    let unchanged_since = modifiers
                        .iter()
                        .map(|m| match m {
                            StoreModifier::UnchangedSince(v) => *v,
                        })
                        .next();
                    if unchanged_since.is_some() {
                        // RFC 7162 §3.1: a CONDSTORE-enabling command.
                        authed.enable_condstore(Some(selected), out);
                    }
                    read_write(selected)?;
                    let uids = selected.resolve(set_of(&sequence_set, &ext), uid)?;
                    let change = store::Change {
                        kind,
                        flags,
                        unchanged_since,
                    };
                    let enabled = authed.enabled;
                    return store::store(selected, &uids, change, response, uid, enabled, out)
                        .await;
                }
                CommandBody::Copy {
                    sequence_set,
                    mailbox,
                    uid,
                } => {
                    let uids = selected.resolve(set_of(&sequence_set, &ext), uid)?;
                    let target = name_of(authed, &mailbox)?;
                    quota::check_copy(&self.imap, authed, selected, &uids).await?;
                    let copied =
                        copy_move::copy(authed, selected, &uids, &target, false, out).await;
                    if copied.is_ok() && !uids.is_empty() {
                        // Copies share their bodies: LMTP's tail of new
                        // bodies cannot see them, the published figure must.
                        quota::changed(&self.imap, authed).await;
                    }
                    return copied;
                }
                CommandBody::Move {
                    sequence_set,
                    mailbox,
                    uid,
                } => {
                    read_write(selected)?;
                    let uids = selected.resolve(set_of(&sequence_set, &ext), uid)?;
                    let target = name_of(authed, &mailbox)?;
                    return copy_move::copy(authed, selected, &uids, &target, true, out).await;
                }
                CommandBody::Idle => {
                    // Entering IDLE syncs (the poller takes over after).
                    authed.account.refresh(Some(&selected.mailbox)).await?;
                    *flow = Flow::Idle(tag.clone());
                    return Done::ok("IDLE terminated");
                }
                other => return self.authenticated(tag, other, ext, out, flow).await,
            }
        }
        self.authenticated(tag, body, ext, out, flow).await
    }

    /// NOOP: delivered mail and the selected mailbox brought up to date
    /// (RFC 9051 §6.1.2: NOOP is how a client polls), so a one-shot
    /// client never waits for the background poll.
    async fn refresh(&mut self) -> Result<(), Failure> {
        match &self.state {
            State::Authed(a) => a.account.refresh(None).await?,
            State::Selected(a, s) => a.account.refresh(Some(&s.mailbox)).await?,
            _ => {}
        }
        Ok(())
    }

    /// Enters the authenticated state. Mail delivered while the user had
    /// no session is moved into INBOX now, so the first SELECT or STATUS
    /// of a one-shot client shows it (they drain again anyway: a failure
    /// here is only logged).
    async fn logged_in(&mut self, authed: Authed) {
        if let Err(e) = authed.account.drain_incoming().await {
            tracing::warn!(error = %e, "draining delivered mail at login failed");
        }
        self.state = State::Authed(Box::new(authed));
    }

    fn deselect(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Logout);
        self.state = match state {
            State::Selected(authed, _) => State::Authed(authed),
            other => other,
        };
    }

    async fn not_authenticated(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
        out: &mut Out<'_>,
        flow: &mut Flow,
    ) -> Outcome {
        match body {
            CommandBody::StartTLS => {
                if self.tls {
                    return Err(Failure::bad("TLS is already active"));
                }
                if self.imap.tls.is_none() {
                    return Err(Failure::bad("STARTTLS is not offered here"));
                }
                *flow = Flow::StartTls;
                Done::ok("Begin TLS negotiation now")
            }
            CommandBody::Login { username, password } => {
                self.require_login_allowed()?;
                let login = String::from_utf8_lossy(username.as_ref()).into_owned();
                let password =
                    Password::new(String::from_utf8_lossy(password.declassify().as_ref()));
                let authed =
                    auth::login(&self.imap, self.peer.remote.ip(), &login, password).await?;
                self.logged_in(authed).await;
                Done::with_code(code_capability(&self.capabilities()), "LOGIN completed")
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                self.require_login_allowed()?;
                let mut sasl = Sasl::start(&mechanism)?;
                let initial = initial_response.map(|r| r.declassify().to_vec());
                match sasl.step(initial.as_deref())? {
                    auth::SaslStep::Challenge(challenge) => {
                        out.challenge(&challenge);
                        *flow = Flow::Sasl(tag.clone(), sasl);
                        Done::ok("continue")
                    }
                    auth::SaslStep::Done(login, password) => {
                        self.finish_login(login, password).await
                    }
                }
            }
            _ => Err(Failure::bad("Log in first")),
        }
    }

    /// Continues an AUTHENTICATE exchange with the client's answer
    /// (`None`: the client cancelled with `*`). Returns the next challenge,
    /// or the outcome (the driver writes the tagged response).
    pub async fn sasl_continue(
        &mut self,
        sasl: &mut Sasl,
        answer: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let Some(answer) = answer else {
            return Err(Failure::bad("AUTHENTICATE cancelled"));
        };
        match sasl.step(Some(answer))? {
            auth::SaslStep::Challenge(c) => Ok(Some(c)),
            auth::SaslStep::Done(login, password) => {
                self.finish_login(login, password).await?;
                Ok(None)
            }
        }
    }

    async fn finish_login(&mut self, login: String, password: Password) -> Outcome {
        let authed = auth::login(&self.imap, self.peer.remote.ip(), &login, password).await?;
        self.logged_in(authed).await;
        Done::with_code(
            code_capability(&self.capabilities()),
            "AUTHENTICATE completed",
        )
    }

    async fn authenticated(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
        ext: Ext,
        out: &mut Out<'_>,
        flow: &mut Flow,
    ) -> Outcome {
        let authed = match &mut self.state {
            State::Authed(a) | State::Selected(a, _) => a,
            _ => return Err(Failure::bad("Log in first")),
        };
        match body {
            CommandBody::StartTLS
            | CommandBody::Login { .. }
            | CommandBody::Authenticate { .. } => Err(Failure::bad("Already logged in")),
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                let resync = select::parameters(authed, &parameters)?;
                self.select(&mailbox, false, resync, out).await
            }
            CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                let resync = select::parameters(authed, &parameters)?;
                self.select(&mailbox, true, resync, out).await
            }
            CommandBody::Create { mailbox } => mailboxes::create(authed, &mailbox, ext).await,
            CommandBody::Delete { mailbox } => {
                let name = name_of(authed, &mailbox)?;
                if let State::Selected(_, s) = &self.state
                    && s.folder.name == name
                {
                    self.deselect();
                }
                let authed = match &mut self.state {
                    State::Authed(a) | State::Selected(a, _) => a,
                    _ => return Err(Failure::bad("Log in first")),
                };
                let deleted = mailboxes::delete(authed, &name).await?;
                quota::changed(&self.imap, authed).await;
                Ok(deleted)
            }
            CommandBody::Rename { from, to } => mailboxes::rename(authed, &from, &to).await,
            CommandBody::Subscribe { mailbox } => {
                mailboxes::subscribe(authed, &mailbox, true).await
            }
            CommandBody::Unsubscribe { mailbox } => {
                mailboxes::subscribe(authed, &mailbox, false).await
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => mailboxes::list(authed, &reference, &mailbox_wildcard, ext, false, out).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => mailboxes::list(authed, &reference, &mailbox_wildcard, ext, true, out).await,
            CommandBody::Namespace => {
                out.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                Done::ok("NAMESPACE completed")
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => mailboxes::status(authed, &mailbox, &item_names, ext, out).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let first = Message::new(flags, date, message);
                append::append(&self.imap, authed, &mailbox, first, ext).await
            }
            CommandBody::GetQuota { root } => {
                quota::get_quota(&self.imap, authed, &root, out).await
            }
            CommandBody::GetQuotaRoot { mailbox } => {
                quota::get_quota_root(&self.imap, authed, &mailbox, out).await
            }
            CommandBody::SetQuota { .. } => quota::set_quota(),
            CommandBody::Idle => {
                authed.account.refresh(None).await?;
                *flow = Flow::Idle(tag.clone());
                Done::ok("IDLE terminated")
            }
            other => Err(Failure::bad(format!("{} is not supported", other.name()))),
        }
    }

    async fn select(
        &mut self,
        mailbox: &imap_codec::imap_types::mailbox::Mailbox<'_>,
        read_only: bool,
        resync: Option<select::Resync>,
        out: &mut Out<'_>,
    ) -> Outcome {
        // A failed SELECT leaves no mailbox selected (RFC 9051 §6.3.2).
        let had_selection = matches!(self.state, State::Selected(..));
        self.deselect();
        if had_selection {
            out.ok(Some(code("CLOSED")), "Previous mailbox closed");
        }
        let State::Authed(authed) = &mut self.state else {
            return Err(Failure::bad("Log in first"));
        };
        let selected = select::open(authed, mailbox, read_only, resync, out).await?;
        self.state = match std::mem::replace(&mut self.state, State::Logout) {
            State::Authed(authed) => State::Selected(authed, Box::new(selected)),
            other => other,
        };
        if read_only {
            Done::with_code(code("READ-ONLY"), "EXAMINE completed")
        } else {
            Done::with_code(code("READ-WRITE"), "SELECT completed")
        }
    }
}

/// The states of RFC 9051 §3, as the command table names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    NotAuthenticated,
    Authenticated,
    Selected,
    Logout,
}

/// Where a command may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Any state (RFC 9051 §6.1).
    Any,
    /// Not authenticated only (§6.2).
    NotAuthenticated,
    /// Authenticated or selected (§6.3).
    Authenticated,
    /// Selected only (§6.4).
    Selected,
    /// A command imap-codec parses that Facteur does not offer.
    Nowhere,
}

/// The one table of which command runs in which state; the dispatcher
/// asks it ([`refusal`]) before running anything.
pub fn allowed_in(body: &CommandBody<'_>) -> Allowed {
    use CommandBody as C;
    match body {
        C::Capability | C::Noop | C::Logout | C::Id { .. } => Allowed::Any,
        C::StartTLS | C::Login { .. } | C::Authenticate { .. } => Allowed::NotAuthenticated,
        C::Enable { .. }
        | C::Select { .. }
        | C::Examine { .. }
        | C::Create { .. }
        | C::Delete { .. }
        | C::Rename { .. }
        | C::Subscribe { .. }
        | C::Unsubscribe { .. }
        | C::List { .. }
        | C::Lsub { .. }
        | C::Namespace
        | C::Status { .. }
        | C::Append { .. }
        | C::GetQuota { .. }
        | C::GetQuotaRoot { .. }
        | C::SetQuota { .. }
        | C::Idle => Allowed::Authenticated,
        C::Check
        | C::Close
        | C::Unselect
        | C::Expunge
        | C::ExpungeUid { .. }
        | C::Search { .. }
        | C::Sort { .. }
        | C::Thread { .. }
        | C::Fetch { .. }
        | C::Store { .. }
        | C::Copy { .. }
        | C::Move { .. } => Allowed::Selected,
        _ => Allowed::Nowhere,
    }
}

/// `BAD` for a command the table does not allow in `phase`, with the
/// text each case has always had.
fn refusal(phase: Phase, body: &CommandBody<'_>) -> Option<Failure> {
    let allowed = allowed_in(body);
    let text = match (phase, allowed) {
        (_, Allowed::Any) => return None,
        (Phase::Logout | Phase::NotAuthenticated, _)
            if matches!(body, CommandBody::Enable { .. }) =>
        {
            "ENABLE needs an authenticated session".to_owned()
        }
        (Phase::Logout, _) => "The session is ending".to_owned(),
        (Phase::NotAuthenticated, Allowed::NotAuthenticated) => return None,
        (Phase::NotAuthenticated, _) => "Log in first".to_owned(),
        (_, Allowed::NotAuthenticated) => "Already logged in".to_owned(),
        (_, Allowed::Authenticated) | (Phase::Selected, Allowed::Selected) => return None,
        (_, Allowed::Selected) => "No mailbox selected".to_owned(),
        (_, Allowed::Nowhere) => format!("{} is not supported", body.name()),
    };
    Some(Failure::bad(text))
}

/// `[CAPABILITY ...]` after a login (RFC 9051 §6.2.3: clients then skip a
/// CAPABILITY round trip).
fn code_capability(caps: &str) -> imap_codec::imap_types::response::Code<'static> {
    imap_codec::imap_types::response::Code::Other(
        imap_codec::imap_types::response::CodeOther::unvalidated(
            format!("CAPABILITY {caps}").into_bytes(),
        ),
    )
}

/// The message set a command names: `None` when it is `$` and the saved
/// result is empty, so it acts on no message (RFC 5182 §2.1).
fn set_of<'a>(set: &'a SequenceSet, ext: &Ext) -> Option<&'a SequenceSet> {
    (!ext.no_messages).then_some(set)
}

fn read_write(selected: &Selected) -> Result<(), Failure> {
    if selected.read_only {
        return Err(Failure::no(
            Some(code("READ-ONLY")),
            "The mailbox is selected read-only (EXAMINE)",
        ));
    }
    Ok(())
}

/// RFC 9051 §7.5.1: no EXPUNGE response during FETCH, STORE or SEARCH
/// (and SORT, THREAD) by sequence number (the UID forms may have them).
fn expunge_allowed(body: &CommandBody<'_>) -> bool {
    !matches!(
        body,
        CommandBody::Fetch { uid: false, .. }
            | CommandBody::Store { uid: false, .. }
            | CommandBody::Search { uid: false, .. }
            | CommandBody::Sort { uid: false, .. }
            | CommandBody::Thread { uid: false, .. }
    )
}
