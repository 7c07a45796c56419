#!/usr/bin/python
# -*- coding: utf-8 -*-
# Licensed like handoffd itself; see the repository's licence.

"""Drive handoffd's control API over its UNIX socket on the managed host."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: control
short_description: Swap, canary, promote and roll back a handoffd service, or read its status
description:
  - Talks to handoffd's HTTP/JSON control API over its UNIX socket on the
    managed host, as C(handoffctl) does. Needs Python 3's standard library
    only.
  - C(action=status) reads the service's generations. C(action=swap) starts
    the next generation and returns once it is active (the old one drains).
    C(action=canary) starts the next generation as a canary that receives
    I(share) percent of new connections beside the active one, or changes the
    share of the canary that runs; a canary that runs at that share already
    is left alone (C(changed=false)). C(action=promote) makes the canary the
    active generation. C(action=rollback) takes the canary's share back to 0
    and drains it (or, within probation, makes the standby generation active
    again); with nothing to roll back it changes nothing.
    C(action=reload_config) makes handoffd read its config file again.
  - Every action returns the service's status afterwards, also as the fact
    C(handoffd_status).
  - In check mode nothing is sent but status reads; the module says what it
    would do, and fails where handoffd would refuse.
version_added: "0.1.0"
author: handoffd maintainers
options:
  action:
    description: What to do.
    type: str
    choices: [status, swap, canary, promote, rollback, reload_config]
    default: status
  service:
    description:
      - The service, as named in handoffd's config.
      - Required by every action but C(action=status) (all services) and
        C(action=reload_config).
    type: str
  control:
    description: handoffd's control socket (the config's C(control) key).
    type: path
    default: /run/handoff/handoffd.sock
  share:
    description:
      - With C(action=canary), the canary's share of new connections in
        percent, above 0 and at most 100 to start one, from 0 to 100 to
        change the share of one that runs.
    type: float
  sticky:
    description:
      - With C(action=canary), split by client address instead of by
        connection, so that a client stays on one generation. Applies when the
        canary starts; a running canary keeps its split.
    type: bool
    default: false
  generation:
    description:
      - The canary generation the task means, as an earlier C(action=canary)
        returned it. C(action=canary) and C(action=promote) fail when another
        generation is the canary; C(action=promote) of a generation that is
        active already, and C(action=rollback) of one that is no longer a
        canary (handoffd rolled it back by itself, or it was rolled back
        before), change nothing.
    type: int
  timeout:
    description:
      - How long a swap or a canary's start may take, in seconds; the
        service's C(ready_timeout) applies as well.
    type: int
    default: 120
attributes:
  check_mode:
    support: full
notes:
  - The module runs on the managed host, which must be able to reach the
    control socket (root, or a member of the config's C(group)).
  - A canary needs handoffd's ebpf mode; handoffd refuses it in fdpass mode.
"""

EXAMPLES = r"""
- name: Start a canary of the new release with 10% of new connections
  handoffd.handoffd.control:
    service: app
    action: canary
    share: 10
  register: canary

- name: Promote it
  handoffd.handoffd.control:
    service: app
    action: promote
    generation: "{{ canary.canary_generation }}"

- name: Roll it back (nothing happens if handoffd did already)
  handoffd.handoffd.control:
    service: app
    action: rollback
    generation: "{{ canary.canary_generation }}"

- name: Read the status of every service
  handoffd.handoffd.control:
  register: st
"""

RETURN = r"""
msg:
  description: What the module did, or would do in check mode, in one line.
  returned: always
  type: str
  sample: "app: generation 3 is a canary (pid 4242) with 10% of new connections; generation 2 keeps the rest"
result:
  description: handoffd's answer to the request the module sent (absent when it sent none).
  returned: when a request changed something
  type: dict
status:
  description: handoffd's status (GET /v1/status) after the action; one service's, or every service's.
  returned: always
  type: dict
active_generation:
  description: The id of the service's active generation, or null.
  returned: when I(service) is set
  type: int
canary_generation:
  description:
    - The id of the service's canary, or null. In check mode, after a canary
      would have started, null.
  returned: when I(service) is set
  type: int
canary_share:
  description: The canary's share of new connections in percent, or null.
  returned: when I(service) is set
  type: float
ansible_facts:
  description: The fact C(handoffd_status), the same as I(status).
  returned: always
  type: dict
"""

