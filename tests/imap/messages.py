"""APPEND to Sent, SELECT, FETCH, SEARCH, STORE flags, COPY and MOVE,
EXPUNGE: what a mail client does with messages."""

import imaplib
import re
import time

from common import done, login, mode, ok, quote, text

c = login()
box = "Sent"
work = f"Work {mode()}"
ok(c.create(quote(work)))

def message(subject, body):
    return (
        f"From: Alice <alice@example.org>\r\n"
        f"To: Bob <bob@example.org>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n"
        f"Date: Tue, 1 Jul 2025 10:00:00 +0000\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n{body}\r\n"
    ).encode()

tag = mode()
first = message(f"report {tag}", f"The quarterly numbers {tag} are attached.")
second = message(f"lunch {tag}", "Shall we meet at noon?")
typ, data = c.append(box, r"(\Seen)", imaplib.Time2Internaldate(time.time()), first)
assert typ == "OK", (typ, data)
assert b"APPENDUID" in data[0], data
ok(c.append(box, None, None, second))

data = ok(c.select(box))
total = int(data[0])
assert total >= 2, data

# UIDs of our two messages, found by SEARCH.
report = ok(c.uid("SEARCH", None, "SUBJECT", f'"report {tag}"'))[0].split()
lunch = ok(c.uid("SEARCH", None, "SUBJECT", f'"lunch {tag}"'))[0].split()
assert len(report) == 1 and len(lunch) == 1, (report, lunch)
report, lunch = report[0].decode(), lunch[0].decode()
assert ok(c.uid("SEARCH", None, "BODY", f'"quarterly numbers {tag}"'))[0].split() == [report.encode()]
unseen = ok(c.uid("SEARCH", None, "UNSEEN"))[0].split()
assert lunch.encode() in unseen and report.encode() not in unseen, unseen
assert lunch.encode() in ok(c.uid("SEARCH", None, "FROM", "alice", "TO", "bob"))[0].split()

# FETCH: flags, size, a header field, the whole message.
data = ok(c.uid("FETCH", report, "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
meta = text(data)
assert "\\Seen" in meta, meta
assert f"RFC822.SIZE {len(first)}" in meta, meta
assert f"Subject: report {tag}" in meta, meta
data = ok(c.uid("FETCH", lunch, "(BODY.PEEK[] ENVELOPE)"))
assert data[0][1] == second, data
assert f'"lunch {tag}"' in text(data), data
# BODY[] without PEEK sets \Seen.
ok(c.uid("FETCH", lunch, "(BODY[TEXT])"))
assert "\\Seen" in text(ok(c.uid("FETCH", lunch, "(FLAGS)")))

# STORE flags.
ok(c.uid("STORE", report, "+FLAGS", r"(\Flagged $Important)"))
flags = text(ok(c.uid("FETCH", report, "(FLAGS)")))
assert "\\Flagged" in flags and "$Important" in flags, flags
ok(c.uid("STORE", report, "-FLAGS.SILENT", r"(\Flagged)"))
flags = text(ok(c.uid("FETCH", report, "(FLAGS)")))
assert "\\Flagged" not in flags and "$Important" in flags, flags
important = ok(c.uid("SEARCH", None, "KEYWORD", "$Important"))[0].split()
assert report.encode() in important and lunch.encode() not in important, important

# COPY keeps the original; MOVE removes it.
ok(c.uid("COPY", report, quote(work)))
# imaplib keeps response codes of tagged responses apart.
typ, data = c.response("COPYUID")
assert data and data[0] and data[0].split()[1] == report.encode(), (typ, data)
typ, data = c.uid("MOVE", lunch, quote(work))
assert typ == "OK", (typ, data)
assert ok(c.uid("SEARCH", None, "SUBJECT", f'"lunch {tag}"')) == [b""]
data = ok(c.select(quote(work)))
assert int(data[0]) == 2, data
both = ok(c.uid("SEARCH", None, "ALL"))[0].split()
assert len(both) == 2, both

# EXPUNGE removes what is \Deleted, and only that.
ok(c.uid("STORE", both[0].decode(), "+FLAGS", r"(\Deleted)"))
typ, data = c.expunge()
assert typ == "OK" and data == [b"1"], (typ, data)
assert ok(c.uid("SEARCH", None, "ALL"))[0].split() == both[1:]
ok(c.close())
status = text(ok(c.status(quote(work), "(MESSAGES)")))
assert "MESSAGES 1" in status, status

ok(c.delete(quote(work)))
c.logout()
done("messages")
