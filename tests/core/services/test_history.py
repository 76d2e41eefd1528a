"""The distribution diff of two tag versions, on hand-written distributions (the shapes of cohort_engine/tag_column.py)."""

from __future__ import annotations

from core.services.history import distribution_diff


def test_values_are_matched_by_value_and_type():
    before = {"kind": "values", "count": 6, "values": [{"value": "a", "count": 4}, {"value": 1, "count": 2}],
              "other_count": 0}
    after = {"kind": "values", "count": 7, "values": [{"value": "a", "count": 1}, {"value": "1", "count": 5},
                                                      {"value": 1, "count": 1}], "other_count": 0}
    diff = distribution_diff(before, after)
    assert diff["count"] == {"from": 6, "to": 7, "change": 1}
    assert diff["values"] == [{"value": "1", "from": 0, "to": 5, "change": 5},
                              {"value": "a", "from": 4, "to": 1, "change": -3},
                              {"value": 1, "from": 2, "to": 1, "change": -1}]
    assert diff["other"] == {"from": 0, "to": 0, "change": 0}


def test_a_histogram_side_gives_both_histograms_and_summaries():
    before = {"kind": "values", "count": 2, "min": 1, "max": 2, "sum": 3.0, "avg": 1.5,
              "values": [{"value": 1, "count": 1}, {"value": 2, "count": 1}], "other_count": 0}
    after = {"kind": "histogram", "count": 3, "min": 0, "max": 9, "sum": 12.0, "avg": 4.0,
             "bins": [{"low": 0, "high": 4.5, "count": 1}, {"low": 4.5, "high": 9, "count": 2}]}
    diff = distribution_diff(before, after)
    assert diff["kind"] == "histogram" and diff["count"]["change"] == 1
    assert diff["from_summary"] == {"count": 2, "min": 1, "max": 2, "sum": 3.0, "avg": 1.5}
    assert diff["to_bins"] == after["bins"] and diff["from_bins"] == before["values"]