import json
import socket

import http.client as http_client
from urllib.parse import quote

from ansible.module_utils.basic import AnsibleModule


class APIError(Exception):
    """An answer of handoffd other than 200 OK, or no answer at all."""

    def __init__(self, message, status=None):
        super(APIError, self).__init__(message)
        self.status = status


class UnixHTTPConnection(http_client.HTTPConnection):
    """An HTTP connection over a UNIX socket."""

    def __init__(self, path, timeout):
        http_client.HTTPConnection.__init__(self, "handoffd", timeout=timeout)
        self.path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except Exception:
            sock.close()
            raise
        self.sock = sock


class Client(object):
    """A client of handoffd's control API (see api/client.go)."""

    def __init__(self, path, timeout=30):
        self.path = path
        self.timeout = timeout

    def call(self, method, route, body=None, timeout=None):
        conn = UnixHTTPConnection(self.path, timeout or self.timeout)
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            try:
                conn.request(method, route, body=data, headers=headers)
            except (OSError, socket.error) as e:
                raise APIError("cannot reach handoffd at %s (is it running? set control): %s" % (self.path, e))
            try:
                resp = conn.getresponse()
                raw = resp.read()
            except socket.timeout:
                raise APIError("handoffd at %s did not answer %s %s within %ss" % (self.path, method, route, timeout or self.timeout))
            except (OSError, socket.error, http_client.HTTPException) as e:
                raise APIError("%s %s on %s: %s" % (method, route, self.path, e))
        finally:
            conn.close()
        try:
            answer = json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError:
            answer = None
        if resp.status != 200:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise APIError(message or "%s %s: %d %s" % (method, route, resp.status, resp.reason), resp.status)
        if answer is None:
            raise APIError("%s %s: handoffd answered no JSON: %r" % (method, route, raw[:200]))
        return answer

    def status(self, service=None):
        route = "/v1/status"
        if service:
            route += "?service=" + quote(service, safe="")
        return self.call("GET", route)

    def post(self, service, verb, body=None, timeout=None):
        return self.call("POST", "/v1/services/%s/%s" % (quote(service, safe=""), verb), body, timeout)


def service_status(status, name):
    for s in status.get("services") or []:
        if s.get("name") == name:
            return s
    raise APIError("handoffd has no service %s" % name, 404)


def generations_in(svc, state):
    return [g for g in svc.get("generations") or [] if g.get("state") == state]


def one_in(svc, state):
    gens = generations_in(svc, state)
    return gens[0] if gens else None


def find_generation(svc, gen_id):
    for g in svc.get("generations") or []:
        if g.get("id") == gen_id:
            return g
    return None


def percent(weight):
    return round(float(weight) * 100, 6)


def fmt_share(p):
    return ("%g" % p) + "%"


class Plan(object):
    """What one action does on a service in the state status shows: the
    request to send (None: nothing to send), whether that changes
    anything, and what it does, without the service's name."""

    def __init__(self, changed, msg, verb=None, body=None, timeout=None):
        self.changed = changed
        self.msg = msg
        self.verb = verb
        self.body = body
        self.timeout = timeout


