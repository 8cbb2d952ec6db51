//! THREAD (RFC 5256 §3): the ORDEREDSUBJECT and REFERENCES algorithms
//! (§4) over what the summary knows of each message, and the
//! `thread-list` syntax they answer with (§5).
//!
//! Pure: the caller runs the search keys (as SEARCH does) and turns each
//! match into a [`Threadable`]. Every traversal is iterative (a reply
//! chain of 100,000 messages is 100,000 deep) and the memory is a small
//! record per message: at most [`MAX_REFERENCES`] Message-IDs of at most
//! [`MAX_ID`] bytes each.

use std::collections::HashMap;

use super::sort::{base_subject, casemap, sent_date, subject};
use crate::mailbox::summary::MessageSummary;

/// How many of a message's References are kept: the last ones, nearest
/// its parent (the earlier ones only link ancestors, which their own
/// messages usually link too).
pub const MAX_REFERENCES: usize = 100;
/// Longest Message-ID kept; a longer one is treated as absent.
pub const MAX_ID: usize = 998;

/// What threading needs of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Threadable {
    pub seq: u32,
    pub uid: u32,
    /// The sent date (RFC 5256 §2.2: INTERNALDATE when Date: is missing
    /// or invalid).
    pub date: i64,
    /// Base subject (§2.1), case-mapped for comparison.
    pub subject: String,
    /// Whether the subject marks a reply or forward.
    pub reply: bool,
    pub message_id: Option<String>,
    /// The References Message-IDs, or when it has none the first one of
    /// In-Reply-To (§4 REFERENCES step 1.A).
    pub references: Vec<String>,
}

impl Threadable {
    pub fn new(seq: u32, uid: u32, internal_date: i64, summary: &MessageSummary) -> Threadable {
        let (base, reply) = base_subject(&casemap(subject(summary)));
        let e = &summary.envelope;
        let message_id = e
            .message_id
            .as_ref()
            .and_then(|m| message_ids(&m.to_str_lossy(), 1).pop());
        let mut references = summary
            .search_headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("references"))
            .map(|(_, value)| message_ids(value, usize::MAX))
            .unwrap_or_default();
        if references.is_empty()
            && let Some(irt) = &e.in_reply_to
        {
            references = message_ids(&irt.to_str_lossy(), 1);
        }
        if references.len() > MAX_REFERENCES {
            references.drain(..references.len() - MAX_REFERENCES);
        }
        Threadable {
            seq,
            uid,
            date: sent_date(summary, internal_date),
            subject: base,
            reply,
            message_id,
            references,
        }
    }
}

/// The `<...>` Message-IDs of a field value, brackets and whitespace
/// removed, at most `max` of them (the first ones).
pub fn message_ids(value: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while out.len() < max {
        let Some(open) = rest.find('<') else { break };
        let after = &rest[open + 1..];
        let Some(close) = after.find(['>', '<']) else {
            break;
        };
        if after.as_bytes()[close] == b'<' {
            rest = &after[close..];
            continue;
        }
        let id: String = after[..close]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if !id.is_empty() && id.len() <= MAX_ID {
            out.push(id);
        }
        rest = &after[close + 1..];
    }
    out
}

/// A thread tree: node `i` is a message (an index into the input) or a
/// dummy holding siblings together.
#[derive(Debug, Default)]
pub struct Threads {
    nodes: Vec<Node>,
    roots: Vec<usize>,
}

#[derive(Clone, Debug, Default)]
struct Node {
    message: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

impl Threads {
    fn add(&mut self, message: Option<usize>) -> usize {
        self.nodes.push(Node {
            message,
            ..Node::default()
        });
        self.nodes.len() - 1
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes[child].parent.take() {
            self.nodes[p].children.retain(|&c| c != child);
        }
    }

    /// Whether `node` is `ancestor` or below it. Walks up from `node`
    /// and down from `ancestor` in turns, so the cost is the smaller of
    /// the depth and the subtree (a new message usually has no
    /// descendants, however deep its thread).
    fn is_under(&self, node: usize, ancestor: usize) -> bool {
        let mut up = Some(node);
        let mut down = std::collections::VecDeque::from([ancestor]);
        loop {
            match up {
                Some(n) if n == ancestor => return true,
                Some(n) => up = self.nodes[n].parent,
                None => return false,
            }
            match down.pop_front() {
                Some(d) if d == node => return true,
                Some(d) => down.extend(self.nodes[d].children.iter().copied()),
                None => return false,
            }
        }
    }

