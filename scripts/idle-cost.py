#!/usr/bin/env python3
"""Idle cost of an IMAP server (doc/performance.md, "Idle cost").

    scripts/idle-cost.py HOST:PORT --users 'user%d:password' --user-count 100 \
        --sessions 1000 --seconds 60 --pid PID [--pid PID]... \
        [--metrics http://HOST:PORT/metrics] [--deliver HOST:PORT --rcpt 'user%d@example.org']

Opens --sessions connections (LOGIN, SELECT INBOX, IDLE), spread over the
users, waits 10 s for them to settle, then reads the CPU time (utime +
stime, /proc) of the given processes and their descendants over --seconds
and prints it as a share of one core. With --metrics, also the store
requests per second (facteur_store_calls_total) over the same period.
With --deliver, delivers one message over LMTP to a random user every 5 s
during the measure and reports how long until an IDLE session of that user
sees its EXISTS (median, worst).
"""
import argparse
import os
import random
import re
import socket
import statistics
import threading
import time
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")


def descendants(pids):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except OSError:
                pass
    out, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in descendants(pids):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK


def store_requests(url):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("facteur_store_calls_total")
    )


class Session:
    def __init__(self, addr, login, password, on_exists):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.cmd(f"a LOGIN {login} {password}")
        self.cmd("b SELECT INBOX")
        self.sock.sendall(b"c IDLE\r\n")
        line = self.file.readline()
        assert line.startswith(b"+"), line
        self.on_exists = on_exists
        threading.Thread(target=self.read, daemon=True).start()

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        tag = line.split()[0].encode()
        while True:
            reply = self.file.readline()
            if not reply:
                raise RuntimeError("connection closed")
            if reply.startswith(tag + b" "):
                assert reply.startswith(tag + b" OK"), reply
                return

    def read(self):
        for line in self.file:
            if re.match(rb"\* \d+ EXISTS", line):
                self.on_exists(time.monotonic())


def lmtp_send(addr, rcpt):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    f = s.makefile("rb")

    def expect(code):
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                assert line.startswith(code), line
                return

    expect(b"220")
    for line, code in [
        ("LHLO idle-cost", b"250"),
        ("MAIL FROM:<probe@example.org>", b"250"),
        (f"RCPT TO:<{rcpt}>", b"250"),
        ("DATA", b"354"),
    ]:
        s.sendall(line.encode() + b"\r\n")
        expect(code)
    s.sendall(b"Subject: idle probe\r\nFrom: probe@example.org\r\n\r\nhi\r\n.\r\n")
    expect(b"250")
    s.sendall(b"QUIT\r\n")
    s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("--users", default="user%d:password")
    ap.add_argument("--user-count", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--pid", type=int, action="append", default=[])
    ap.add_argument("--metrics")
    ap.add_argument("--deliver")
    ap.add_argument("--rcpt", default="user%d@example.org")
    a = ap.parse_args()
    login_fmt, password = a.users.split(":", 1)
    seen = {}
    lock = threading.Lock()

    def watcher(user):
        def on_exists(t):
            with lock:
                seen.setdefault(user, []).append(t)

        return on_exists

    sessions = []
    for i in range(a.sessions):
        user = i % a.user_count + 1
        sessions.append(Session(a.server, login_fmt % user, password, watcher(user)))
    print(f"{len(sessions)} sessions in IDLE", flush=True)
    time.sleep(10)
    cpu0, t0 = cpu_seconds(a.pid), time.monotonic()
    req0 = store_requests(a.metrics) if a.metrics else None
    delays = []
    while time.monotonic() - t0 < a.seconds:
        if a.deliver:
            user = random.randint(1, a.user_count)
            with lock:
                seen.pop(user, None)
            sent = time.monotonic()
            lmtp_send(a.deliver, a.rcpt % user)
            while time.monotonic() - sent < 10:
                with lock:
                    got = seen.get(user)
                if got:
                    delays.append(got[0] - sent)
                    break
                time.sleep(0.01)
            else:
                delays.append(float("inf"))
            time.sleep(max(0, 5 - (time.monotonic() - sent)))
        else:
            time.sleep(1)
    cpu1, t1 = cpu_seconds(a.pid), time.monotonic()
    req1 = store_requests(a.metrics) if a.metrics else None
    span = t1 - t0
    print(f"CPU {100 * (cpu1 - cpu0) / span:.1f} % of one core over {span:.0f} s")
    if req0 is not None:
        print(f"store requests {(req1 - req0) / span:.1f}/s")
    if delays:
        print(
            f"new mail to IDLE: {len(delays)} deliveries, median {statistics.median(delays):.2f} s, "
            f"worst {max(delays):.2f} s"
        )


if __name__ == "__main__":
    main()
