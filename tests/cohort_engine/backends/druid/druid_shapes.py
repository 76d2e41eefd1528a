"""Druid's documented native query shapes (docs: groupBy, filters, aggregations, post-aggregations, having,
granularities, limitSpec, segmentMetadata), as field sets a query must keep to.

Written from the Druid documentation, not from the backend: a field a query sends that Druid's docs
do not list for that type, or a required field it leaves out, is an error.
"""

from __future__ import annotations

GROUP_BY = {"required": {"queryType", "dataSource", "dimensions", "granularity", "intervals"},
            "optional": {"limitSpec", "having", "filter", "aggregations", "postAggregations", "subtotalsSpec",
                         "context", "virtualColumns"}}
SEGMENT_METADATA = {"required": {"queryType", "dataSource"},
                    "optional": {"intervals", "toInclude", "merge", "context", "analysisTypes",
                                 "aggregatorMergeStrategy", "lenientAggregatorMerge"}}
FILTERS = {
    "selector": ({"dimension", "value"}, {"extractionFn"}),
    "in": ({"dimension", "values"}, {"extractionFn"}),
    "bound": ({"dimension"}, {"lower", "upper", "lowerStrict", "upperStrict", "ordering", "extractionFn"}),
    "like": ({"dimension", "pattern"}, {"escape", "extractionFn"}),
    "regex": ({"dimension", "pattern"}, {"extractionFn"}),
    "and": ({"fields"}, set()),
    "or": ({"fields"}, set()),
    "not": ({"field"}, set()),
}
AGGREGATORS = {
    "count": ({"name"}, set()),
    "longSum": ({"name", "fieldName"}, set()), "doubleSum": ({"name", "fieldName"}, set()),
    "longMin": ({"name", "fieldName"}, set()), "longMax": ({"name", "fieldName"}, set()),
    "doubleMin": ({"name", "fieldName"}, set()), "doubleMax": ({"name", "fieldName"}, set()),
    "filtered": ({"filter", "aggregator"}, {"name"}),
}
POST_AGGREGATORS = {
    "arithmetic": ({"name", "fn", "fields"}, {"ordering"}),
    "fieldAccess": ({"fieldName"}, {"name"}),
}
ARITHMETIC_FNS = {"+", "-", "*", "/", "quotient", "pow"}
HAVING = {"filter": ({"filter"}, set()), "and": ({"havingSpecs"}, set()), "or": ({"havingSpecs"}, set()),
          "not": ({"havingSpec"}, set()), "greaterThan": ({"aggregation", "value"}, set()),
          "lessThan": ({"aggregation", "value"}, set()), "equalTo": ({"aggregation", "value"}, set())}
DIMENSION_SPEC = ({"dimension"}, {"type", "outputName", "outputType"})
LIMIT_SPEC = ({"type", "columns"}, {"limit", "offset"})
ORDER_BY_COLUMN = ({"dimension"}, {"direction", "dimensionOrder"})
GRANULARITIES = {"all", "none", "second", "minute", "fifteen_minute", "thirty_minute", "hour", "day", "week",
                 "month", "quarter", "year"}


def _fields(spec: dict, required: set, optional: set, path: str, errors: list, typed: bool = True) -> None:
    keys = set(spec) - ({"type"} if typed else set())
    for missing in sorted(required - keys):
        errors.append(f"{path}: missing {missing}")
    for extra in sorted(keys - required - optional):
        errors.append(f"{path}: {extra} is not a documented field")


def check_filter(spec, path: str, errors: list) -> None:
    kind = spec.get("type")
    if kind not in FILTERS:
        errors.append(f"{path}: filter type {kind!r} is not one the backend may send")
        return
    _fields(spec, *FILTERS[kind], path, errors)
    if kind == "bound":
        if spec.get("ordering", "lexicographic") not in ("lexicographic", "numeric"):
            errors.append(f"{path}: ordering {spec.get('ordering')!r}")
        if spec.get("ordering") == "numeric":
            for side in ("lower", "upper"):
                if side in spec and not isinstance(spec[side], str):
                    errors.append(f"{path}.{side}: numeric bounds are strings in Druid's docs")
                elif side in spec:
                    float(spec[side])
    if kind in ("and", "or"):
        for i, sub in enumerate(spec["fields"]):
            check_filter(sub, f"{path}.fields[{i}]", errors)
    if kind == "not":
        check_filter(spec["field"], f"{path}.field", errors)
    if kind == "like" and "escape" in spec and len(spec["escape"]) != 1:
        errors.append(f"{path}.escape must be one character")


