//! The selected mailbox as this session has shown it (RFC 9051 §2.3.1.2,
//! §7.5): the UIDs in sequence-number order as last reported, the MODSEQ
//! up to which flag changes were reported, the keywords announced in
//! FLAGS and the messages recent in this session. Changes in the shared
//! state (this instance's other sessions, other instances via the poller)
//! become EXISTS, RECENT, EXPUNGE, FLAGS and FETCH FLAGS responses in
//! [`Selected::report`].
//!
//! Invariants:
//! - A keyword is in the FLAGS list before any FETCH response shows it
//!   ([`Selected::announce_keywords`]), and the list only grows until the
//!   next SELECT (RFC 3501 §7.2.6: clients keep the last FLAGS), up to
//!   [`MAX_KEYWORDS`]: a keyword created elsewhere once the list is full
//!   (keywords dropped and others set, by other sessions) is not shown to
//!   this session until it selects the mailbox again.
//! - `\Recent` (RFC 3501 §2.3.2, IMAP4rev1 sessions only): a SELECT takes
//!   the messages no session of this instance took yet, and so does every
//!   report of new messages; an EXAMINE shows them without taking them
//!   (RFC 3501 §6.3.2). See [`crate::account::recent`].

use std::collections::HashSet;
use std::sync::Arc;

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use tokio::sync::watch;

use super::{Authed, Enabled, Saved, encode_name, sequence_set_string};
use crate::account::recent::RecentFloors;
use crate::account::{Folder, Mailbox};
use crate::imap::response::{Failure, Out, astring};

/// The flags every message may carry (RFC 9051 §2.3.2).
pub const SYSTEM_FLAGS: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];

/// Distinct keywords a mailbox may carry (STORE and APPEND of one more
/// answer `NO [LIMIT]`), so FLAGS stays short; PERMANENTFLAGS drops `\*`
/// when they are all in use (RFC 3501 §7.1).
pub const MAX_KEYWORDS: usize = 256;

pub struct Selected {
    pub folder: Folder,
    pub mailbox: Arc<Mailbox>,
    pub read_only: bool,
    /// UIDs as the client knows them; index + 1 is the sequence number.
    uids: Vec<u32>,
    /// Flag changes up to this MODSEQ were reported.
    known_modseq: u64,
    /// Keywords announced in the last FLAGS response.
    keywords: Vec<String>,
    /// Woken on every change of the mailbox state.
    pub watch: watch::Receiver<u64>,
    /// The SEARCHRES result (RFC 5182), as UIDs.
    pub saved: Vec<u32>,
    /// UIDs recent in this session, ascending (RFC 3501 §2.3.2).
    recent: Vec<u32>,
    /// How this session takes part in `\Recent`; `None` for IMAP4rev2,
    /// which has no such flag (RFC 9051 appendix E).
    recent_role: Option<RecentRole>,
}

/// A session's share in this instance's `\Recent` bookkeeping.
struct RecentRole {
    floors: Arc<RecentFloors>,
    /// The user's store id: the registry is the instance's.
    user: String,
    mailbox: String,
    uid_validity: u32,
    /// SELECT takes the new messages; EXAMINE only looks (RFC 3501 §6.3.2).
    takes: bool,
}

impl RecentRole {
    /// Of `uids` (a view of the state whose UIDNEXT is `uid_next`), those
    /// recent in this session: taken from the instance's floor (SELECT)
    /// or at or above it (EXAMINE).
    fn recent_among(&self, uids: &[u32], uid_next: u32) -> Vec<u32> {
        let floor = if self.takes {
            self.floors
                .claim(&self.user, &self.mailbox, self.uid_validity, uid_next)
        } else {
            self.floors
                .floor(&self.user, &self.mailbox, self.uid_validity)
        };
        uids.iter().copied().filter(|u| *u >= floor).collect()
    }
}