def plan(action, svc, params):
    """plan returns the Plan of action for the service svc (its status), or
    raises APIError where handoffd would refuse it, so that check mode
    fails where a real run would."""
    name = svc["name"]
    active = one_in(svc, "active")
    canary = one_in(svc, "canary")
    standby = one_in(svc, "standby")
    want_gen = params.get("generation")
    timeout = params.get("timeout") or 120

    if action == "swap":
        if canary:
            raise APIError("swap %s: a canary is running (generation %d): promote or roll it back first" % (name, canary["id"]), 409)
        if svc.get("swapping"):
            raise APIError("swap %s: a swap is under way" % name, 409)
        was = " to replace generation %d" % active["id"] if active else ""
        return Plan(True, "start a new generation%s" % was, "swap",
                    {"timeout": "%ds" % timeout}, timeout + 30)

    if action == "canary":
        share = params.get("share")
        if share is None:
            raise APIError("canary %s: give share, the canary's percentage of new connections" % name)
        if not 0 <= share <= 100:
            raise APIError("canary %s: share %g%%: give a share from 0 to 100" % (name, share))
        if canary:
            if want_gen is not None and canary["id"] != want_gen:
                raise APIError("canary %s: generation %d is the canary, not %d" % (name, canary["id"], want_gen), 409)
            now = percent(canary.get("weight") or 0)
            if bool(canary.get("sticky")) != bool(params.get("sticky")):
                how = "by client address" if canary.get("sticky") else "by connection"
                raise APIError("canary %s: generation %d splits %s: roll it back to change sticky" % (name, canary["id"], how), 409)
            if abs(now - share) < 1e-6:
                return Plan(False, "canary %d has %s of new connections already" % (canary["id"], fmt_share(share)))
            return Plan(True, "move canary %d from %s to %s of new connections" % (canary["id"], fmt_share(now), fmt_share(share)),
                        "canary", {"weight": share})
        if want_gen is not None:
            g = find_generation(svc, want_gen)
            state = g["state"] if g else "gone"
            raise APIError("canary %s: generation %d is not a canary (%s)" % (name, want_gen, state), 409)
        if share <= 0:
            raise APIError("canary %s: a canary starts with a share above 0%%, not %s" % (name, fmt_share(share)))
        if svc.get("mode") != "ebpf":
            raise APIError("canary %s: the service runs in %s mode, where new connections cannot be split (canary needs ebpf mode)" % (name, svc.get("mode")), 422)
        if not active:
            raise APIError("canary %s: no active generation to share new connections with" % name, 422)
        if svc.get("swapping"):
            raise APIError("canary %s: a swap is under way" % name, 409)
        body = {"canary": share, "timeout": "%ds" % timeout}
        if params.get("sticky"):
            body["sticky"] = True
        return Plan(True, "start a canary with %s of new connections beside generation %d" % (fmt_share(share), active["id"]),
                    "swap", body, timeout + 30)

    if action == "promote":
        if canary:
            if want_gen is not None and canary["id"] != want_gen:
                raise APIError("promote %s: generation %d is the canary, not %d" % (name, canary["id"], want_gen), 409)
            return Plan(True, "promote canary %d (generation %d drains)" % (canary["id"], active["id"] if active else 0), "promote")
        if want_gen is not None and active and active["id"] == want_gen:
            return Plan(False, "generation %d is active already" % want_gen)
        if want_gen is not None:
            g = find_generation(svc, want_gen)
            state = g["state"] if g else "gone"
            raise APIError("promote %s: generation %d is %s, not a canary: it was rolled back" % (name, want_gen, state), 409)
        raise APIError("promote %s: no canary is running: start one with action=canary" % name, 409)

    if action == "rollback":
        if canary:
            if want_gen is not None and canary["id"] != want_gen:
                raise APIError("rollback %s: generation %d is the canary, not %d" % (name, canary["id"], want_gen), 409)
            return Plan(True, "roll canary %d back (generation %d keeps every new connection)" % (canary["id"], active["id"] if active else 0), "rollback")
        if standby and active and (want_gen is None or active["id"] == want_gen):
            return Plan(True, "roll generation %d back to generation %d (in standby)" % (active["id"], standby["id"]), "rollback")
        if want_gen is not None:
            g = find_generation(svc, want_gen)
            state = g["state"] if g else "gone"
            return Plan(False, "generation %d is %s: nothing to roll back" % (want_gen, state))
        return Plan(False, "no canary and no standby generation: nothing to roll back")

    raise APIError("unknown action %s" % action)


