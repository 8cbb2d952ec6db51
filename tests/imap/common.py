"""Shared helpers of the end-to-end IMAP scripts (tests/imap_e2e.rs runs
them): connect over STARTTLS or implicit TLS trusting only the server's
self-signed certificate, and check results.

The server is given by the environment:
  FACTEUR_IMAP_HOST     address to connect to (an IP in the certificate)
  FACTEUR_IMAP_PORT     STARTTLS port
  FACTEUR_IMAPS_PORT    implicit-TLS port
  FACTEUR_IMAP_CA       the server's certificate (PEM), the only CA trusted
  FACTEUR_IMAP_USER, FACTEUR_IMAP_PASSWORD
The transport is the script's first argument: "starttls" or "tls".
"""

import imaplib
import os
import re
import ssl
import sys

TIMEOUT = 30


def mode():
    m = sys.argv[1] if len(sys.argv) > 1 else "tls"
    assert m in ("starttls", "tls"), m
    return m


def context():
    # Verifies the chain against the pinned certificate and the host name
    # (an IP address: checked against the certificate's IP SANs).
    ctx = ssl.create_default_context(cafile=os.environ["FACTEUR_IMAP_CA"])
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def connect(transport=None):
    transport = transport or mode()
    host = os.environ["FACTEUR_IMAP_HOST"]
    if transport == "tls":
        port = int(os.environ["FACTEUR_IMAPS_PORT"])
        return imaplib.IMAP4_SSL(host, port, ssl_context=context(), timeout=TIMEOUT)
    c = imaplib.IMAP4(host, int(os.environ["FACTEUR_IMAP_PORT"]), timeout=TIMEOUT)
    assert "STARTTLS" in c.capabilities, c.capabilities
    ok(c.starttls(ssl_context=context()))
    assert "STARTTLS" not in c.capabilities, c.capabilities
    return c


def user():
    return os.environ["FACTEUR_IMAP_USER"], os.environ["FACTEUR_IMAP_PASSWORD"]


def login(transport=None):
    c = connect(transport)
    ok(c.login(*user()))
    return c


def ok(result):
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def text(data):
    """The untagged data of a response as one string."""
    out = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            out.extend(x.decode("utf-8", "replace") for x in item)
        else:
            out.append(item.decode("utf-8", "replace"))
    return "\n".join(out)


def listed(c, pattern="*"):
    """Mailbox names LIST returns for `pattern`, with their attributes."""
    names = {}
    for line in ok(c.list('""', pattern)):
        if line is None:
            continue
        m = re.match(rb'\((.*?)\) (?:"[^"]*"|NIL) (.*)$', line)
        assert m, line
        name = m.group(2).decode()
        if name.startswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        names[name] = m.group(1).decode().split()
    return names


def quote(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def done(name):
    print(f"{name} ({mode()}): ok")