def check_aggregator(spec, path: str, errors: list) -> None:
    kind = spec.get("type")
    if kind not in AGGREGATORS:
        errors.append(f"{path}: aggregator {kind!r} is not one the backend may send")
        return
    _fields(spec, *AGGREGATORS[kind], path, errors)
    if kind == "filtered":
        check_filter(spec["filter"], f"{path}.filter", errors)
        check_aggregator(spec["aggregator"], f"{path}.aggregator", errors)


def check_post(spec, path: str, errors: list) -> None:
    kind = spec.get("type")
    if kind not in POST_AGGREGATORS:
        errors.append(f"{path}: post-aggregator {kind!r}")
        return
    _fields(spec, *POST_AGGREGATORS[kind], path, errors)
    if kind == "arithmetic":
        if spec["fn"] not in ARITHMETIC_FNS:
            errors.append(f"{path}.fn {spec['fn']!r}")
        for i, sub in enumerate(spec["fields"]):
            check_post(sub, f"{path}.fields[{i}]", errors)


def check_having(spec, path: str, errors: list) -> None:
    kind = spec.get("type")
    if kind not in HAVING:
        errors.append(f"{path}: having {kind!r}")
        return
    _fields(spec, *HAVING[kind], path, errors)
    if kind == "filter":
        check_filter(spec["filter"], f"{path}.filter", errors)


def check_query(query: dict) -> list[str]:
    """Every way the query departs from Druid's documented shapes (empty when it keeps to them)."""
    errors: list[str] = []
    kind = query.get("queryType")
    if kind == "segmentMetadata":
        _fields(query, SEGMENT_METADATA["required"], SEGMENT_METADATA["optional"], "query", errors, typed=False)
        return errors
    if kind != "groupBy":
        return [f"queryType {kind!r}"]
    _fields(query, GROUP_BY["required"], GROUP_BY["optional"], "query", errors, typed=False)
    if not isinstance(query.get("intervals"), list) or not all("/" in i for i in query.get("intervals", [])):
        errors.append("intervals must be a list of ISO start/end intervals")
    granularity = query.get("granularity")
    if isinstance(granularity, dict):
        _fields(granularity, {"period"}, {"timeZone", "origin"}, "granularity", errors)
    elif granularity not in GRANULARITIES:
        errors.append(f"granularity {granularity!r}")
    for i, dim in enumerate(query.get("dimensions", [])):
        if not isinstance(dim, str):
            _fields(dim, *DIMENSION_SPEC, f"dimensions[{i}]", errors, typed=False)
    if "filter" in query:
        check_filter(query["filter"], "filter", errors)
    for i, agg in enumerate(query.get("aggregations", [])):
        check_aggregator(agg, f"aggregations[{i}]", errors)
    for i, post in enumerate(query.get("postAggregations", [])):
        check_post(post, f"postAggregations[{i}]", errors)
    if "having" in query:
        check_having(query["having"], "having", errors)
    if "limitSpec" in query:
        spec = query["limitSpec"]
        _fields(spec, *LIMIT_SPEC, "limitSpec", errors, typed=False)
        if spec.get("type") != "default":
            errors.append("limitSpec.type must be default")
        for i, column in enumerate(spec.get("columns", [])):
            _fields(column, *ORDER_BY_COLUMN, f"limitSpec.columns[{i}]", errors, typed=False)
    context = query.get("context", {})
    for key in context:
        if key not in ("queryId", "timeout", "resultAsArray", "sortByDimsFirst"):
            errors.append(f"context.{key} is not a documented groupBy/query context key")
    return errors