impl Selected {
    /// SELECT/EXAMINE (RFC 9051 §6.3.2): opens the mailbox, brings it up to
    /// date and writes the untagged responses.
    pub async fn open(
        authed: &Authed,
        name: &str,
        read_only: bool,
        out: &mut Out<'_>,
    ) -> Result<Selected, Failure> {
        // Never from a cached state: a store that cannot be reached gives
        // NO [UNAVAILABLE], not an older view than the client may have
        // seen elsewhere.
        let (folder, mailbox) = authed.account.open_fresh(name).await?;
        let watch = mailbox.watch();
        let (uids, known_modseq, uid_next, uid_validity, keywords, first_unseen) = mailbox
            .read(|s| {
                let uids: Vec<u32> = s.messages().map(|m| m.uid).collect();
                let mut keywords: Vec<String> = Vec::new();
                let mut first_unseen = None;
                for (i, m) in s.messages().enumerate() {
                    if first_unseen.is_none() && !m.flags.contains(&"\\Seen") {
                        first_unseen = Some(i as u32 + 1);
                    }
                    for f in &m.flags {
                        if !f.starts_with('\\')
                            && !keywords.iter().any(|k| k == f)
                            && keywords.len() < MAX_KEYWORDS
                        {
                            keywords.push((*f).to_owned());
                        }
                    }
                }
                (
                    uids,
                    s.highest_modseq(),
                    s.uid_next(),
                    s.uid_validity(),
                    keywords,
                    first_unseen,
                )
            })
            .await;
        let recent_role = (!authed.enabled.rev2).then(|| RecentRole {
            floors: authed.recent.clone(),
            user: authed.account.user().as_str().to_owned(),
            mailbox: folder.id.to_hex(),
            uid_validity,
            takes: !read_only,
        });
        let recent = recent_role
            .as_ref()
            .map(|r| r.recent_among(&uids, uid_next))
            .unwrap_or_default();
        let selected = Selected {
            folder,
            mailbox,
            read_only,
            uids,
            known_modseq,
            keywords,
            watch,
            saved: Vec::new(),
            recent,
            recent_role,
        };
        selected.write_flags(out);
        out.untagged(&format!("{} EXISTS", selected.uids.len()));
        if selected.recent_role.is_some() {
            // RFC 3501 §7.3.2
            out.untagged(&format!("{} RECENT", selected.recent.len()));
        }
        if let Some(seq) = first_unseen
            && !authed.enabled.rev2
        {
            out.untagged(&format!("OK [UNSEEN {seq}] First unseen"));
        }
        out.untagged(&format!("OK [UIDVALIDITY {uid_validity}] UIDs valid"));
        out.untagged(&format!("OK [UIDNEXT {uid_next}] Predicted next UID"));
        if authed.enabled.condstore {
            // RFC 7162 §3.1.2.1
            out.untagged(&format!("OK [HIGHESTMODSEQ {known_modseq}] Highest"));
        }
        selected.write_permanent_flags(out);
        if authed.enabled.utf8 {
            out.untagged(&format!(
                "LIST () \"/\" {}",
                astring(&encode_name(authed, &selected.folder.name))
            ));
        }
        Ok(selected)
    }

    fn write_flags(&self, out: &mut Out<'_>) {
        let mut flags = SYSTEM_FLAGS.join(" ");
        for k in &self.keywords {
            flags.push(' ');
            flags.push_str(k);
        }
        out.untagged(&format!("FLAGS ({flags})"));
    }

    /// `OK [PERMANENTFLAGS (...)]` (RFC 3501 §7.1): `\*` while keywords
    /// may still be created ([`MAX_KEYWORDS`]).
    fn write_permanent_flags(&self, out: &mut Out<'_>) {
        if self.read_only {
            out.untagged("OK [PERMANENTFLAGS ()] Read-only mailbox");
            return;
        }
        let create = if self.keywords.len() < MAX_KEYWORDS {
            " \\*"
        } else {
            ""
        };
        out.untagged(&format!(
            "OK [PERMANENTFLAGS ({}{}{create})] Flags permitted",
            SYSTEM_FLAGS.join(" "),
            self.keywords
                .iter()
                .map(|k| format!(" {k}"))
                .collect::<String>()
        ));
    }

