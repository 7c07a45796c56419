# -*- coding: utf-8 -*-
# Licensed like handoffd itself; see the repository's licence.

"""The metric filter: one figure out of a Prometheus text exposition."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: metric
short_description: Sum the samples of one metric in a Prometheus /metrics page
version_added: "0.1.0"
author: handoffd maintainers
description:
  - Reads the text exposition format (what handoffd's C(/metrics) serves)
    and returns the sum of the samples of metric I(name) whose labels
    include every label given as a keyword, as a float; 0.0 when none
    matches.
  - It is the instant-vector selector C(sum(NAME{LABEL="VALUE",...})) of
    PromQL, on one scrape. Two scrapes, before and after, give an
    C(increase()).
options:
  _input:
    description: The page, as C(ansible.builtin.uri) returns it in C(content).
    type: str
    required: true
  name:
    description: The metric's name, such as C(handoff_swaps_total).
    type: str
    required: true
  labels:
    description: Keywords, each a label that a sample must carry with that value (compared as text).
    type: dict
"""

EXAMPLES = r"""
# Failed swaps of service app so far.
failed: "{{ page.content | handoffd.handoffd.metric('handoff_swaps_total', service='app', result='failed') }}"
"""

RETURN = r"""
_value:
  description: The sum of the matching samples, 0.0 when there is none.
  type: float
"""

import math
import re

from ansible.errors import AnsibleFilterError

_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(v):
    return re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], v)


def parse_sample(line):
    """parse_sample returns (name, labels, value) of one sample line."""
    brace = line.find("{")
    space = line.find(" ")
    if brace >= 0 and (space < 0 or brace < space):
        name = line[:brace]
        end = line.rfind("}")
        if end < brace:
            raise ValueError("unclosed labels")
        body, rest = line[brace + 1:end], line[end + 1:]
        labels = {}
        pos = 0
        while pos < len(body):
            m = _LABEL.match(body, pos)
            if not m:
                raise ValueError("bad labels %r" % body)
            labels[m.group(1)] = _unescape(m.group(2))
            pos = m.end()
    else:
        name, _, rest = line.partition(" ")
        labels = {}
    fields = rest.split()
    if not fields:
        raise ValueError("no value")
    return name, labels, float(fields[0])


def metric(text, name, **labels):
    """metric returns the sum of the samples of name whose labels include labels."""
    if not isinstance(text, str):
        raise AnsibleFilterError("metric: give the text of a /metrics page, not %s" % type(text).__name__)
    want = dict((k, str(v)) for k, v in labels.items())
    total = 0.0
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or not line.startswith(name):
            continue
        try:
            sname, slabels, value = parse_sample(line)
        except ValueError as e:
            raise AnsibleFilterError("metric: line %d of the page: %s" % (n, e))
        if sname != name or math.isnan(value):
            continue
        if all(slabels.get(k) == v for k, v in want.items()):
            total += value
    return total


class FilterModule(object):
    """The collection's filters."""

    def filters(self):
        return {"metric": metric}