    /// Every node reachable from the roots, parents before children.
    fn preorder(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<usize> = self.roots.iter().rev().copied().collect();
        while let Some(n) = stack.pop() {
            order.push(n);
            stack.extend(self.nodes[n].children.iter().rev());
        }
        order
    }

    /// The `thread-list`s (RFC 5256 §5), numbers from `number` (the
    /// sequence number or UID of an input index).
    pub fn write(&self, number: impl Fn(usize) -> u32) -> String {
        enum Step {
            Node(usize),
            Text(&'static str),
        }
        let mut out = String::new();
        let mut stack: Vec<Step> = Vec::new();
        for &root in self.roots.iter().rev() {
            stack.push(Step::Text(")"));
            stack.push(Step::Node(root));
            stack.push(Step::Text("("));
        }
        while let Some(step) = stack.pop() {
            let n = match step {
                Step::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Step::Node(n) => n,
            };
            let node = &self.nodes[n];
            if let Some(m) = node.message {
                out.push_str(&number(m).to_string());
            }
            match (node.message, node.children.as_slice()) {
                (_, []) => {}
                // One child continues the chain: `1 2 3`.
                (Some(_), [only]) => {
                    stack.push(Step::Node(*only));
                    stack.push(Step::Text(" "));
                }
                // Several (or a dummy's): each in parentheses.
                (message, children) => {
                    for &c in children.iter().rev() {
                        stack.push(Step::Text(")"));
                        stack.push(Step::Node(c));
                        stack.push(Step::Text("("));
                    }
                    if message.is_some() {
                        stack.push(Step::Text(" "));
                    }
                }
            }
        }
        out
    }
}

/// ORDEREDSUBJECT (§4): messages grouped by base subject, each group a
/// thread whose first message (by sent date) has the others as children;
/// threads in the sent-date order of their first message.
pub fn ordered_subject(items: &[Threadable]) -> Threads {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&items[a], &items[b]);
        (&a.subject, a.date, a.seq).cmp(&(&b.subject, b.date, b.seq))
    });
    let mut threads = Threads::default();
    let mut current: Option<(usize, &str)> = None;
    for i in order {
        let node = threads.add(Some(i));
        match current {
            Some((root, subject)) if subject == items[i].subject => threads.link(root, node),
            _ => {
                threads.roots.push(node);
                current = Some((node, &items[i].subject));
            }
        }
    }
    let key = |n: usize, t: &Threads| {
        let m = t.nodes[n].message.unwrap_or(0);
        (items[m].date, items[m].seq)
    };
    let mut roots = std::mem::take(&mut threads.roots);
    roots.sort_by_key(|&r| key(r, &threads));
    threads.roots = roots;
    threads
}

/// REFERENCES (§4): Message-ID/References links, dummies pruned, root
/// threads of the same base subject merged, siblings in sent-date order.
pub fn references(items: &[Threadable]) -> Threads {
    let mut t = Threads::default();
    // (1) Link by Message-ID and References, in mailbox order.
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].seq);
    for i in order {
        let item = &items[i];
        // (A) Duplicate or missing Message-IDs get a node of their own.
        let node = match item.message_id.as_deref() {
            Some(id) => match by_id.get(id) {
                Some(&n) if t.nodes[n].message.is_none() => {
                    t.nodes[n].message = Some(i);
                    n
                }
                Some(_) => t.add(Some(i)),
                None => {
                    let n = t.add(Some(i));
                    by_id.insert(id, n);
                    n
                }
            },
            None => t.add(Some(i)),
        };
        // (B) Each reference is the parent of the next, unless the
        // child has a parent already or the link would make a loop.
        let mut previous: Option<usize> = None;
        let mut refs = Vec::with_capacity(item.references.len());
        for id in &item.references {
            let n = *by_id.entry(id.as_str()).or_insert_with(|| t.add(None));
            if let Some(p) = previous
                && t.nodes[n].parent.is_none()
                && !t.is_under(p, n)
            {
                t.link(p, n);
            }
            previous = Some(n);
            refs.push(n);
        }
        // (C) The last reference is the message's parent, replacing any
        // parent presumed so far; none when it would make a loop.
        t.unlink(node);
        if let Some(&p) = refs.last()
            && !t.is_under(p, node)
        {
            t.link(p, node);
        }
    }
    drop(by_id);
    // (2) The roots, in the order their nodes were made.
    t.roots = (0..t.nodes.len())
        .filter(|&n| t.nodes[n].parent.is_none())
        .collect();
    prune(&mut t);
    merge_subjects(&mut t, items);
    sort_siblings(&mut t, items);
    t
}