    /// Announces the keywords among `flags` that the client was not told
    /// of yet: FLAGS and PERMANENTFLAGS with them added, to be written
    /// before a FETCH response shows them (RFC 3501 §7.2.6). Keywords are
    /// never taken out of the list while the mailbox stays selected.
    pub fn announce_keywords<'a>(
        &mut self,
        flags: impl IntoIterator<Item = &'a str>,
        out: &mut Out<'_>,
    ) {
        let mut added = false;
        for f in flags {
            if !f.starts_with('\\')
                && !self.keywords.iter().any(|k| k == f)
                && self.keywords.len() < MAX_KEYWORDS
            {
                self.keywords.push(f.to_owned());
                added = true;
            }
        }
        if added {
            self.write_flags(out);
            self.write_permanent_flags(out);
        }
    }

    /// Whether FETCH shows flag `f` to this session: system flags always,
    /// keywords once in its FLAGS list (see [`Selected::announce_keywords`]).
    pub fn shows(&self, f: &str) -> bool {
        f.starts_with('\\') || self.keywords.iter().any(|k| k == f)
    }

    /// The keywords in this session's FLAGS list.
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    /// Whether `uid` is recent in this session (`\Recent` in FLAGS).
    pub fn is_recent(&self, uid: u32) -> bool {
        self.recent.binary_search(&uid).is_ok()
    }

    /// The messages recent in this session, ascending UIDs.
    pub fn recent(&self) -> &[u32] {
        &self.recent
    }

    /// A message's flags as FETCH FLAGS writes them: `flags`, then
    /// `\Recent` if it is recent here.
    pub fn flag_list<S: AsRef<str>>(&self, uid: u32, flags: &[S]) -> String {
        let mut list: Vec<&str> = flags
            .iter()
            .map(AsRef::as_ref)
            .filter(|f| self.shows(f))
            .collect();
        if self.is_recent(uid) {
            list.push("\\Recent");
        }
        list.join(" ")
    }

    /// After ENABLE IMAP4rev2: no more `\Recent` (RFC 9051 appendix E).
    pub fn drop_recent(&mut self) {
        self.recent.clear();
        self.recent_role = None;
    }

    pub fn exists(&self) -> u32 {
        self.uids.len() as u32
    }

    /// The sequence number of `uid` in the client's view.
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }

    pub fn uids(&self) -> &[u32] {
        &self.uids
    }

    /// The UIDs a sequence set names, in ascending order (RFC 9051 §9
    /// `sequence-set`; `*` is the largest number in use). By UID, numbers
    /// that name no message are ignored; by sequence number, a number past
    /// the end is an error. `None` names no message: `$` with an empty
    /// saved result (RFC 5182 §2.1).
    pub fn resolve(&self, set: Option<&SequenceSet>, by_uid: bool) -> Result<Vec<u32>, Failure> {
        let mut picked: Vec<u32> = Vec::new();
        let Some(set) = set else {
            return Ok(picked);
        };
        if by_uid {
            let largest = self.uids.last().copied().unwrap_or(0);
            for seq in set.0.as_ref() {
                let (lo, hi) = bounds(seq, largest);
                let start = self.uids.partition_point(|u| *u < lo);
                let end = self.uids.partition_point(|u| *u <= hi);
                picked.extend_from_slice(&self.uids[start..end]);
            }
        } else {
            let count = self.exists();
            for seq in set.0.as_ref() {
                let has_star = match seq {
                    Sequence::Single(v) => matches!(v, SeqOrUid::Asterisk),
                    Sequence::Range(a, b) => {
                        matches!(a, SeqOrUid::Asterisk) || matches!(b, SeqOrUid::Asterisk)
                    }
                };
                if count == 0 {
                    if has_star {
                        continue;
                    }
                    return Err(Failure::bad(
                        "Invalid message sequence number: the mailbox is empty",
                    ));
                }
                let (lo, hi) = bounds(seq, count);
                if hi > count {
                    return Err(Failure::bad(format!(
                        "Invalid message sequence number {hi} (the mailbox has {count})"
                    )));
                }
                picked.extend_from_slice(&self.uids[lo as usize - 1..hi as usize]);
            }
        }
        picked.sort_unstable();
        picked.dedup();
        Ok(picked)
    }

    /// Reports what changed since the last report (RFC 9051 §7.5.1:
    /// EXPUNGE only when `expunges`), and takes the new view. Returns the
    /// UIDs whose flags were reported. What the client `enabled` decides
    /// between EXPUNGE and VANISHED, and whether MODSEQ is shown.
    pub async fn report(
        &mut self,
        enabled: Enabled,
        out: &mut Out<'_>,
        expunges: bool,
    ) -> Vec<u32> {
        self.watch.borrow_and_update();
        let known = self.known_modseq;
        let last_uid = self.uids.last().copied().unwrap_or(0);
        let (current, highest, changed, keywords, uid_next) = self
            .mailbox
            .read(|s| {
                let current: HashSet<u32> = s.messages().map(|m| m.uid).collect();
                let changed: Vec<(u32, Vec<String>, u64)> = s
                    .changed_since(known)
                    .into_iter()
                    .filter_map(|uid| s.message(uid))
                    .map(|m| {
                        let flags = m.flags.iter().map(|f| (*f).to_owned()).collect();
                        (m.uid, flags, m.modseq)
                    })
                    .collect();
                let mut keywords = Vec::new();
                for (_, flags, _) in &changed {
                    for f in flags {
                        if !f.starts_with('\\') {
                            keywords.push(f.clone());
                        }
                    }
                }
                (current, s.highest_modseq(), changed, keywords, s.uid_next())
            })
            .await;
        // Expunged messages, highest sequence number first so each number
        // is valid when sent.
        if expunges {
            let mut vanished = Vec::new();
            let mut seq = self.uids.len();
            while seq > 0 {
                let uid = self.uids[seq - 1];
                if !current.contains(&uid) {
                    if enabled.qresync {
                        vanished.push(uid);
                    } else {
                        out.untagged(&format!("{seq} EXPUNGE"));
                    }
                    self.uids.remove(seq - 1);
                }
                seq -= 1;
            }
            if !vanished.is_empty() {
                // RFC 7162 §3.2.10
                vanished.reverse();
                out.untagged(&format!("VANISHED {}", sequence_set_string(&vanished)));
            }
        }
        self.recent.retain(|u| current.contains(u));
        self.announce_keywords(keywords.iter().map(String::as_str), out);
        let mut added: Vec<u32> = current.iter().copied().filter(|u| *u > last_uid).collect();
        added.sort_unstable();
        if !added.is_empty() {
            self.uids.extend_from_slice(&added);
            out.untagged(&format!("{} EXISTS", self.uids.len()));
            if let Some(role) = &self.recent_role {
                // RFC 3501 §7.3.2: with the new count.
                let taken = role.recent_among(&added, uid_next);
                self.recent.extend(taken);
                out.untagged(&format!("{} RECENT", self.recent.len()));
            }
        }
        let mut reported = Vec::new();
        for (uid, flags, modseq) in changed {
            if uid > last_uid {
                continue; // new to the client: it fetches their flags
            }
            if let Some(seq) = self.seq_of(uid) {
                let modseq = if enabled.condstore {
                    format!(" MODSEQ ({modseq})")
                } else {
                    String::new()
                };
                out.untagged(&format!(
                    "{seq} FETCH (UID {uid} FLAGS ({}){modseq})",
                    self.flag_list(uid, &flags)
                ));
                reported.push(uid);
            }
        }
        self.known_modseq = highest;
        reported
    }

    /// Marks flag changes up to now as reported (after a STORE that
    /// answered for them itself).
    pub fn flags_reported_up_to(&mut self, modseq: u64) {
        self.known_modseq = self.known_modseq.max(modseq);
    }

    pub fn known_modseq(&self) -> u64 {
        self.known_modseq
    }
}

