"""IDLE: a client idling on INBOX sees a message another connection
appends, pushed without polling (RFC 2177)."""

import socket

from common import done, login, mode, ok

idler = login()
data = ok(idler.select("INBOX"))
before = int(data[0])
caps = ok(idler.capability())[0].decode().upper().split()
assert "IDLE" in caps, caps

tag = idler._new_tag()
idler.send(tag + b" IDLE\r\n")
line = idler.readline()
assert line.startswith(b"+"), line

other = login()
subject = f"pushed {mode()}"
msg = f"From: a@example.org\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
ok(other.append("INBOX", None, None, msg))

# The EXISTS arrives within the poll interval; the socket timeout bounds
# the wait.
idler.sock.settimeout(30)
while True:
    try:
        line = idler.readline()
    except socket.timeout:
        raise AssertionError("no EXISTS while idling")
    assert line, "connection closed while idling"
    if line.rstrip().endswith(b"EXISTS"):
        assert int(line.split()[1]) == before + 1, (before, line)
        break
    assert line.startswith(b"* "), line

idler.send(b"DONE\r\n")
while True:
    line = idler.readline()
    assert line, "connection closed after DONE"
    if line.startswith(tag):
        assert line.split()[1] == b"OK", line
        break
found = ok(idler.search(None, "SUBJECT", f'"{subject}"'))[0].split()
assert len(found) == 1, found
other.logout()
idler.logout()
done("idle")
