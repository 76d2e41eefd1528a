"""ID imports: a streaming parser of uploaded ID files, and matching their IDs to users (docs/imports.md).

A cohort file holds one ID a line; a tag file `ID,value`. The parser reads the bytes in chunks
(never the whole body), keeps only the distinct IDs (and values), counts rows, duplicates and empty
values, and collects bad rows with their line numbers: a file with any bad row is refused whole.
Matching turns the IDs into user ids, either through the user-key dictionary or through a profile
property asked of the backend session (Session.match_profile).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from pyroaring import BitMap

from .bitmaps import to_bitmap
from .definition import MAX_USER_KEY
from .dictionary import MISSING
from .errors import EngineError

KINDS = ("cohort", "tag")
# The first field of a header row, when header is "auto" (compared case-insensitively); the match
# column of the request counts too.
HEADER_NAMES = ("user_key", "key", "id", "user_id", "distinct_id", "#distinct_id", "#account_id", "account_id")
READ_CHUNK = 1 << 20
MAX_REPORTED_ERRORS = 20
# Surrogate escapes stand for bytes that are not UTF-8 (decoded with errors="surrogateescape").
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_LINE = re.compile("[^\n]*\n")


@dataclass(frozen=True)
class Limits:
    """What one upload may hold (docs/imports.md "Limits")."""

    max_bytes: int = 256 * 1024 * 1024
    max_rows: int = 2_000_000
    max_line: int = 4096
    max_key: int = MAX_USER_KEY
    max_value: int = 1024


@dataclass
class Parsed:
    """A parsed upload: distinct IDs in first-seen order (and, for tags, the last value given to each)."""

    kind: str
    keys: list[str]
    values: list[str] | None
    rows: int = 0
    duplicates: int = 0
    empty_values: int = 0
    bytes: int = 0
    header: list[str] | None = None

    def counts(self) -> dict:
        counts = {"rows": self.rows, "distinct": len(self.keys), "duplicates": self.duplicates, "bytes": self.bytes}
        if self.kind == "tag":
            counts["empty_values"] = self.empty_values
        return counts


class UploadError(ValueError):
    """An upload that is refused whole; `errors` lists {line, message} (line None: the whole file)."""

    def __init__(self, message: str, errors: list[dict] | None = None, bad_rows: int = 0):
        self.message = message
        self.errors = errors or []
        self.bad_rows = bad_rows
        super().__init__(message)

    def describe(self) -> str:
        """The message with its first line-numbered errors, for a job's error_message."""
        shown = "; ".join(f"line {e['line']}: {e['message']}" if e.get("line") else e["message"]
                          for e in self.errors[:5])
        return f"{self.message}: {shown}" if shown else self.message


