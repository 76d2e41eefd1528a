"""Tag evaluation: a parsed tag definition -> each user's value (a TagColumn), per docs/definition.md "Tags"."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np

from .backends import UserValues
from .bitmaps import to_bitmap
from .errors import EngineError
from .evaluate import EvalContext, evaluate_many
from .tag_column import TagColumn, to_micros
from .timewin import parse_local, to_utc_naive
from .values import ZERO_WHEN_ABSENT

__all__ = ["TagResult", "compute_tag"]


@dataclass
class TagResult:
    column: TagColumn
    timings: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.column.count()


def compute_tag(definition: dict, ctx: EvalContext,
                load_import_tag: Callable[[dict], UserValues] | None = None) -> TagResult:
    """The values of a parsed tag definition (the caller closes ctx.session).

    load_import_tag(definition) gives an import tag's uploaded values (the uploads code; docs/tags.md);
    the import leaves of a values tag's trees are read by ctx.load_import, as in a cohort.
    """
    if ctx.base_time.tzinfo is None:
        ctx = replace(ctx, base_time=ctx.base_time.replace(tzinfo=ctx.tz))
    kind, value_type = definition["kind"], definition.get("type")
    started = time.perf_counter()
    if kind == "values":
        return _values_tag(definition, ctx)
    if ctx.progress:
        ctx.progress(0, 1)
    if kind == "import":
        if load_import_tag is None:
            raise EngineError("unsupported", "import tags need their upload; this engine was given none")
        found = load_import_tag(definition)
        _check_type(found, value_type, "the upload")
        uids, values = found.uids, found.values
    else:
        found = ctx.session.user_values(definition, ctx)
        if kind == "first_last":
            _check_type(found, value_type, f"event property {definition['property']!r}")
        uids, values = found.uids, found.values
        if kind == "metric":
            uids, values = _metric(definition, ctx, uids, values)
            value_type = definition["type"]
    column = _with_default(value_type, uids, values, definition.get("default"), ctx)
    if ctx.progress:
        ctx.progress(1, 1)
    return TagResult(column, [{"leaf": "_root", "type": kind, "seconds": time.perf_counter() - started,
                               "count": column.count()}])


def _check_type(found: UserValues, value_type: str | None, what: str) -> None:
    if value_type is not None and found.value_type != value_type:
        raise EngineError("type_mismatch", f"the tag is of type {value_type} but {what} is {found.value_type}; "
                                           "save the tag again to take the new type")


def _values_tag(definition: dict, ctx: EvalContext) -> TagResult:
    entries = definition["values"]
    results = evaluate_many([e["definition"] for e in entries], ctx, "values")
    assigned_uids, assigned_codes = [], []
    taken = None
    for code, result in enumerate(results):
        # Order is priority: a user takes the first value whose tree contains them.
        fresh = result.bitmap if taken is None else result.bitmap - taken
        taken = result.bitmap.copy() if taken is None else taken | result.bitmap
        ids = np.asarray(fresh.to_array(), dtype=np.uint32)
        assigned_uids.append(ids)
        assigned_codes.append(np.full(len(ids), code, dtype=np.int32))
    labels = [e["value"] for e in entries]
    default = definition.get("default")
    if default is not None:
        rest = ctx.session.universe() - taken
        # A default equal to one of the values is that value (one label, one count).
        same = [i for i, v in enumerate(labels) if _same_value(v, default)]
        if not same:
            labels.append(default)
        assigned_uids.append(np.asarray(rest.to_array(), dtype=np.uint32))
        assigned_codes.append(np.full(len(rest), same[0] if same else len(labels) - 1, dtype=np.int32))
    uids = np.concatenate(assigned_uids) if assigned_uids else np.zeros(0, dtype=np.uint32)
    codes = np.concatenate(assigned_codes) if assigned_codes else np.zeros(0, dtype=np.int32)
    value_type = definition["type"]
    timings = [t for r in results for t in r.timings]
    if value_type in ("string", "boolean"):
        order = np.argsort(uids, kind="stable")
        return TagResult(TagColumn.from_codes(value_type, uids[order], codes[order], labels), timings)
    typed = np.asarray([_typed_scalar(v, value_type, ctx) for v in labels])
    values = typed[codes] if len(codes) else typed[:0]
    return TagResult(TagColumn.from_values(value_type, uids, values), timings)


def _same_value(a, b) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _metric(definition: dict, ctx: EvalContext, uids: np.ndarray, values: np.ndarray):
    if definition["agg"]["fn"] in ZERO_WHEN_ABSENT:
        # Users of the universe without a matching event have the aggregate 0 (the event-leaf rule).
        universe = ctx.session.universe()
        missing = universe - to_bitmap(uids)
        extra = np.asarray(missing.to_array(), dtype=np.uint32)
        uids = np.concatenate([uids, extra])
        values = np.concatenate([np.asarray(values, dtype=np.float64), np.zeros(len(extra))])
    buckets = definition.get("buckets")
    if not buckets:
        return uids, np.asarray(values, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray([b["label"] for b in buckets] + [None], dtype=object)
    code = np.full(len(values), len(buckets), dtype=np.int64)
    for i, b in enumerate(buckets):
        low = -np.inf if b["low"] is None else b["low"]
        high = np.inf if b["high"] is None else b["high"]
        # Low inclusive, high exclusive; buckets do not overlap, so at most one holds a value.
        code[(values >= low) & (values < high)] = i
    keep = code < len(buckets)
    return uids[keep], labels[code[keep]]


def _with_default(value_type: str, uids: np.ndarray, values: np.ndarray, default, ctx: EvalContext) -> TagColumn:
    if default is not None:
        rest = ctx.session.universe() - to_bitmap(uids)
        extra = np.asarray(rest.to_array(), dtype=np.uint32)
        fill = _typed_scalar(default, value_type, ctx)
        uids = np.concatenate([np.asarray(uids, dtype=np.uint32), extra])
        values = np.concatenate([np.asarray(values, dtype=object if value_type == "string" else None),
                                 np.full(len(extra), fill, dtype=object if value_type == "string" else None)])
    order = np.argsort(uids, kind="stable")
    return TagColumn.from_values(value_type, np.asarray(uids)[order], np.asarray(values)[order])


def _typed_scalar(value, value_type: str, ctx: EvalContext):
    """A definition's value (a values entry, a default) in the column's representation."""
    if value_type == "time":
        return to_micros(to_utc_naive(_local(value, ctx)))
    if value_type == "number":
        return float(value)
    return value


def _local(value: str, ctx: EvalContext) -> datetime:
    return parse_local(value, ctx.tz)