/// (4) Dummies without children go; a dummy's children take its place,
/// except at the root when it has more than one.
fn prune(t: &mut Threads) {
    for n in t.preorder().into_iter().rev() {
        let children = std::mem::take(&mut t.nodes[n].children);
        let mut kept = Vec::with_capacity(children.len());
        for c in children {
            if t.nodes[c].message.is_none() {
                let grandchildren = std::mem::take(&mut t.nodes[c].children);
                for &g in &grandchildren {
                    t.nodes[g].parent = Some(n);
                }
                kept.extend(grandchildren);
            } else {
                kept.push(c);
            }
        }
        t.nodes[n].children = kept;
    }
    let roots = std::mem::take(&mut t.roots);
    for r in roots {
        if t.nodes[r].message.is_some() {
            t.roots.push(r);
            continue;
        }
        match t.nodes[r].children.len() {
            0 => {}
            1 => {
                let only = t.nodes[r].children[0];
                t.nodes[only].parent = None;
                t.roots.push(only);
            }
            _ => t.roots.push(r),
        }
    }
}

/// (5) Root threads with the same (non-empty) base subject are merged.
fn merge_subjects(t: &mut Threads, items: &[Threadable]) {
    let subject_of = |t: &Threads, n: usize| -> Option<usize> {
        let node = &t.nodes[n];
        node.message
            .or_else(|| node.children.first().and_then(|&c| t.nodes[c].message))
    };
    let is_dummy = |t: &Threads, n: usize| t.nodes[n].message.is_none();
    let is_reply = |t: &Threads, n: usize| t.nodes[n].message.is_some_and(|m| items[m].reply);
    // (B) One thread per subject: a dummy first, else a non-reply.
    let mut table: HashMap<&str, usize> = HashMap::new();
    for &r in &t.roots {
        let Some(m) = subject_of(t, r) else { continue };
        let subject = items[m].subject.as_str();
        if subject.is_empty() {
            continue;
        }
        match table.get(subject) {
            None => {
                table.insert(subject, r);
            }
            Some(&old) => {
                if !is_dummy(t, old) && (is_dummy(t, r) || (is_reply(t, old) && !is_reply(t, r))) {
                    table.insert(subject, r);
                }
            }
        }
    }
    // (C) Merge the others into it.
    let roots = t.roots.clone();
    let mut gone = vec![false; t.nodes.len()];
    for r in roots {
        // Merged into another meanwhile.
        if gone[r] || t.nodes[r].parent.is_some() {
            continue;
        }
        let Some(m) = subject_of(t, r) else { continue };
        let subject = items[m].subject.as_str();
        if subject.is_empty() {
            continue;
        }
        let Some(&other) = table.get(subject) else {
            continue;
        };
        if other == r {
            continue;
        }
        if is_dummy(t, r) && is_dummy(t, other) {
            let children = std::mem::take(&mut t.nodes[r].children);
            for c in children {
                t.nodes[c].parent = None;
                t.link(other, c);
            }
        } else if is_dummy(t, other) || (is_reply(t, r) && !is_reply(t, other)) {
            t.link(other, r);
        } else {
            let dummy = t.add(None);
            gone.push(false);
            let at = t.roots.iter().position(|&x| x == other);
            t.link(dummy, other);
            t.link(dummy, r);
            if let Some(at) = at {
                t.roots[at] = dummy;
            }
            table.insert(subject, dummy);
        }
        gone[r] = true;
    }
    t.roots.retain(|&r| !gone[r]);
}