class _ChunkReader(io.RawIOBase):
    """A raw binary stream over an iterable of byte chunks, counting bytes against a limit."""

    def __init__(self, chunks: Iterable[bytes], max_bytes: int):
        self._chunks = iter(chunks)
        self._pending = b""
        self.total = 0
        self.max_bytes = max_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self.total += len(chunk)
            if self.total > self.max_bytes:
                raise UploadError(f"the upload is larger than {self.max_bytes} bytes (the import limit)")
            self._pending = bytes(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def iter_stream(stream, size: int = READ_CHUNK) -> Iterator[bytes]:
    """The chunks of a readable binary stream (a request body, an open file)."""
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk


def _blocks(text: io.TextIOBase, max_line: int, bad: Callable[[int, str], None]) -> Iterator[tuple[int, str]]:
    """(number of its first line, text) of successive blocks of whole lines (ends kept), read a chunk at a
    time; a line over max_line characters is reported and replaced by an empty one, keeping the count."""
    number = 1
    rest = ""
    skipping = False
    while True:
        block = text.read(READ_CHUNK)
        if not block:
            if rest and not skipping:
                yield number, rest
            return
        if skipping:
            cut = block.find("\n")
            if cut < 0:
                continue
            block, skipping = block[cut + 1:], False
        block = rest + block
        cut = block.rfind("\n") + 1
        block, rest = block[:cut], block[cut:]
        if len(rest) > max_line:
            bad(number + block.count("\n"), f"longer than {max_line} characters")
            block, rest, skipping = block + "\n", "", True
        if block and max(map(len, block.split("\n"))) > max_line:
            lines = []
            for offset, line in enumerate(_LINE.findall(block)):
                if len(line.rstrip("\r\n")) > max_line:
                    bad(number + offset, f"longer than {max_line} characters")
                    line = "\n"
                lines.append(line)
            block = "".join(lines)
        if block:
            yield number, block
            number += block.count("\n")


class _Collector:
    """The rows of one upload as they are read: distinct IDs (first seen first), last values, counts."""

    def __init__(self, kind: str, header: str, header_names: set[str], limits: Limits,
                 check_value: Callable[[str], str | None] | None = None):
        self.check_value = check_value
        self.kind, self.width, self.limits = kind, (1 if kind == "cohort" else 2), limits
        self.header_mode, self.header_names = header, header_names
        self.header: list[str] | None = None
        self.first = True
        self.seen: dict[str, str | None] = {}
        self.rows = self.empty_values = self.bad_rows = 0
        self.errors: list[dict] = []

    def bad(self, line: int, message: str) -> None:
        self.bad_rows += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"line": line, "message": message})

    def is_header(self, record: list[str]) -> bool:
        """Whether the first record of the file is a header (called once)."""
        self.first = False
        if self.header_mode == "true" or (self.header_mode == "auto" and record[0].strip().lower() in self.header_names):
            self.header = record
            return True
        return False

    def count_rows(self, n: int) -> None:
        self.rows += n
        if self.rows > self.limits.max_rows:
            raise UploadError(f"the upload has more than {self.limits.max_rows} rows (the import limit)")

    def fast_block(self, block: str) -> bool:
        """Take a block of plain lines (no quotes, nothing to report) in bulk; False to read it field by field."""
        if '"' in block or _UNSTORABLE.search(block):
            return False
        lines = [line.strip() for line in block.split("\n")]
        lines = [line for line in lines if line]
        if self.first and lines:
            if self.is_header(lines[0].split(",")):
                lines = lines[1:]
        if not lines:
            return True
        if self.kind == "cohort":
            if "," in block or max(map(len, lines)) > self.limits.max_key:
                return False
            self.count_rows(len(lines))
            self.seen.update(dict.fromkeys(lines))
            return True
        pairs = [line.split(",") for line in lines]
        if any(len(pair) != 2 for pair in pairs):
            return False
        keys = [pair[0].strip() for pair in pairs]
        values = [pair[1].strip() for pair in pairs]
        if not all(keys) or max(map(len, keys)) > self.limits.max_key or max(map(len, values)) > self.limits.max_value:
            return False
        if self.check_value is not None and any(map(self.check_value, set(values))):
            return False
        self.count_rows(len(keys))
        self.empty_values += values.count("")
        self.seen.update(zip(keys, values, strict=True))
        return True

    def record(self, line: int, record: list[str]) -> None:
        """Take one CSV record starting at line."""
        if not record or (len(record) == 1 and not record[0].strip()):
            return  # an empty line (or a reported long one)
        if self.first and self.is_header(record):
            return
        width = self.width
        if len(record) != width:
            self.bad(line, f"expected {width} field{'s' if width > 1 else ''} ("
                           f"{'one ID' if width == 1 else 'ID,value'}), got {len(record)}")
            return
        key = record[0].strip()
        value = record[1].strip() if width == 2 else None
        if not key:
            self.bad(line, "empty ID")
        elif len(key) > self.limits.max_key:
            self.bad(line, f"ID longer than {self.limits.max_key} characters")
        elif _UNSTORABLE.search(key) or (value is not None and _UNSTORABLE.search(value)):
            self.bad(line, "not UTF-8 text, or holds a NUL character")
        elif value is not None and len(value) > self.limits.max_value:
            self.bad(line, f"value longer than {self.limits.max_value} characters")
        elif value and self.check_value is not None and (problem := self.check_value(value)):
            self.bad(line, problem)
        else:
            self.count_rows(1)
            if value == "":
                self.empty_values += 1
            # A repeated ID keeps its first place; for a tag its last value wins.
            self.seen[key] = value


def _csv_records(first_line: int, blocks: Iterable[str]) -> Iterator[tuple[int, list[str] | Exception]]:
    """(line, record or csv.Error) of the CSV text of blocks, the first starting at first_line."""
    reader = csv.reader((line for block in blocks for line in _LINE.findall(block)), strict=True)
    offset = first_line - 1
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield offset + reader.line_num, exc
            continue
        yield offset + start, record