def done_msg(action, name, res):
    """done_msg says what handoffd did, as handoffctl does."""
    if action == "swap":
        return "%s: generation %d active (pid %d); generation %d drains" % (name, res["generation"], res["pid"], res.get("previous", 0))
    if action == "canary" and "canary" in res and res["canary"]:
        c = res["canary"]
        by = " by client address" if c.get("sticky") else ""
        return "%s: generation %d is a canary (pid %d) with %s of new connections%s; generation %d keeps the rest" % (
            name, res["generation"], res["pid"], fmt_share(percent(c["weight"])), by, c.get("active", 0))
    if action == "canary":
        return "%s: canary %d gets %s of new connections; generation %d the rest" % (
            name, res["generation"], fmt_share(percent(res["weight"])), res.get("active", 0))
    if action == "promote":
        return "%s: generation %d active (pid %d); generation %d drains" % (name, res["generation"], res["pid"], res.get("previous", 0))
    if action == "rollback":
        return "%s: rolled back to generation %d (pid %d); generation %d drains" % (name, res["generation"], res["pid"], res.get("previous", 0))
    return "%s: %s done" % (name, action)


def summary(svc):
    active = one_in(svc, "active")
    canary = one_in(svc, "canary")
    return {
        "active_generation": active["id"] if active else None,
        "canary_generation": canary["id"] if canary else None,
        "canary_share": percent(canary.get("weight") or 0) if canary else None,
    }


def run(module, client):
    """run does what the module's parameters ask and returns its result, or
    raises APIError."""
    p = module.params
    action, name = p["action"], p["service"]
    if action not in ("status", "reload_config") and not name:
        raise APIError("action=%s needs service" % action)

    if action == "reload_config":
        if module.check_mode:
            out = dict(changed=True, msg="handoffd would read its config file again")
        else:
            ch = client.call("POST", "/v1/reload-config", timeout=max(p["timeout"], 30) + 30)
            changed = any(ch.get(k) for k in ("changed", "added", "removed"))
            parts = ["%s %s" % (k, ", ".join(ch[k])) for k in ("changed", "added", "removed") if ch.get(k)]
            out = dict(changed=changed, result=ch,
                       msg="config reloaded: " + ("; ".join(parts) if parts else "nothing changed"))
        st = client.status(name)
        out["status"] = st
        if name:
            out.update(summary(service_status(st, name)))
        return out

    st = client.status(name)
    if action == "status":
        out = dict(changed=False, status=st, msg="status read")
        if name:
            out.update(summary(service_status(st, name)))
        return out

    svc = service_status(st, name)
    pl = plan(action, svc, p)
    if not pl.changed or module.check_mode:
        out = dict(changed=pl.changed, status=st, msg="%s: %s%s" % (name, "would " if pl.changed else "", pl.msg))
        out.update(summary(svc))
        if module.check_mode and pl.changed and action == "canary" and pl.verb == "swap":
            out["canary_generation"], out["canary_share"] = None, None
        return out

    # handoffd's errors say what was refused and why, in one line.
    res = client.post(name, pl.verb, pl.body, pl.timeout)
    st = client.status(name)
    out = dict(changed=True, result=res, status=st, msg=done_msg(action, name, res))
    out.update(summary(service_status(st, name)))
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="status", choices=["status", "swap", "canary", "promote", "rollback", "reload_config"]),
            service=dict(type="str"),
            control=dict(type="path", default="/run/handoff/handoffd.sock"),
            share=dict(type="float"),
            sticky=dict(type="bool", default=False),
            generation=dict(type="int"),
            timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    if module.params["timeout"] <= 0:
        module.fail_json(msg="timeout %d: give a positive number of seconds" % module.params["timeout"])
    client = Client(module.params["control"])
    try:
        out = run(module, client)
    except APIError as e:
        module.fail_json(msg=str(e), api_status=e.status)
    out["ansible_facts"] = {"handoffd_status": out["status"]}
    module.exit_json(**out)


if __name__ == "__main__":
    main()
