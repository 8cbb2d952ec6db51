//! LIST-EXTENDED and LIST-STATUS, CREATE-SPECIAL-USE, STATUS APPENDLIMIT,
//! MULTIAPPEND and UTF8 APPEND data (RFC 5258 §6, RFC 5819 §5, RFC 6154
//! §6, RFC 7889 §4, RFC 3502 §6.3.11, RFC 6855 §4), parsed into the
//! command imap-codec would give for the base form plus an [`Ext`] for
//! what the extension adds. The base forms parse here too (a command only
//! comes here once imap-codec refused it), and give imap-codec's values.

use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Literal;
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::{ListCharString, ListMailbox};
use imap_codec::imap_types::status::StatusDataItemName;

use super::ext::{Ext, ListExt, Message};
use super::input::{Input, Parsed, Syntax};
use super::{Head, Parse};
use crate::mailbox::list::SpecialUse;

/// Parses LIST, CREATE, STATUS and APPEND (`UID` has no meaning before
/// them: imap-codec's refusal stands).
pub fn parse(head: Head<'_>) -> Option<Parsed<Parse>> {
    if head.uid {
        return None;
    }
    let mut input = head.input;
    let parsed = match head.name.as_str() {
        "LIST" => list(&mut input),
        "CREATE" => create(&mut input),
        "STATUS" => status(&mut input),
        "APPEND" => append(&mut input),
        _ => return None,
    };
    Some(
        parsed
            .and_then(|command| input.end().map(|()| command))
            .map(|(body, ext)| Parse::Command(head.tag, Box::new(body), ext)),
    )
}

