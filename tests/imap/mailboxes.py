"""LIST with special use, CREATE (with a hierarchy), RENAME, SUBSCRIBE and
LSUB, STATUS, DELETE."""

from common import done, listed, login, mode, ok, quote, text

c = login()
boxes = listed(c)
assert "INBOX" in boxes, boxes
specials = {a for attrs in boxes.values() for a in attrs}
for use in ("\\Sent", "\\Trash", "\\Drafts"):
    assert use in specials, (use, boxes)

top = f"Projects {mode()}"
ok(c.create(quote(top)))
ok(c.create(quote(top + "/Plans")))
boxes = listed(c, quote(top + "*"))
assert set(boxes) == {top, top + "/Plans"}, boxes
assert any(a.lower() == "\\haschildren" for a in boxes[top]), boxes
ok(c.rename(quote(top), quote(top + " old")))
boxes = listed(c, quote(top + "*"))
assert set(boxes) == {top + " old", top + " old/Plans"}, boxes

ok(c.subscribe(quote(top + " old/Plans")))
subscribed = text(ok(c.lsub('""', quote(top + "*"))))
assert "Plans" in subscribed, subscribed
ok(c.unsubscribe(quote(top + " old/Plans")))

status = text(ok(c.status(quote(top + " old"), "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")))
assert "MESSAGES 0" in status, status

ok(c.delete(quote(top + " old/Plans")))
ok(c.delete(quote(top + " old")))
assert not listed(c, quote(top + "*")), listed(c)
c.logout()
done("mailboxes")