impl Selected {
    /// UIDs in `known` (UIDs the client had, `None`: all below UIDNEXT)
    /// that name no message now, as a sequence set (empty if none): what
    /// VANISHED (EARLIER) reports. The complement of the present UIDs, so
    /// it never depends on how long expunges are remembered; RFC 7162
    /// §3.2.5.2 allows UIDs that never existed.
    pub async fn vanished_among(&self, known: Option<&SequenceSet>) -> String {
        let present = &self.uids;
        let uid_next = self.mailbox.read(|s| s.uid_next()).await;
        let largest = uid_next.saturating_sub(1);
        let mut wanted: Vec<(u32, u32)> = match known {
            Some(set) => set.0.as_ref().iter().map(|s| bounds(s, largest)).collect(),
            None => vec![(1, largest)],
        };
        wanted.sort_unstable();
        let mut gone: Vec<(u32, u32)> = Vec::new();
        let mut push = |lo: u32, hi: u32| {
            if lo > hi {
                return;
            }
            match gone.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => gone.push((lo, hi)),
            }
        };
        for (lo, hi) in wanted {
            let (lo, hi) = (lo.max(1), hi.min(largest));
            if lo > hi {
                continue;
            }
            let mut next = lo;
            let start = present.partition_point(|u| *u < lo);
            for uid in present[start..].iter().take_while(|u| **u <= hi) {
                push(next, uid - 1);
                next = uid + 1;
            }
            push(next, hi);
        }
        gone.iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}:{hi}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The inclusive bounds of one element of a sequence set.
fn bounds(seq: &Sequence, largest: u32) -> (u32, u32) {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    match seq {
        Sequence::Single(v) => (value(v), value(v)),
        Sequence::Range(a, b) => {
            let (a, b) = (value(a), value(b));
            (a.min(b), a.max(b))
        }
    }
}

impl Selected {
    /// The saved result in both numberings, for `$` (RFC 5182 §2.1).
    pub fn saved_sets(&self) -> Saved {
        let seqs: Vec<u32> = self.saved.iter().filter_map(|u| self.seq_of(*u)).collect();
        let uids: Vec<u32> = self
            .saved
            .iter()
            .copied()
            .filter(|u| self.seq_of(*u).is_some())
            .collect();
        Saved {
            uids: sequence_set_string(&uids),
            seqs: sequence_set_string(&seqs),
        }
    }
}