/// (6) Siblings by sent date, then mailbox order; a dummy by its first
/// child after sorting. Children before parents, then the roots.
fn sort_siblings(t: &mut Threads, items: &[Threadable]) {
    let mut key: Vec<(i64, u32)> = vec![(0, 0); t.nodes.len()];
    for n in t.preorder().into_iter().rev() {
        let mut children = std::mem::take(&mut t.nodes[n].children);
        children.sort_by_key(|&c| key[c]);
        key[n] = match t.nodes[n].message {
            Some(m) => (items[m].date, items[m].seq),
            None => children.first().map_or((0, 0), |&c| key[c]),
        };
        t.nodes[n].children = children;
    }
    t.roots.sort_by_key(|&r| key[r]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u32, date: i64, subject: &str, id: &str, refs: &[&str]) -> Threadable {
        let (base, reply) = base_subject(subject);
        Threadable {
            seq,
            uid: seq * 10,
            date,
            subject: casemap(&base),
            reply,
            message_id: (!id.is_empty()).then(|| id.to_owned()),
            references: refs.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn refs(items: &[Threadable]) -> String {
        references(items).write(|i| items[i].seq)
    }

    #[test]
    fn message_ids_are_parsed_loosely() {
        assert_eq!(
            message_ids(" <a@b> (comment) <c@d>\t< e @f >", usize::MAX),
            ["a@b", "c@d", "e@f"]
        );
        assert_eq!(message_ids("<broken <x@y>", usize::MAX), ["x@y"]);
        assert_eq!(message_ids("<a@b><c@d>", 1), ["a@b"]);
        assert!(message_ids("no ids <>", usize::MAX).is_empty());
    }

    #[test]
    fn references_links_chains_and_missing_parents() {
        let items = [
            msg(1, 100, "Hello", "a", &[]),
            msg(2, 200, "Re: Hello", "b", &["a"]),
            msg(3, 300, "Re: Hello", "c", &["a", "b"]),
            // Parent "x" is not in the mailbox: a dummy, pruned.
            msg(4, 150, "Other", "d", &["x"]),
            msg(5, 160, "Re: Other", "e", &["x"]),
        ];
        assert_eq!(refs(&items), "(1 2 3)((4)(5))");
    }

    #[test]
    fn references_survive_loops_and_duplicate_ids() {
        let items = [
            // 1 says it answers 2, 2 says it answers 1.
            msg(1, 100, "A", "a", &["b"]),
            msg(2, 200, "B", "b", &["a"]),
            // A duplicate Message-ID is a message of its own.
            msg(3, 300, "C", "a", &[]),
            // A self reference.
            msg(4, 400, "D", "d", &["d"]),
        ];
        assert_eq!(refs(&items), "(2 1)(3)(4)");
    }

    #[test]
    fn references_merge_roots_by_subject() {
        let items = [
            msg(1, 100, "Topic", "a", &[]),
            // A reply whose parent is lost joins the original.
            msg(2, 200, "Re: Topic", "b", &["lost"]),
            // Two non-replies with one subject: a dummy holds both.
            msg(3, 300, "Same", "c", &[]),
            msg(4, 50, "Same", "d", &[]),
        ];
        assert_eq!(refs(&items), "((4)(3))(1 2)");
    }

    #[test]
    fn ordered_subject_groups_by_base_subject() {
        let items = [
            msg(1, 300, "B", "", &[]),
            msg(2, 100, "Re: a", "", &[]),
            msg(3, 200, "A", "", &[]),
            msg(4, 250, "a", "", &[]),
            msg(5, 400, "b", "", &[]),
        ];
        let t = ordered_subject(&items);
        assert_eq!(t.write(|i| items[i].seq), "(2 (3)(4))(1 5)");
        assert_eq!(t.write(|i| items[i].uid), "(20 (30)(40))(10 50)");
    }

    #[test]
    fn deep_chains_do_not_recurse() {
        let n = 100_000u32;
        let items: Vec<Threadable> = (1..=n)
            .map(|i| {
                let parent = (i > 1).then(|| (i - 1).to_string());
                msg(
                    i,
                    i64::from(i),
                    "Re: chain",
                    &i.to_string(),
                    &parent.as_deref().into_iter().collect::<Vec<_>>(),
                )
            })
            .collect();
        let out = refs(&items);
        assert!(out.starts_with("(1 2 3 "), "{}", &out[..20]);
        assert!(out.ends_with(" 99999 100000)"));
    }
}