type Command = (CommandBody<'static>, Ext);

fn bad(text: impl Into<String>) -> Syntax {
    Syntax(text.into())
}

/// An atom, upper case, for matching option names.
fn word(input: &mut Input<'_>, what: &str) -> Parsed<String> {
    let atom = input.atom().map_err(|_| Syntax::expected(what))?;
    Ok(String::from_utf8_lossy(atom).to_ascii_uppercase())
}

/// `"(" [item *(SP item)] ")"`, each item read by `item`.
fn parenthesised(
    input: &mut Input<'_>,
    what: &str,
    mut item: impl FnMut(&mut Input<'_>) -> Parsed<()>,
) -> Parsed<()> {
    input.byte(b'(', what)?;
    if input.eat(b')') {
        return Ok(());
    }
    loop {
        item(input)?;
        if input.eat(b')') {
            return Ok(());
        }
        input
            .sp()
            .map_err(|_| Syntax::expected(&format!("a space or `)` in {what}")))?;
    }
}

/// RFC 5258 §6:
///
/// ```abnf
/// list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
///        [SP list-return-opts]
/// list-select-opts = "(" [list-select-opt *(SP list-select-opt)] ")"
/// mbox-or-pat = list-mailbox / patterns
/// patterns = "(" list-mailbox *(SP list-mailbox) ")"
/// list-return-opts = "RETURN" SP "(" [return-option *(SP return-option)] ")"
/// return-option =/ "STATUS" SP "(" status-att *(SP status-att) ")"   ; RFC 5819 §5
/// ```
fn list(input: &mut Input<'_>) -> Parsed<Command> {
    let mut opts = ListExt::default();
    let mut extended = false;
    input.sp()?;
    if input.peek() == Some(b'(') {
        extended = true;
        parenthesised(input, "LIST selection options", |input| {
            match word(input, "a LIST selection option")?.as_str() {
                "SUBSCRIBED" => opts.select_subscribed = true,
                "SPECIAL-USE" => opts.select_special_use = true,
                "RECURSIVEMATCH" => opts.recursive_match = true,
                "REMOTE" => {}
                other => return Err(bad(format!("Unknown LIST selection option {other}"))),
            }
            Ok(())
        })?;
        // RFC 5258 §3.1: RECURSIVEMATCH only modifies another option.
        if opts.recursive_match && !opts.select_subscribed && !opts.select_special_use {
            return Err(bad("RECURSIVEMATCH needs another selection option"));
        }
        input.sp().map_err(|_| bad("LIST needs a reference"))?;
    }
    let reference = input.mailbox().map_err(|_| bad("LIST needs a reference"))?;
    input.sp().map_err(|_| bad("LIST needs a pattern"))?;
    let mut patterns: Vec<(ListMailbox<'static>, Vec<u8>)> = Vec::new();
    if input.peek() == Some(b'(') {
        extended = true;
        parenthesised(input, "the LIST patterns", |input| {
            patterns.push(list_mailbox(input)?);
            Ok(())
        })?;
    } else {
        patterns.push(list_mailbox(input).map_err(|_| bad("LIST needs a pattern"))?);
    }
    if !input.at_end() {
        input.sp()?;
        if !input.keyword("RETURN") {
            return Err(bad("Unexpected LIST argument"));
        }
        extended = true;
        if input.sp().is_err() || input.peek() != Some(b'(') {
            return Err(bad("RETURN needs a list of options"));
        }
        parenthesised(input, "the LIST return options", |input| {
            match word(input, "a LIST return option")?.as_str() {
                "SUBSCRIBED" => opts.return_subscribed = true,
                "CHILDREN" => opts.return_children = true,
                "SPECIAL-USE" => opts.return_special_use = true,
                "STATUS" => {
                    if input.sp().is_err() || input.peek() != Some(b'(') {
                        return Err(bad("STATUS needs a list of items"));
                    }
                    let (items, appendlimit) = status_items(input)?;
                    opts.return_status = Some(items);
                    opts.return_status_appendlimit |= appendlimit;
                }
                other => return Err(bad(format!("Unknown LIST return option {other}"))),
            }
            Ok(())
        })?;
    }
    let mut patterns = patterns.into_iter();
    let Some((mailbox_wildcard, first)) = patterns.next() else {
        return Err(bad("LIST needs a pattern"));
    };
    let ext = if extended {
        opts.patterns = std::iter::once(first)
            .chain(patterns.map(|(_, raw)| raw))
            .collect();
        Ext {
            list: Some(opts),
            ..Ext::default()
        }
    } else {
        Ext::default()
    };
    let body = CommandBody::List {
        reference,
        mailbox_wildcard,
    };
    Ok((body, ext))
}

/// `list-mailbox = 1*list-char / string`, typed as imap-codec types it,
/// and its value.
fn list_mailbox(input: &mut Input<'_>) -> Parsed<(ListMailbox<'static>, Vec<u8>)> {
    if matches!(input.peek(), Some(b'"' | b'{')) {
        let string = input.string_value()?;
        let raw = string.as_ref().to_vec();
        return Ok((ListMailbox::String(string), raw));
    }
    let start = input.clone();
    let raw = input.list_mailbox()?;
    let token = String::from_utf8(raw.clone())
        .ok()
        .and_then(|s| ListCharString::try_from(s).ok());
    match token {
        Some(token) => Ok((ListMailbox::Token(token), raw)),
        None => {
            *input = start;
            Err(Syntax::expected("a mailbox pattern"))
        }
    }
}

/// `"(" [status-att *(SP status-att)] ")"`, with APPENDLIMIT (RFC 7889
/// §4) apart: the items imap-codec knows and whether APPENDLIMIT was
/// asked.
fn status_items(input: &mut Input<'_>) -> Parsed<(Vec<StatusDataItemName>, bool)> {
    let mut items = Vec::new();
    let mut appendlimit = false;
    parenthesised(input, "a list of STATUS items", |input| {
        let item = match word(input, "a STATUS item")?.as_str() {
            "APPENDLIMIT" => {
                appendlimit = true;
                return Ok(());
            }
            "MESSAGES" => StatusDataItemName::Messages,
            "RECENT" => StatusDataItemName::Recent,
            "UIDNEXT" => StatusDataItemName::UidNext,
            "UIDVALIDITY" => StatusDataItemName::UidValidity,
            "UNSEEN" => StatusDataItemName::Unseen,
            "DELETED" => StatusDataItemName::Deleted,
            "DELETED-STORAGE" => StatusDataItemName::DeletedStorage,
            "SIZE" => StatusDataItemName::Size,
            "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
            other => return Err(bad(format!("Unknown STATUS item {other}"))),
        };
        items.push(item);
        Ok(())
    })?;
    Ok((items, appendlimit))
}

/// RFC 6154 §6 (with RFC 4466 §2.2's `create-params`):
///
/// ```abnf
/// create = "CREATE" SP mailbox [create-params]
/// create-params = SP "(" create-param *(SP create-param) ")"
/// create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"
/// ```
fn create(input: &mut Input<'_>) -> Parsed<Command> {
    input.sp()?;
    let mailbox = input.mailbox()?;
    let mut ext = Ext::default();
    if !input.at_end() {
        input.sp()?;
        input.byte(b'(', "CREATE parameters")?;
        loop {
            if !input.keyword("USE") {
                return Err(bad("Unknown CREATE parameter"));
            }
            input.sp()?;
            if input.peek() != Some(b'(') {
                return Err(bad("USE needs a list of attributes"));
            }
            parenthesised(input, "the USE attributes", |input| {
                let backslash = input.eat(b'\\');
                let name = input
                    .atom()
                    .map_err(|_| Syntax::expected("a special-use attribute"))?;
                let attr = format!(
                    "{}{}",
                    if backslash { "\\" } else { "" },
                    String::from_utf8_lossy(name)
                );
                match SpecialUse::from_attribute(&attr) {
                    Some(special) => ext.create_use.push(special),
                    None => {
                        ext.create_use_unknown.get_or_insert(attr);
                    }
                }
                Ok(())
            })?;
            if input.eat(b')') {
                break;
            }
            input.sp()?;
        }
    }
    Ok((CommandBody::Create { mailbox }, ext))
}

/// RFC 9051 §9 with RFC 7889 §4:
///
/// ```abnf
/// status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
/// status-att =/ "APPENDLIMIT"
/// ```
///
/// The command's items are those imap-codec knows (none if APPENDLIMIT
/// was the only one); [`Ext::status_appendlimit`] says APPENDLIMIT was
/// asked.
fn status(input: &mut Input<'_>) -> Parsed<Command> {
    input.sp()?;
    let mailbox = input.mailbox()?;
    input.sp()?;
    if input.peek() != Some(b'(') {
        return Err(Syntax::expected("a list of STATUS items"));
    }
    let (items, appendlimit) = status_items(input)?;
    let body = CommandBody::Status {
        mailbox,
        item_names: items.into(),
    };
    let ext = Ext {
        status_appendlimit: appendlimit,
        ..Ext::default()
    };
    Ok((body, ext))
}

/// RFC 3502 §6.3.11 and RFC 6855 §4 (with literal8, RFC 3516 §6):
///
/// ```abnf
/// append = "APPEND" SP mailbox 1*append-message
/// append-message = [SP flag-list] [SP date-time] SP append-data
/// append-data = literal / literal8 / "UTF8" SP "(" literal8 ")"
/// ```
///
/// The first message is the command's; the others are
/// [`Ext::more_appends`].
fn append(input: &mut Input<'_>) -> Parsed<Command> {
    input.sp()?;
    let mailbox = input.mailbox()?;
    let mut first = None;
    let mut more = Vec::new();
    loop {
        let (flags, date, data) = append_message(input)?;
        if first.is_none() {
            first = Some((flags, date, data));
        } else {
            more.push(Message::new(flags, date, data));
        }
        if input.at_end() {
            break;
        }
    }
    let Some((flags, date, message)) = first else {
        return Err(bad("APPEND needs a message literal"));
    };
    let body = CommandBody::Append {
        mailbox,
        flags,
        date,
        message,
    };
    let ext = Ext {
        more_appends: more,
        ..Ext::default()
    };
    Ok((body, ext))
}

type AppendMessage = (
    Vec<Flag<'static>>,
    Option<DateTime>,
    LiteralOrLiteral8<'static>,
);

/// `[SP flag-list] [SP date-time] SP append-data`.
fn append_message(input: &mut Input<'_>) -> Parsed<AppendMessage> {
    let needs_data = || bad("APPEND needs a message literal");
    input.sp().map_err(|_| needs_data())?;
    let mut flags = Vec::new();
    if input.peek() == Some(b'(') {
        flags = input.flag_list()?;
        input.sp().map_err(|_| needs_data())?;
    }
    let mut date = None;
    if input.peek() == Some(b'"') {
        date = Some(input.date_time()?);
        input.sp().map_err(|_| needs_data())?;
    }
    if input.keyword("UTF8") {
        // RFC 6855 §4: the message is UTF-8 text; it is stored as a
        // literal's would be (CRLF line ends), so it may not hold NUL.
        input.sp()?;
        input.byte(b'(', "`(` before the UTF8 data")?;
        let data = match input.literal_value()? {
            LiteralOrLiteral8::Literal(literal) => literal,
            LiteralOrLiteral8::Literal8(literal8) => Literal::try_from(literal8.data.into_owned())
                .map_err(|_| bad("UTF8 data may not hold NUL"))?,
        };
        input.byte(b')', "`)` after the UTF8 data")?;
        return Ok((flags, date, LiteralOrLiteral8::Literal(data)));
    }
    if !matches!(input.peek(), Some(b'{' | b'~')) {
        return Err(needs_data());
    }
    let data = input.literal_value()?;
    Ok((flags, date, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::state::Saved;
    use crate::mailbox::summary::LineEnds;
    use bounded_static::IntoBoundedStatic;
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder;

    /// Our parse of a whole command (tag included).
    fn ours(command: &[u8]) -> Parsed<(CommandBody<'static>, Ext)> {
        match super::super::parse(command, &Saved::default()) {
            Some(Ok(Parse::Command(tag, body, ext))) => {
                assert_eq!(tag.as_ref(), "t1");
                Ok((*body, ext))
            }
            Some(Err(e)) => Err(e),
            None => panic!("not parsed here: {}", String::from_utf8_lossy(command)),
        }
    }

    fn ok(command: &str) -> (CommandBody<'static>, Ext) {
        ours(command.as_bytes()).unwrap_or_else(|e| panic!("{command}: {e:?}"))
    }

    fn err(command: &[u8]) -> String {
        match ours(command) {
            Err(Syntax(text)) => text,
            Ok(parsed) => panic!("{}: {parsed:?}", String::from_utf8_lossy(command)),
        }
    }

    fn codec(command: &[u8]) -> CommandBody<'static> {
        match CommandCodec::default().decode(command) {
            Ok((b"", command)) => command.body.into_static(),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(command)),
        }
    }

    /// The base forms give exactly imap-codec's values.
    #[test]
    fn base_forms_equal_imap_codec() {
        for command in [
            "t1 LIST \"\" *\r\n",
            "t1 LIST \"\" %\r\n",
            "t1 LIST inbox \"\"\r\n",
            "t1 LIST Archive/ \"Work/*\"\r\n",
            "t1 LIST {3}\r\nabc {4+}\r\nW%rk\r\n",
            "t1 LIST \"\" \"R\u{e9}unions \u{e9}t\u{e9}\"\r\n",
            "t1 LIST \"a\\\"b\" \"c\\\\d\"\r\n",
            "t1 CREATE foo\r\n",
            "t1 CREATE \"My Drafts\"\r\n",
            "t1 CREATE \"R\u{e9}unions \u{e9}t\u{e9}\"\r\n",
            "t1 CREATE {5+}\r\nx(y)z\r\n",
            "t1 CREATE INBOX\r\n",
            "t1 STATUS INBOX (MESSAGES UNSEEN)\r\n",
            "t1 STATUS \"a b\" (UIDNEXT UIDVALIDITY RECENT DELETED SIZE HIGHESTMODSEQ DELETED-STORAGE)\r\n",
            "t1 STATUS x ()\r\n",
            "t1 APPEND INBOX {3}\r\nabc\r\n",
            "t1 APPEND INBOX {3+}\r\nabc\r\n",
            "t1 APPEND Drafts (\\Seen \\Draft $Forwarded) {3}\r\nabc\r\n",
            "t1 APPEND Drafts () {3}\r\nabc\r\n",
            "t1 APPEND Drafts \" 7-Jul-2023 12:30:00 -0230\" {3}\r\nabc\r\n",
            "t1 APPEND Drafts (\\Flagged) \"01-Jan-2026 10:00:00 +0000\" ~{4}\r\na\x00\r\n\r\n",
            "t1 APPEND Drafts ~{2+}\r\n\x00\x01\r\n",
        ] {
            let bytes = command.as_bytes();
            let (body, ext) = ok(command);
            assert_eq!(body, codec(bytes), "{command}");
            assert!(
                ext.list.is_none() && ext.more_appends.is_empty(),
                "{command}"
            );
            assert!(ext.create_use.is_empty() && !ext.status_appendlimit);
        }
    }

    #[test]
    fn list_extended_forms() {
        let (body, ext) = ok(
            "t1 LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"INBOX\" {4}\r\nWo k) RETURN (CHILDREN STATUS (MESSAGES APPENDLIMIT))\r\n",
        );
        assert_eq!(body, codec(b"t1 LIST \"\" \"INBOX\"\r\n"));
        let l = ext.list.unwrap();
        assert!(l.select_subscribed && l.recursive_match && l.return_children);
        assert!(!l.select_special_use && !l.return_subscribed && !l.return_special_use);
        assert_eq!(l.patterns, vec![b"INBOX".to_vec(), b"Wo k".to_vec()]);
        assert_eq!(l.return_status, Some(vec![StatusDataItemName::Messages]));
        assert!(l.return_status_appendlimit);

        let (body, ext) = ok("t1 list (special-use) \"\" * return (special-use subscribed)\r\n");
        assert_eq!(body, codec(b"t1 LIST \"\" *\r\n"));
        let l = ext.list.unwrap();
        assert!(l.select_special_use && l.return_special_use && l.return_subscribed);
        assert_eq!(l.patterns, vec![b"*".to_vec()]);

        // Empty option lists, and RETURN alone.
        let (_, ext) = ok("t1 LIST () \"\" % RETURN ()\r\n");
        assert_eq!(
            ext.list.unwrap(),
            ListExt {
                patterns: vec![b"%".to_vec()],
                ..ListExt::default()
            }
        );
        let (_, ext) = ok("t1 LIST \"\" % RETURN (STATUS (APPENDLIMIT))\r\n");
        let l = ext.list.unwrap();
        assert_eq!(l.return_status, Some(vec![]));
        assert!(l.return_status_appendlimit);
    }

    /// Literal data is never read as syntax; UTF-8 quoted names stay.
    #[test]
    fn list_patterns_that_look_like_syntax() {
        let (body, ext) = ok(
            "t1 LIST (SUBSCRIBED) {3}\r\n(a) ({10}\r\n) RETURN ( \"R\u{e9}unions \u{e9}t\u{e9}\") RETURN (CHILDREN)\r\n",
        );
        assert_eq!(body, codec(b"t1 LIST {3}\r\n(a) {10}\r\n) RETURN (\r\n"));
        let l = ext.list.unwrap();
        assert_eq!(
            l.patterns,
            vec![
                b") RETURN (".to_vec(),
                "R\u{e9}unions \u{e9}t\u{e9}".as_bytes().to_vec()
            ]
        );
        assert!(l.return_children && l.select_subscribed);
    }

    #[test]
    fn malformed_lists_are_refused_with_a_reason() {
        for (command, text) in [
            (
                &b"t1 LIST (RECURSIVEMATCH) \"\" *\r\n"[..],
                "RECURSIVEMATCH needs another",
            ),
            (
                b"t1 LIST (BOGUS) \"\" *\r\n",
                "Unknown LIST selection option BOGUS",
            ),
            (
                b"t1 LIST \"\" * RETURN (BOGUS)\r\n",
                "Unknown LIST return option BOGUS",
            ),
            (
                b"t1 LIST \"\" * RETURN (STATUS (MESSAGES FOO))\r\n",
                "Unknown STATUS item FOO",
            ),
            (
                b"t1 LIST \"\" * RETURN (STATUS)\r\n",
                "STATUS needs a list of items",
            ),
            (
                b"t1 LIST \"\" * RETURN CHILDREN\r\n",
                "RETURN needs a list of options",
            ),
            (
                b"t1 LIST \"\" * RETURN\r\n",
                "RETURN needs a list of options",
            ),
            (
                b"t1 LIST \"\" * EXTRA (CHILDREN)\r\n",
                "Unexpected LIST argument",
            ),
            (b"t1 LIST \"\" ()\r\n", "LIST needs a pattern"),
            (b"t1 LIST (SUBSCRIBED)\r\n", "LIST needs a reference"),
            (b"t1 LIST (SUBSCRIBED) \"\"\r\n", "LIST needs a pattern"),
            (
                b"t1 LIST (SUBSCRIBED \"\" *\r\n",
                "expected a LIST selection option",
            ),
            (b"t1 LIST \"\" (a b\r\n", "expected a space or `)`"),
            (
                b"t1 LIST \"\" * RETURN (CHILDREN\r\n",
                "expected a space or `)`",
            ),
            (b"t1 LIST \"\" * RETURN (CHILDREN) x\r\n", "Unexpected data"),
            (
                b"t1 LIST \"\" (a) RETURN (STATUS (MESSAGES)\r\n",
                "expected a space or `)`",
            ),
            (b"t1 LIST \"\" (\"\xff\")\r\n", "expected a string of UTF-8"),
        ] {
            let got = err(command);
            assert!(
                got.contains(text),
                "{}: {got}",
                String::from_utf8_lossy(command)
            );
        }
    }

    #[test]
    fn create_with_special_use() {
        let (body, ext) = ok("t1 CREATE \"My Drafts\" (USE (\\Drafts))\r\n");
        assert_eq!(body, codec(b"t1 CREATE \"My Drafts\"\r\n"));
        assert_eq!(ext.create_use, vec![SpecialUse::Drafts]);
        let (body, ext) = ok("t1 CREATE \"R\u{e9}unions \u{e9}t\u{e9}\" (USE (\\Archive))\r\n");
        assert_eq!(
            body,
            codec("t1 CREATE \"R\u{e9}unions \u{e9}t\u{e9}\"\r\n".as_bytes())
        );
        assert_eq!(ext.create_use, vec![SpecialUse::Archive]);
        let (_, ext) = ok("t1 create x (use (\\junk \\Sent) USE ())\r\n");
        assert_eq!(ext.create_use, vec![SpecialUse::Junk, SpecialUse::Sent]);
        // A literal name holding what looks like parameters.
        let (body, ext) = ok("t1 CREATE {12}\r\nx (USE (\\A)) (USE (\\Trash))\r\n");
        assert_eq!(body, codec(b"t1 CREATE {12}\r\nx (USE (\\A))\r\n"));
        assert_eq!(ext.create_use, vec![SpecialUse::Trash]);
        // Well formed but unknown: for the handler to refuse with NO.
        let (_, ext) = ok("t1 CREATE x (USE (\\Bogus \\Trash))\r\n");
        assert_eq!(ext.create_use_unknown.as_deref(), Some("\\Bogus"));
        assert_eq!(ext.create_use, vec![SpecialUse::Trash]);
        for (command, text) in [
            (
                &b"t1 CREATE x (FOO (\\Drafts))\r\n"[..],
                "Unknown CREATE parameter",
            ),
            (b"t1 CREATE x ()\r\n", "Unknown CREATE parameter"),
            (
                b"t1 CREATE x (USE \\Drafts)\r\n",
                "USE needs a list of attributes",
            ),
            (b"t1 CREATE x (USE (\\Drafts)\r\n", "expected a space"),
            (
                b"t1 CREATE x USE (\\Drafts)\r\n",
                "expected CREATE parameters",
            ),
        ] {
            let got = err(command);
            assert!(
                got.contains(text),
                "{}: {got}",
                String::from_utf8_lossy(command)
            );
        }
    }

    #[test]
    fn status_with_appendlimit() {
        let (body, ext) = ok("t1 STATUS INBOX (UIDNEXT APPENDLIMIT)\r\n");
        assert_eq!(body, codec(b"t1 STATUS INBOX (UIDNEXT)\r\n"));
        assert!(ext.status_appendlimit);
        // APPENDLIMIT alone: no item imap-codec knows.
        let (body, ext) = ok("t1 STATUS \"R\u{e9}unions\" (appendlimit)\r\n");
        assert_eq!(body, codec("t1 STATUS \"R\u{e9}unions\" ()\r\n".as_bytes()));
        assert!(ext.status_appendlimit);
        for (command, text) in [
            (
                &b"t1 STATUS INBOX (APPENDLIMIT FOO)\r\n"[..],
                "Unknown STATUS item FOO",
            ),
            (
                b"t1 STATUS INBOX APPENDLIMIT\r\n",
                "expected a list of STATUS items",
            ),
            (
                b"t1 STATUS INBOX (APPENDLIMIT\r\n",
                "expected a space or `)`",
            ),
            (b"t1 STATUS (APPENDLIMIT)\r\n", "expected a string"),
        ] {
            let got = err(command);
            assert!(
                got.contains(text),
                "{}: {got}",
                String::from_utf8_lossy(command)
            );
        }
    }

    /// Three messages: flags and dates per message, a literal8 with NUL
    /// and bare LF, and a literal whose data looks like more messages.
    #[test]
    fn multiappend_gives_typed_messages() {
        let trap = b"x) \"01-Jan-2026 10:00:00 +0000\" {2}\r\nde UTF8 (~{1}\r\nz)";
        let mut command = b"t1 APPEND Drafts (\\Seen) {3+}\r\nabc (\\Draft $Junk) \"01-Jan-2026 10:00:00 +0000\" ~{4}\r\na\x00\nb ".to_vec();
        command.extend_from_slice(format!("{{{}}}\r\n", trap.len()).as_bytes());
        command.extend_from_slice(trap);
        command.extend_from_slice(b"\r\n");
        let (body, ext) = ours(&command).unwrap();
        assert_eq!(body, codec(b"t1 APPEND Drafts (\\Seen) {3+}\r\nabc\r\n"));
        let [second, third] = ext.more_appends.as_slice() else {
            panic!("{:?}", ext.more_appends)
        };
        assert_eq!(second.flags, ["\\Draft", "$Junk"]);
        assert_eq!(second.date, Some(1_767_261_600));
        assert_eq!(second.data, b"a\x00\nb");
        assert_eq!(second.line_ends, LineEnds::KeepBinaryParts);
        assert!(third.flags.is_empty() && third.date.is_none());
        assert_eq!(third.data, trap);
        assert_eq!(third.line_ends, LineEnds::Crlf);
    }

    /// UTF8 (RFC 6855 §4) data is stored as a literal's (CRLF), as it was
    /// when it was rewritten into one.
    #[test]
    fn utf8_append_data() {
        let (body, ext) = ok("t1 APPEND INBOX UTF8 (~{3}\r\nabc)\r\n");
        assert_eq!(body, codec(b"t1 APPEND INBOX {3}\r\nabc\r\n"));
        assert!(ext.more_appends.is_empty());
        let (body, ext) = ok(
            "t1 APPEND INBOX (\\Seen) UTF8 (~{5+}\r\n\u{e9}t\u{e9}) \"01-Jan-2026 10:00:00 +0000\" utf8 (~{2}\r\n())\r\n",
        );
        let CommandBody::Append { flags, message, .. } = body else {
            panic!("{body:?}")
        };
        assert_eq!(flags, vec![Flag::Seen]);
        let first = Message::new(flags, None, message);
        assert_eq!(first.data, "\u{e9}t\u{e9}".as_bytes());
        assert_eq!(first.line_ends, LineEnds::Crlf);
        assert_eq!(ext.more_appends[0].data, b"()");
        assert_eq!(ext.more_appends[0].line_ends, LineEnds::Crlf);
    }

    #[test]
    fn malformed_appends_are_refused_with_a_reason() {
        for (command, text) in [
            (
                &b"t1 APPEND INBOX (\\Seen)\r\n"[..],
                "APPEND needs a message literal",
            ),
            (b"t1 APPEND INBOX\r\n", "APPEND needs a message literal"),
            (
                b"t1 APPEND INBOX {3}\r\nabc (\\Seen)\r\n",
                "APPEND needs a message literal",
            ),
            (
                b"t1 APPEND INBOX {3}\r\nabc \r\n",
                "APPEND needs a message literal",
            ),
            (
                b"t1 APPEND INBOX {3}\r\nabc abc\r\n",
                "APPEND needs a message literal",
            ),
            (
                b"t1 APPEND INBOX {3}\r\nabc {9}\r\nab\r\n",
                "expected the literal's data",
            ),
            (b"t1 APPEND INBOX {3}\r\nabc {1}\r\n\x00\r\n", "without NUL"),
            (
                b"t1 APPEND INBOX UTF8 (~{1}\r\n\x00)\r\n",
                "UTF8 data may not hold NUL",
            ),
            (
                b"t1 APPEND INBOX UTF8 ~{1}\r\nx\r\n",
                "`(` before the UTF8 data",
            ),
            (
                b"t1 APPEND INBOX UTF8 (~{1}\r\nx\r\n",
                "`)` after the UTF8 data",
            ),
            (b"t1 APPEND INBOX UTF8 (\"x\")\r\n", "expected a literal"),
            (
                b"t1 APPEND INBOX \"32-Jan-2026 10:00:00 +0000\" {1}\r\nx\r\n",
                "valid date-time",
            ),
            (b"t1 APPEND INBOX (\\Seen {1}\r\nx\r\n", "expected an atom"),
            (
                b"t1 APPEND INBOX {3}\r\nabc{1}\r\nx\r\n",
                "APPEND needs a message literal",
            ),
        ] {
            let got = err(command);
            assert!(
                got.contains(text),
                "{}: {got}",
                String::from_utf8_lossy(command)
            );
        }
    }

    proptest::proptest! {
        /// Any bytes after a command name of this family: a value or a
        /// reason, never a panic.
        #[test]
        fn never_panics(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            command in proptest::sample::select(vec![
                "LIST ", "LIST (", "LIST \"\" (", "LIST \"\" * RETURN (", "CREATE x (USE (",
                "CREATE ", "STATUS x (", "APPEND INBOX ", "APPEND INBOX UTF8 (~{",
                "APPEND INBOX {3}\r\nabc ", "APPEND INBOX (\\Seen) \"",
            ]),
        ) {
            let mut input = format!("t1 {command}").into_bytes();
            input.extend_from_slice(&body);
            input.extend_from_slice(b"\r\n");
            let _ = super::super::parse(&input, &Saved::default());
        }

        /// Literal data of any bytes is carried as it is.
        #[test]
        fn literal_data_is_opaque(
            data in proptest::collection::vec(1u8..=255, 1..100),
        ) {
            let mut command = b"t1 APPEND INBOX {1}\r\nx ".to_vec();
            command.extend_from_slice(format!("~{{{}}}\r\n", data.len()).as_bytes());
            command.extend_from_slice(&data);
            command.extend_from_slice(b"\r\n");
            let (_, ext) = ours(&command).unwrap();
            proptest::prop_assert_eq!(&ext.more_appends[0].data, &data);
        }
    }
}
