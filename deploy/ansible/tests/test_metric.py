"""Unit tests of the metric filter, on a page as handoffd serves it."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "filter"))

import metric  # noqa: E402
from ansible.errors import AnsibleFilterError  # noqa: E402

PAGE = """# HELP handoff_swaps_total Swaps by result.
# TYPE handoff_swaps_total counter
handoff_swaps_total{result="canary",service="app"} 2
handoff_swaps_total{result="failed",service="app"} 0
handoff_swaps_total{result="ok",service="app"} 3
handoff_swaps_total{result="ok",service="web"} 1
handoff_swaps_total{result="rolled_back",service="app"} 1
# TYPE handoff_generation_info gauge
handoff_generation_info{generation="3",pid="42",service="app",state="canary"} 1
handoff_generation_info{generation="2",pid="41",service="app",state="active"} 1
handoff_steered_connections_total{generation="3",service="app"} 1.5e+3
handoff_swaps_total_other{service="a,b=\\"c\\"",x="y"} 7
handoff_mode{mode="ebpf"} 1
handoff_up 1 1700000000000
"""


class MetricTest(unittest.TestCase):
    def test_selects_and_sums(self):
        self.assertEqual(metric.metric(PAGE, "handoff_swaps_total", service="app", result="failed"), 0.0)
        self.assertEqual(metric.metric(PAGE, "handoff_swaps_total", service="app", result="rolled_back"), 1.0)
        self.assertEqual(metric.metric(PAGE, "handoff_swaps_total", result="ok"), 4.0)
        self.assertEqual(metric.metric(PAGE, "handoff_swaps_total", service="app"), 6.0)
        # Labels compare as text: an int generation matches "3".
        self.assertEqual(metric.metric(PAGE, "handoff_generation_info", generation=3, state="canary"), 1.0)
        self.assertEqual(metric.metric(PAGE, "handoff_steered_connections_total", generation="3"), 1500.0)
        self.assertEqual(metric.metric(PAGE, "handoff_up"), 1.0)

    def test_no_match_is_zero(self):
        self.assertEqual(metric.metric(PAGE, "handoff_generation_info", generation=4), 0.0)
        self.assertEqual(metric.metric(PAGE, "handoff_nothing"), 0.0)

    def test_escaped_label_values(self):
        self.assertEqual(metric.metric(PAGE, "handoff_swaps_total_other", service='a,b="c"'), 7.0)

    def test_bad_page(self):
        with self.assertRaises(AnsibleFilterError):
            metric.metric('handoff_x{a="b" 1\n', "handoff_x")
        with self.assertRaises(AnsibleFilterError):
            metric.metric(None, "handoff_x")


if __name__ == "__main__":
    unittest.main()
