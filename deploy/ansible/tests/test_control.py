"""Unit tests of the control module: what each action plans for each state
of a service, and the client over a real UNIX socket. The end-to-end test
is test/fleet_test.go (make test-fleet)."""

import http.server
import json
import os
import socketserver
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "modules"))

import control  # noqa: E402


def gen(id, state, weight=None, sticky=False, pid=None):
    g = {"id": id, "pid": pid or 1000 + id, "state": state}
    if weight is not None:
        g["weight"] = weight
    if sticky:
        g["sticky"] = True
    return g


def svc(*gens, mode="ebpf", swapping=False):
    return {"name": "app", "mode": mode, "swapping": swapping, "generations": list(gens)}


ACTIVE = svc(gen(1, "active", 1))
CANARY = svc(gen(1, "active", 0.8), gen(2, "canary", 0.2))
ROLLED_BACK = svc(gen(1, "active", 1), gen(2, "draining", 0))
PROBATION = svc(gen(1, "standby", 0), gen(2, "active", 1))


def params(**kw):
    p = {"share": None, "sticky": False, "generation": None, "timeout": 120}
    p.update(kw)
    return p


class PlanTest(unittest.TestCase):
    def plan(self, action, s, **kw):
        return control.plan(action, s, params(**kw))

    def refused(self, action, s, want, **kw):
        with self.assertRaises(control.APIError) as cm:
            self.plan(action, s, **kw)
        self.assertIn(want, str(cm.exception))

    def test_canary_starts(self):
        p = self.plan("canary", ACTIVE, share=10)
        self.assertTrue(p.changed)
        self.assertEqual((p.verb, p.body), ("swap", {"canary": 10, "timeout": "120s"}))
        self.assertEqual(p.msg, "start a canary with 10% of new connections beside generation 1")

    def test_canary_sticky(self):
        self.assertEqual(self.plan("canary", ACTIVE, share=5, sticky=True).body["sticky"], True)

    def test_canary_at_its_share_is_left_alone(self):
        p = self.plan("canary", CANARY, share=20)
        self.assertFalse(p.changed)
        self.assertIsNone(p.verb)

    def test_canary_share_changes(self):
        p = self.plan("canary", CANARY, share=50, generation=2)
        self.assertEqual((p.changed, p.verb, p.body), (True, "canary", {"weight": 50}))
        # To 0: the canary stays, without new connections.
        self.assertEqual(self.plan("canary", CANARY, share=0).body, {"weight": 0})

    def test_canary_refusals(self):
        self.refused("canary", ACTIVE, "give share")
        self.refused("canary", ACTIVE, "share 101%", share=101)
        self.refused("canary", ACTIVE, "above 0%", share=0)
        self.refused("canary", svc(gen(1, "active", 1), mode="fdpass"), "fdpass mode", share=10)
        self.refused("canary", svc(), "no active generation", share=10)
        self.refused("canary", svc(gen(1, "active", 1), swapping=True), "swap is under way", share=10)
        self.refused("canary", CANARY, "generation 2 is the canary, not 3", share=30, generation=3)
        self.refused("canary", CANARY, "roll it back to change sticky", share=30, sticky=True)
        self.refused("canary", ROLLED_BACK, "generation 2 is not a canary (draining)", share=30, generation=2)

    def test_promote(self):
        p = self.plan("promote", CANARY, generation=2)
        self.assertEqual((p.changed, p.verb), (True, "promote"))
        self.assertFalse(self.plan("promote", svc(gen(2, "active", 1)), generation=2).changed)
        self.refused("promote", ROLLED_BACK, "generation 2 is draining, not a canary", generation=2)
        self.refused("promote", ACTIVE, "no canary is running")
        self.refused("promote", CANARY, "generation 2 is the canary, not 5", generation=5)

    def test_rollback(self):
        p = self.plan("rollback", CANARY, generation=2)
        self.assertEqual((p.changed, p.verb), (True, "rollback"))
        # handoffd rolled it back already: nothing to do, no error.
        p = self.plan("rollback", ROLLED_BACK, generation=2)
        self.assertEqual((p.changed, p.verb), (False, None))
        self.assertEqual(p.msg, "generation 2 is draining: nothing to roll back")
        self.assertFalse(self.plan("rollback", ACTIVE).changed)
        self.assertEqual(self.plan("rollback", PROBATION).verb, "rollback")
        self.assertFalse(self.plan("rollback", PROBATION, generation=7).changed)
        self.refused("rollback", CANARY, "generation 2 is the canary, not 3", generation=3)

    def test_swap(self):
        p = self.plan("swap", ACTIVE, timeout=30)
        self.assertEqual((p.verb, p.body, p.timeout), ("swap", {"timeout": "30s"}, 60))
        self.refused("swap", CANARY, "a canary is running")


class FakeHandoffd(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An HTTP server on a UNIX socket that answers each request from a
    table, and records the requests."""

    daemon_threads = True

    def __init__(self, path, answers):
        self.answers = answers
        self.requests = []
        socketserver.UnixStreamServer.__init__(self, path, Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        self.server.requests.append((self.command, self.path, body))
        code, answer = self.server.answers[(self.command, self.path)]
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = answer


class ClientTest(unittest.TestCase):
    def serve(self, answers):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "handoffd.sock")
        srv = FakeHandoffd(path, answers)
        t = threading.Thread(target=srv.serve_forever)
        t.start()
        self.addCleanup(lambda: (srv.shutdown(), srv.server_close(), t.join(), os.remove(path), os.rmdir(d)))
        return srv, control.Client(path)

    def test_status_and_post(self):
        st = {"services": [CANARY]}
        srv, c = self.serve({
            ("GET", "/v1/status?service=app"): (200, st),
            ("POST", "/v1/services/app/promote"): (200, {"service": "app", "generation": 2, "pid": 1002, "previous": 1}),
            ("POST", "/v1/services/app/canary"): (200, {"service": "app", "generation": 2, "active": 1, "weight": 0.3}),
        })
        self.assertEqual(c.status("app"), st)
        res = c.post("app", "promote")
        self.assertEqual(res["generation"], 2)
        self.assertEqual(srv.requests[-1], ("POST", "/v1/services/app/promote", None))
        c.post("app", "canary", {"weight": 30})
        self.assertEqual(srv.requests[-1], ("POST", "/v1/services/app/canary", {"weight": 30}))

    def test_error_is_handoffds_line(self):
        _, c = self.serve({("POST", "/v1/services/app/swap"): (409, {"error": "swap app: a swap is already in progress"})})
        with self.assertRaises(control.APIError) as cm:
            c.post("app", "swap", {"timeout": "5s"})
        self.assertEqual(str(cm.exception), "swap app: a swap is already in progress")
        self.assertEqual(cm.exception.status, 409)

    def test_unreachable(self):
        c = control.Client("/nonexistent/handoffd.sock")
        with self.assertRaises(control.APIError) as cm:
            c.status()
        self.assertIn("cannot reach handoffd at /nonexistent/handoffd.sock (is it running? set control)", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
