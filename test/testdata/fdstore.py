#!/usr/bin/python3
"""A service that keeps its state in systemd's fd store, without handoffd's SDK.

It speaks systemd's protocols only, as any program written for systemd
does: socket activation (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES) for its
listener and for what it stored, and sd_notify on NOTIFY_SOCKET for
READY=1 and for the fd store (FDSTORE=1, FDNAME=, FDSTOREREMOVE=1, the fds
attached as SCM_RIGHTS).

On its first run it finds no fd named "pystate": it makes a memfd, writes
a line into it and stores it. Every later generation (a swap, a crash
replacement) finds that very memfd again in LISTEN_FDS, reads what the
generations before it wrote, and adds its own line. GET / answers, in
JSON, whether it found the memfd and what it held.

When HANDOFF_STATE_FD is set (a service with state_handoff), it also
speaks handoffd's state handoff (see internal/stateproto): it answers
HANDOVER=1 with a sealed memfd (HANDOFF_STATE=1), takes STATE=1 and
answers LOADED=1, and sends a final (HANDOFF_FINAL=1) after it stops.

For the tests of the fd store's bounds, POST endpoints send what handoffd
must refuse, and --bad-state answers HANDOVER=1 and sends the final with a
pipe instead of a sealed memfd. Every fd it sends it closes at once: what
stays open afterwards is handoffd's.
"""

import fcntl
import json
import os
import signal
import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

NAME = "pystate"
GEN = os.environ.get("HANDOFF_GENERATION", "0")
BAD_STATE = "--bad-state" in sys.argv[1:]
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def notify_address():
    addr = os.environ["NOTIFY_SOCKET"]
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(text, fds=()):
    """Sends one sd_notify datagram, fds attached as SCM_RIGHTS, then closes fds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            # Connected: Python 3.11's send_fds drops its address argument.
            s.connect(notify_address())
            socket.send_fds(s, [text.encode()], list(fds))
        finally:
            for fd in fds:
                os.close(fd)


def inherited():
    """Returns the (name, fd) pairs passed in LISTEN_FDS, in fd order."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("LISTEN_PID is not this process: not started by socket activation")
    n = int(os.environ["LISTEN_FDS"])
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    if len(names) != n:
        sys.exit("LISTEN_FDNAMES %r does not name LISTEN_FDS=%d fds" % (names, n))
    return [(names[i], 3 + i) for i in range(n)]


def memfd(name, data, sealed=False):
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    return fd


def pipe_fd():
    r, w = os.pipe()
    os.close(w)
    return r


FDS = inherited()
NAMES = [name for name, _ in FDS]
LISTENER = next(fd for name, fd in FDS if name == "http")
STORED = [fd for name, fd in FDS if name == NAME]

# The fd store: find the memfd of an earlier generation, or make and store one.
line = ("generation %s pid %d\n" % (GEN, os.getpid())).encode()
if STORED:
    STATE_FD = STORED[0]
    HELD = os.pread(STATE_FD, 1 << 16, 0).decode()
    os.pwrite(STATE_FD, line, os.fstat(STATE_FD).st_size)
else:
    STATE_FD = memfd(NAME, line)
    HELD = ""
    # systemd's protocol closes nothing of ours: send a duplicate, keep ours.
    notify("FDSTORE=1\nFDNAME=%s\n" % NAME, [os.dup(STATE_FD)])
KIND = os.readlink("/proc/self/fd/%d" % STATE_FD)

# handoffd's state handoff, on the channel in HANDOFF_STATE_FD.
HANDOFF = {"state": None, "restored": None, "reason": None, "finals": []}
CHANNEL = None
if os.environ.get("HANDOFF_STATE_FD"):
    CHANNEL = socket.socket(fileno=int(os.environ["HANDOFF_STATE_FD"]))


def snapshot():
    data = ("snapshot of generation %s\n" % GEN).encode()
    if BAD_STATE:
        return pipe_fd()
    return memfd("handoff.state", data, sealed=True)


def read_all(fd):
    try:
        return os.pread(fd, 1 << 16, 0).decode()
    finally:
        os.close(fd)


def channel_loop():
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(CHANNEL, 4096, 16)
        except OSError:
            return
        if not data:
            return
        msg = dict(l.split("=", 1) for l in data.decode().splitlines() if "=" in l)
        if msg.get("HANDOVER") == "1":
            notify("FDSTORE=1\nFDNAME=handoff.state\nHANDOFF_STATE=1\n", [snapshot()])
        elif "STATE" in msg:
            HANDOFF["state"] = msg["STATE"]
            HANDOFF["reason"] = msg.get("REASON")
            if msg["STATE"] == "1" and fds:
                HANDOFF["restored"] = read_all(fds.pop(0))
                CHANNEL.send(b"LOADED=1\n")
        elif "FINAL" in msg and fds:
            HANDOFF["finals"].append({"from": msg["FINAL"], "data": read_all(fds.pop(0))})
        for fd in fds:
            os.close(fd)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer({"generation": int(GEN), "pid": os.getpid(), "found": bool(STORED),
                     "held": HELD, "kind": KIND, "names": NAMES, "handoff": HANDOFF})

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        n = int(q.get("n", "1"))
        sent = url.path
        if url.path == "/store":
            # FDSTORE=1 with n fresh memfds under one name.
            notify("FDSTORE=1\nFDNAME=%s\n" % q["name"], [memfd(q["name"], b"x") for _ in range(n)])
        elif url.path == "/remove":
            notify("FDSTOREREMOVE=1\nFDNAME=%s\n" % q["name"])
        elif url.path == "/abuse/name":
            notify("FDSTORE=1\nFDNAME=%s\n" % ("n" * int(q.get("len", "300"))), [memfd("name", b"x")])
        elif url.path == "/abuse/oversize":
            # Over 4096 bytes, with fds attached.
            pad = "X_PAD=" + "x" * 5000 + "\n"
            notify("FDSTORE=1\nFDNAME=big\n" + pad, [memfd("big", b"x") for _ in range(n)])
        elif url.path == "/abuse/unexpected":
            # A snapshot nobody asked for (no HANDOVER=1).
            notify("FDSTORE=1\nFDNAME=handoff.state\nHANDOFF_STATE=1\n",
                   [memfd("handoff.state", b"unasked", sealed=True)])
        else:
            self.send_error(404)
            return
        self.answer({"generation": int(GEN), "sent": sent})


def main():
    server = HTTPServer(("", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=LISTENER)
    # The threads inherit the mask: the signals wait for sigwait below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serving.start()
    notify("READY=1\nSTATUS=serving\n")
    if CHANNEL is not None:
        threading.Thread(target=channel_loop, daemon=True).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    notify("STOPPING=1\n")
    server.shutdown()
    server.server_close()
    if CHANNEL is not None:
        final = pipe_fd() if BAD_STATE else memfd("handoff.final", ("final of generation %s\n" % GEN).encode(), sealed=True)
        notify("FDSTORE=1\nFDNAME=handoff.final\nHANDOFF_FINAL=1\n", [final])
    # At once, as a program may: what it sent waits in handoffd's socket.
    os._exit(0)


if __name__ == "__main__":
    main()
