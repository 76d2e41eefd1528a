"""A tag version's values: one column indexed by uid (the stored payload), its reads and its distribution.

Layout (docs/tags.md, chosen by measurement against one bitmap per value): a dense column with one
cell per uid 0..max(uid), the value itself for numbers (float64) and times (int64 microseconds
since the epoch, UTC), a code into a label list for strings and booleans (int8/16/32), and a
sentinel for "no value" (NaN, INT64_MIN, -1). One user's value is one fixed-size cell at a
computable byte offset, so it is read without loading the rest; members of a value or range
are one vectorised comparison; the distribution is computed once, at publish, into the meta.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
from pyroaring import BitMap

from .bitmaps import to_bitmap
from .errors import EngineError
from .timewin import day_range, duration_before, to_utc_naive
from .values import coerce_value

MAGIC = b"CTAG"
FORMAT = 1
CATEGORICAL = ("string", "boolean")
NO_TIME = np.iinfo(np.int64).min
NEGATIONS = {"ne": "eq", "not_contains": "contains", "not_set": "is_set", "is_empty": "not_empty"}
# Distributions: exact counts up to this many distinct values, else the top ones / a histogram.
MAX_EXACT_VALUES = 100
MAX_LISTED_LABELS = 1000
HISTOGRAM_BINS = 20
EPOCH = datetime(1970, 1, 1)
_ORDERED = ("gt", "gte", "lt", "lte", "between", "eq")
_STRING_ONLY = ("contains", "starts_with", "ends_with", "regex")
_TIME_ONLY = ("date_between", "within_last", "before_last")


def comparator_problem(cmp: str, value_type: str) -> str | None:
    """Why a comparator does not apply to a tag of this type, or None (the property rules of docs/definition.md)."""
    positive = NEGATIONS.get(cmp, cmp)
    if positive in ("is_set", "not_empty"):
        return None
    if positive in ("is_true", "is_false"):
        ok = value_type == "boolean"
    elif positive in _STRING_ONLY:
        ok = value_type == "string"
    elif positive in _TIME_ONLY:
        ok = value_type == "time"
    elif value_type == "boolean":
        ok = positive == "eq"
    else:
        ok = positive in _ORDERED
    return None if ok else f"{cmp} does not apply to a tag of type {value_type}"


def _code_dtype(n_labels: int):
    return np.int8 if n_labels < 2**7 else np.int16 if n_labels < 2**15 else np.int32


def to_micros(moment: datetime) -> int:
    """A naive UTC datetime as microseconds since the epoch."""
    return (moment - EPOCH) // timedelta(microseconds=1)


@dataclass
class TagColumn:
    """value_type, the dense column (cell uid = value or sentinel), and the labels of categorical types."""

    value_type: str
    column: np.ndarray
    labels: list | None = None

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def empty(cls, value_type: str) -> TagColumn:
        dtype = np.float64 if value_type == "number" else np.int64 if value_type == "time" else np.int8
        return cls(value_type, np.zeros(0, dtype=dtype), [] if value_type in CATEGORICAL else None)

    @classmethod
    def from_values(cls, value_type: str, uids: np.ndarray, values: np.ndarray) -> TagColumn:
        """From unique uids and aligned values (number float, time int64 us, string str, boolean bool)."""
        uids = np.asarray(uids, dtype=np.uint32)
        length = int(uids.max()) + 1 if len(uids) else 0
        if value_type == "number":
            column = np.full(length, np.nan)
            column[uids] = np.asarray(values, dtype=np.float64)
            return cls(value_type, column)
        if value_type == "time":
            column = np.full(length, NO_TIME, dtype=np.int64)
            column[uids] = np.asarray(values, dtype=np.int64)
            return cls(value_type, column)
        if value_type == "boolean":
            labels = [False, True]
            codes = np.asarray(values, dtype=bool).astype(np.int8)
        else:
            encoded = pa.array(list(values) if isinstance(values, np.ndarray) else values,
                               type=pa.string()).dictionary_encode()
            labels = encoded.dictionary.to_pylist()
            codes = encoded.indices.to_numpy(zero_copy_only=False)
        return cls.from_codes(value_type, uids, codes, labels)

    @classmethod
    def from_codes(cls, value_type: str, uids: np.ndarray, codes: np.ndarray, labels: list) -> TagColumn:
        """From unique uids and aligned indexes into labels (a categorical type)."""
        uids = np.asarray(uids, dtype=np.uint32)
        length = int(uids.max()) + 1 if len(uids) else 0
        column = np.full(length, -1, dtype=_code_dtype(len(labels)))
        column[uids] = codes
        return cls(value_type, column, list(labels))

    # -- payload ----------------------------------------------------------------------------------

    def serialize(self) -> tuple[bytes, dict]:
        """(payload, meta): meta says where the column and labels are (meta["layout"]) and holds the distribution."""
        label_bytes, offsets = b"", np.zeros(1, dtype=np.uint64)
        if self.labels is not None:
            encoded = [_label_text(v).encode() for v in self.labels]
            offsets = np.zeros(len(encoded) + 1, dtype=np.uint64)
            offsets[1:] = np.cumsum([len(b) for b in encoded]) if encoded else []
            label_bytes = b"".join(encoded)
        layout = {"format": FORMAT, "type": self.value_type, "dtype": self.column.dtype.str,
                  "length": len(self.column), "n_labels": len(self.labels or ())}
        header_size = 4096  # fixed: the offsets below do not depend on the header's own length
        layout["column_offset"] = header_size
        layout["offsets_offset"] = header_size + self.column.nbytes
        layout["labels_offset"] = layout["offsets_offset"] + offsets.nbytes
        header = json.dumps(layout).encode()
        if len(header) + 8 > header_size:
            raise EngineError("internal_error", "tag payload header too long")
        head = MAGIC + struct.pack("<I", len(header)) + header
        payload = b"".join([head.ljust(header_size, b"\0"), self.column.tobytes(), offsets.tobytes(), label_bytes])
        meta = {"layout": layout, "count": self.count(), "distribution": self.distribution()}
        if self.labels is not None and len(self.labels) <= MAX_LISTED_LABELS:
            meta["labels"] = self.labels
        return payload, meta

    @classmethod
    def deserialize(cls, payload: bytes) -> TagColumn:
        layout = read_layout(payload[:4096])
        column = np.frombuffer(payload, dtype=np.dtype(layout["dtype"]), count=layout["length"],
                               offset=layout["column_offset"])
        labels = None
        if layout["type"] in CATEGORICAL:
            n = layout["n_labels"]
            offsets = np.frombuffer(payload, dtype=np.uint64, count=n + 1, offset=layout["offsets_offset"])
            base = layout["labels_offset"]
            labels = [_label_value(payload[base + int(a):base + int(b)].decode(), layout["type"])
                      for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        return cls(layout["type"], column, labels)

    # -- reads ------------------------------------------------------------------------------------

    def present(self) -> np.ndarray:
        """The uids that have a value, ascending."""
        return np.flatnonzero(~self._missing()).astype(np.uint32)

    def _missing(self) -> np.ndarray:
        if self.value_type == "number":
            return np.isnan(self.column)
        if self.value_type == "time":
            return self.column == NO_TIME
        return self.column < 0

    def count(self) -> int:
        return int(np.count_nonzero(~self._missing()))

    def value_of(self, uid: int | None):
        """The value of one user (None if they have none), typed as in python_values."""
        if uid is None or uid >= len(self.column):
            return None
        return cell_value(self.column[uid], self.value_type, self.labels)

    def rows(self, batch: int = 20000) -> Iterator[tuple[np.ndarray, list]]:
        """(uids, values) batches in uid order over the users with a value."""
        uids = self.present()
        for start in range(0, len(uids), batch):
            chunk = uids[start:start + batch]
            yield chunk, self.values_at(chunk)

    def values_at(self, uids: np.ndarray) -> list:
        """The values of uids that all have one (present() or a subset of it)."""
        cells = self.column[uids]
        if self.labels is not None:
            return [self.labels[c] for c in cells.tolist()]
        if self.value_type == "time":
            return [micros_to_datetime(c) for c in cells.tolist()]
        return [_number(c) for c in cells.tolist()]

    def as_dict(self) -> dict[int, object]:
        """{uid: value} (for tests and small tags)."""
        return {int(u): v for uids, values in self.rows() for u, v in zip(uids.tolist(), values, strict=True)}

    def select(self, cmp: str, values: list, tz: ZoneInfo, base_time: datetime, name: str = "tag") -> BitMap:
        """The users whose value satisfies a positive comparator (negatives are the caller's complement)."""
        problem = comparator_problem(cmp, self.value_type)
        if problem or cmp in NEGATIONS:
            raise EngineError("type_mismatch", f"{name}: {problem or f'{cmp} is not a positive comparator'}")
        if self.labels is not None:
            if cmp == "regex":
                codes = [i for i, hit in enumerate(_regex_matches(self.labels, str(values[0]))) if hit]
            else:
                codes = [i for i, label in enumerate(self.labels) if self._label_matches(label, cmp, values, name)]
            return to_bitmap(np.flatnonzero(np.isin(self.column, np.asarray(codes, dtype=self.column.dtype))))
        col = self.column
        if cmp in ("is_set", "not_empty"):
            return to_bitmap(self.present())
        if self.value_type == "time":
            bounds = self._time_bounds(cmp, values, tz, base_time, name)
            hit = np.ones(len(col), dtype=bool) & (col != NO_TIME)
            for op, bound in bounds:
                hit &= _OPS[op](col, bound)
            return to_bitmap(np.flatnonzero(hit))
        typed = [coerce_value(v, "number", name, tz) for v in values]
        with np.errstate(invalid="ignore"):  # NaN cells (no value) compare false
            if cmp == "eq":
                hit = np.isin(col, np.asarray(typed))
            elif cmp == "between":
                hit = (col >= typed[0]) & (col <= typed[1])
            else:
                hit = _OPS[cmp](col, typed[0])
        return to_bitmap(np.flatnonzero(hit))

    def _time_bounds(self, cmp, values, tz, base_time, name) -> list[tuple[str, int]]:
        if cmp == "date_between":
            start, end = day_range(values[0], values[1], tz)
            return [("gte", to_micros(start)), ("lt", to_micros(end))]
        if cmp == "within_last":
            since = duration_before(base_time, values[0], values[1], tz)
            return [("gte", to_micros(since)), ("lte", to_micros(to_utc_naive(base_time)))]
        if cmp == "before_last":
            return [("lt", to_micros(duration_before(base_time, values[0], values[1], tz)))]
        typed = [to_micros(coerce_value(v, "time", name, tz)) for v in values]
        if cmp == "between":
            return [("gte", typed[0]), ("lte", typed[1])]
        if cmp == "eq":
            return [("in", typed)]
        return [(cmp, typed[0])]

    @staticmethod
    def _label_matches(label, cmp: str, values: list, name: str) -> bool:
        if isinstance(label, bool):
            if cmp in ("is_true", "is_false"):
                return label is (cmp == "is_true")
            return cmp in ("is_set", "not_empty") or any(
                label is coerce_value(v, "boolean", name, ZoneInfo("UTC")) for v in values)
        if cmp == "is_set":
            return True
        if cmp == "not_empty":
            return label != ""
        typed = [coerce_value(v, "string", name, ZoneInfo("UTC")) for v in values]
        if cmp == "eq":
            return label in typed
        if cmp == "between":
            return typed[0] <= label <= typed[1]
        if cmp in ("gt", "gte", "lt", "lte"):
            return _OPS_PY[cmp](label, typed[0])
        if cmp == "contains":
            return typed[0] in label
        if cmp == "starts_with":
            return label.startswith(typed[0])
        return label.endswith(typed[0])

    def distribution(self) -> dict:
        """value -> user count (categorical, or few distinct numbers/times), else a histogram."""
        present = self.column[~self._missing()]
        total = len(present)
        if self.labels is not None:
            counts = np.bincount(present.astype(np.int64), minlength=len(self.labels))
            order = np.argsort(-counts, kind="stable")
            listed = [{"value": self.labels[i], "count": int(counts[i])} for i in order[:MAX_LISTED_LABELS]
                      if counts[i] > 0]
            other = int(total - sum(v["count"] for v in listed))
            return {"kind": "values", "count": total, "values": listed, "other_count": other}
        distinct, counts = np.unique(present, return_counts=True)
        summary = {"count": total}
        if total:
            summary.update(min=self._render(distinct[0]), max=self._render(distinct[-1]))
            if self.value_type == "number":
                summary.update(sum=float(present.sum()), avg=float(present.mean()))
        if len(distinct) <= MAX_EXACT_VALUES:
            return {"kind": "values", **summary, "values": [
                {"value": self._render(v), "count": int(c)} for v, c in zip(distinct, counts, strict=True)],
                "other_count": 0}
        edges = np.linspace(float(distinct[0]), float(distinct[-1]), HISTOGRAM_BINS + 1)
        hist, _ = np.histogram(present.astype(np.float64), bins=edges)
        bins = [{"low": self._render(edges[i]), "high": self._render(edges[i + 1]), "count": int(hist[i])}
                for i in range(HISTOGRAM_BINS)]
        return {"kind": "histogram", **summary, "bins": bins}

    def _render(self, value):
        # JSON-ready (the distribution is stored as jsonb): times as ISO 8601 in UTC.
        if self.value_type == "time":
            return micros_to_datetime(int(value)).isoformat()
        return _number(float(value))


_OPS = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal,
        "in": lambda col, vals: np.isin(col, np.asarray(vals, dtype=np.int64))}
