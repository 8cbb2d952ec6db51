"""CAPABILITY before and after login, a refused password, LOGIN, NOOP,
LOGOUT."""

import imaplib

from common import connect, done, login, mode, ok, user

c = connect()
caps = set(c.capabilities)
assert "IMAP4REV1" in caps or "IMAP4rev1" in caps, caps
assert "AUTH=PLAIN" in caps, caps
assert "LOGINDISABLED" not in caps, caps
login_name, password = user()
try:
    c.login(login_name, password + "-wrong")
    raise AssertionError("a wrong password was accepted")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
# The connection survives a failed login.
ok(c.noop())
ok(c.login(login_name, password))
assert c.state == "AUTH"
caps = [x.upper() for x in ok(c.capability())[0].decode().split()]
for cap in ("IDLE", "MOVE", "UIDPLUS", "UNSELECT", "LITERAL+", "SPECIAL-USE"):
    assert cap in caps, (cap, caps)
ok(c.noop())
typ, data = c.logout()
assert typ == "BYE", (typ, data)

# AUTHENTICATE PLAIN works as well.
c = connect()
ok(c.authenticate("PLAIN", lambda _: f"\0{login_name}\0{password}".encode()))
c.logout()

# Logging in again works (the account stays unlocked between sessions).
login().logout()
done("login " + mode())