def parse(chunks: Iterable[bytes], kind: str = "cohort", *, header: str = "auto", match_column: str | None = None,
          limits: Limits = Limits(), check_value: Callable[[str], str | None] | None = None) -> Parsed:
    """Parse an ID file from byte chunks; UploadError (line-numbered) if any row is bad or a limit is passed.

    header: "auto" (the first row is a header if its first field names an ID column: HEADER_NAMES or
    match_column), "true" or "false". UTF-8 with or without a BOM, LF or CRLF line ends, empty lines
    skipped, fields quoted as in CSV (RFC 4180). Duplicated IDs are counted, the first occurrence
    kept; for tags the last value of an ID wins, and check_value(value) -> problem or None refuses a
    non-empty value that does not fit the tag's type (a bad row). Blocks of plain lines are taken in bulk; from the
    first block that needs it (a quote, a bad row) on, the rest is read by the csv module.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    raw = _ChunkReader(chunks, limits.max_bytes)
    text = io.TextIOWrapper(io.BufferedReader(raw, READ_CHUNK), encoding="utf-8-sig", errors="surrogateescape",
                            newline="")
    header_names = {n.lower() for n in HEADER_NAMES} | ({match_column.lower()} if match_column else set())
    rows = _Collector(kind, header, header_names, limits, check_value)
    blocks = _blocks(text, limits.max_line, rows.bad)
    for number, block in blocks:
        if rows.fast_block(block):
            continue
        rest = (b for _, b in blocks)
        for line, record in _csv_records(number, itertools.chain([block], rest)):
            if isinstance(record, Exception):
                rows.bad(line, f"malformed CSV: {record}")
                if rows.bad_rows > 10 * MAX_REPORTED_ERRORS:
                    break
            else:
                rows.record(line, record)
        break
    if rows.bad_rows:
        raise UploadError(f"{rows.bad_rows} bad row{'s' if rows.bad_rows > 1 else ''}; nothing was imported",
                          sorted(rows.errors, key=lambda e: e["line"]), rows.bad_rows)
    if not rows.rows:
        raise UploadError("the upload holds no IDs; nothing was imported",
                          [{"line": None, "message": "no ID rows (only empty lines or a header)"}])
    keys = list(rows.seen)
    values = list(rows.seen.values()) if kind == "tag" else None
    return Parsed(kind, keys, values, rows=rows.rows, duplicates=rows.rows - len(keys), empty_values=rows.empty_values,
                  bytes=raw.total, header=rows.header)


def parse_bytes(data: bytes, kind: str = "cohort", **kwargs) -> Parsed:
    """parse() over an in-memory body (tests, small sources)."""
    return parse([data[i:i + READ_CHUNK] for i in range(0, len(data), READ_CHUNK)], kind, **kwargs)


# -- stored form ----------------------------------------------------------------------------------


def pack(strings: Sequence[str]) -> bytes:
    """Strings as one UTF-8 buffer, each NUL-terminated (the parser refused NUL in IDs and values)."""
    return ("\x00".join(strings) + "\x00").encode("utf-8", "surrogateescape") if strings else b""


def unpack(data: bytes) -> list[str]:
    return bytes(data).decode("utf-8").split("\x00")[:-1] if data else []


# -- matching -------------------------------------------------------------------------------------


@dataclass
class Match:
    """The users the IDs matched: uids aligned with the IDs that matched them (an ID may match several
    users through a profile property), and how many IDs matched none."""

    bitmap: BitMap
    matched_ids: int
    unmatched_ids: int
    new_users: int = 0
    pairs: tuple[np.ndarray, np.ndarray] = field(default=None, repr=False)  # (ID index, uid)

    def counts(self) -> dict:
        return {"users": len(self.bitmap), "matched_ids": self.matched_ids, "unmatched_ids": self.unmatched_ids,
                "new_users": self.new_users}


def check_match_options(match: str | None, keep_unmatched: bool) -> str | None:
    """The problem with a match column and keep_unmatched flag, or None."""
    if keep_unmatched and match:
        return ("keep_unmatched adds unmatched IDs as new users by their user key, so it needs matching on the "
                "user key (leave match out)")
    return None


def match(session, encode: Callable, keys: Sequence[str], column: str | None = None,
          keep_unmatched: bool = False) -> Match:
    """Match distinct IDs to users: by user key (encode, the dictionary) or by the profile property column."""
    problem = check_match_options(column, keep_unmatched)
    if problem:
        raise EngineError("bad_definition", problem)
    if not keys:
        return Match(BitMap(), 0, 0, 0, (np.empty(0, np.int64), np.empty(0, np.uint32)))
    if column is None:
        session.register_keys(keys)  # a remote backend's users may not be in the dictionary yet
        ids = np.asarray(encode(list(keys), create=False), dtype=np.uint32)
        found = ids != MISSING
        unmatched = int(len(ids) - np.count_nonzero(found))
        new_users = 0
        if keep_unmatched and unmatched:
            ids = np.asarray(encode(list(keys), create=True), dtype=np.uint32)
            found = np.ones(len(ids), dtype=bool)
            new_users = unmatched
        index = np.flatnonzero(found)
        uids = ids[found]
        return Match(to_bitmap(uids), int(len(index)), unmatched, new_users, (index, uids))
    columns = session.columns()["profile"]
    if column not in columns:
        known = ", ".join(sorted(columns)) or "none"
        raise EngineError("unknown_property", f"profile property {column!r} does not exist (profile properties: "
                                              f"{known}); IDs cannot be matched on it")
    if columns[column] not in ("string", "number"):
        raise EngineError("type_mismatch", f"profile property {column!r} is a {columns[column]}; IDs match string "
                                           "or number properties only")
    index, uids = session.match_profile(column, keys)
    index = np.asarray(index, dtype=np.int64)
    uids = np.asarray(uids, dtype=np.uint32)
    matched = int(len(np.unique(index)))
    return Match(to_bitmap(uids), matched, len(keys) - matched, 0, (index, uids))


def tag_values(values: Sequence[str], found: Match) -> tuple[np.ndarray, list[str]]:
    """(unique ascending uids, their values) of a tag upload: each matched user gets its ID's value.

    values are aligned with the IDs given to match(); empty values give no value (counted by the
    parser as empty_values). A user matches at most one ID (one key, one property value).
    """
    index, uids = found.pairs
    order = np.argsort(uids, kind="stable")
    index, uids = index[order], uids[order]
    picked = [values[i] for i in index.tolist()]
    keep = np.fromiter((bool(v) for v in picked), dtype=bool, count=len(picked))
    return uids[keep], [v for v, k in zip(picked, keep.tolist(), strict=True) if k]