_OPS_PY = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}


def _number(value: float):
    """Whole floats as ints (a count of 3 reads back as 3, not 3.0)."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def micros_to_datetime(micros: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return (EPOCH + timedelta(microseconds=int(micros))).replace(tzinfo=UTC)


def cell_value(cell, value_type: str, labels: list | None):
    """The typed value of one column cell, or None for the sentinel."""
    if value_type == "number":
        return None if np.isnan(cell) else _number(float(cell))
    if value_type == "time":
        return None if int(cell) == NO_TIME else micros_to_datetime(int(cell))
    return None if int(cell) < 0 else labels[int(cell)]


def read_layout(head: bytes) -> dict:
    """The layout in a payload's first bytes (the header)."""
    if head[:4] != MAGIC:
        raise EngineError("internal_error", "not a tag payload")
    (size,) = struct.unpack("<I", head[4:8])
    return json.loads(head[8:8 + size])


def _label_text(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _label_value(text: str, value_type: str):
    return text == "true" if value_type == "boolean" else text


_regex = threading.local()


def _regex_matches(labels: list[str], pattern: str) -> list[bool]:
    """Whether the pattern matches each label, by the store's regex engine (RE2: DuckDB's regexp_matches)."""
    con = getattr(_regex, "con", None)
    if con is None:
        con = _regex.con = duckdb.connect(":memory:")
    if not labels:
        return []
    rows = con.execute("SELECT list_transform(?::VARCHAR[], lambda x: regexp_matches(x, ?))", [labels, pattern]).fetchone()
    return [bool(hit) for hit in rows[0]]
