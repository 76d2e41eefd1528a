"""The ID-file parser and ID matching, against counts computed independently in the test."""

from __future__ import annotations

import csv
import io
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine import imports
from cohort_engine.imports import Limits, UploadError
from cohort_engine.project import ProjectEngine


def chunked(data: bytes, size: int = 7):
    """Small chunks, so that BOMs, CRLFs, quotes and multi-byte characters fall across chunk edges."""
    return [data[i:i + size] for i in range(0, len(data), size)]


def reference(text: str, kind: str = "cohort", header: bool = False) -> tuple[list[str], dict[str, str], Counter]:
    """Distinct IDs in order, last value per ID, and row counts per ID, by csv over the whole text."""
    rows = [r for r in csv.reader(io.StringIO(text.lstrip("\ufeff"), newline="")) if r and any(f.strip() for f in r)]
    if header:
        rows = rows[1:]
    keys = [r[0].strip() for r in rows]
    values = {r[0].strip(): r[1].strip() for r in rows} if kind == "tag" else {}
    return list(dict.fromkeys(keys)), values, Counter(keys)


def test_bom_crlf_empty_lines_header_quotes_duplicates():
    text = ('\ufeffuser_key\r\nu1\r\n\r\n"u,2"\r\nu1\r\n  u3  \r\n"multi\r\nline"\r\n\r\n ü4\r\nu3\r\nu1\r\n')
    parsed = imports.parse(chunked(text.encode("utf-8")))
    keys, _, counts = reference(text, header=True)
    assert parsed.header == ["user_key"]
    assert parsed.keys == keys == ["u1", "u,2", "u3", "multi\r\nline", "ü4"]
    assert parsed.rows == sum(counts.values()) == 8
    assert parsed.duplicates == sum(n - 1 for n in counts.values()) == 3
    assert parsed.bytes == len(text.encode("utf-8"))


@pytest.mark.parametrize("header, first, expected", [
    ("auto", "distinct_id", False), ("auto", "#account_id", False), ("auto", "acc_7", True),
    ("true", "acc_7", False), ("false", "user_key", True)])
def test_header_modes(header, first, expected):
    parsed = imports.parse_bytes(f"{first}\nacc_8\n".encode(), header=header)
    assert (first in parsed.keys) is expected
    assert parsed.rows == (2 if expected else 1)


def test_header_auto_knows_the_match_column():
    assert imports.parse_bytes(b"vip_code\nv1\n", match_column="vip_code").keys == ["v1"]
    assert imports.parse_bytes(b"vip_code\nv1\n").keys == ["vip_code", "v1"]


def test_tag_rows_count_empty_values_and_keep_the_last_value():
    text = "key,value\nu1,gold\nu2,\nu1,silver\nu3,\"a,b\"\n"
    parsed = imports.parse(chunked(text.encode()), "tag")
    keys, values, counts = reference(text, "tag", header=True)
    assert parsed.keys == keys
    assert dict(zip(parsed.keys, parsed.values, strict=True)) == values == {"u1": "silver", "u2": "", "u3": "a,b"}
    assert parsed.empty_values == 1 and parsed.duplicates == 1 and parsed.rows == 4


def test_garbage_is_refused_whole_with_line_numbers():
    lines = ["good1", "a,b,c", "", "x" * 5000, "good2", ",", "bad\x00key", "\"open"]
    data = "\n".join(lines).encode() + b"\n\xff\xfe\n"
    with pytest.raises(UploadError) as caught:
        imports.parse(chunked(data, 64), limits=Limits(max_line=4096))
    errors = {e["line"]: e["message"] for e in caught.value.errors}
    assert errors[2].startswith("expected 1 field") and "longer than 4096" in errors[4]
    assert errors[6].startswith("expected 1 field") and "NUL" in errors[7]
    # The quote opened on line 8 runs to the end of the file.
    assert [line for line, message in errors.items() if message.startswith("malformed CSV")] == [9]
    assert caught.value.bad_rows >= 5 and "nothing was imported" in caught.value.message


def test_tag_rows_need_an_id_and_two_fields():
    with pytest.raises(UploadError) as caught:
        imports.parse_bytes(b"u1,gold\n,silver\nu2\nu3,a,b\n", "tag")
    assert [(e["line"], e["message"].split(" (")[0]) for e in caught.value.errors] == [
        (2, "empty ID"), (3, "expected 2 fields"), (4, "expected 2 fields")]


def test_invalid_utf8_names_its_line():
    with pytest.raises(UploadError) as caught:
        imports.parse_bytes(b"ok\nok2\nbad\xff\n")
    assert caught.value.errors == [{"line": 3, "message": "not UTF-8 text, or holds a NUL character"}]


def test_a_file_without_ids_is_refused():
    with pytest.raises(UploadError, match="no IDs"):
        imports.parse_bytes(b"user_key\r\n\r\n\n")


def test_limits():
    with pytest.raises(UploadError, match="more than 3 rows"):
        imports.parse_bytes(b"a\nb\nc\nd\n", limits=Limits(max_rows=3))
    with pytest.raises(UploadError, match="larger than 10 bytes"):
        imports.parse(chunked(b"a\nb\nc\nd\ne\nf\n", 4), limits=Limits(max_bytes=10))
    with pytest.raises(UploadError, match="bad row"):
        imports.parse_bytes(b"a\n" + b"k" * 600 + b"\n")  # over the 512-character ID limit


def test_a_million_rows_streamed():
    n, dup_every = 1_000_000, 10

    def chunks():  # generated, never held whole: 10,000 rows (~100 KB) at a time
        yield b"user_key\r\n"
        for start in range(0, n, 10_000):
            yield "".join([f"id{i - 1 if i % dup_every == 0 and i else i}\r\n"
                           for i in range(start, start + 10_000)]).encode()

    parsed = imports.parse(chunks())
    duplicates = len(range(dup_every, n, dup_every))  # row i (a multiple of 10, not 0) repeats row i-1
    assert parsed.rows == n and parsed.duplicates == duplicates and len(parsed.keys) == n - duplicates
    assert parsed.keys[:3] == ["id0", "id1", "id2"] and parsed.keys[-1] == f"id{n - 1}"


def test_pack_round_trip():
    values = ["a", "ü", "x,y", "multi\nline"]
    assert imports.unpack(imports.pack(values)) == values and imports.unpack(imports.pack([])) == []


# -- matching ----------------------------------------------------------------------------------------

PROFILES = {"u1": "A1", "u2": "A2", "u3": None, "u4": "A4", "u5": "A1"}  # u5 shares u1's account
LEVELS = {"u1": 3, "u2": 7, "u3": 7, "u4": None, "u5": 1}


@pytest.fixture
def engine(engine_config, project, tmp_path):
    name, project_id = project
    engine = ProjectEngine(engine_config, name)
    pq.write_table(pa.table({"distinct_id": list(PROFILES), "#account_id": list(PROFILES.values()),
                             "level": pa.array(list(LEVELS.values()), pa.int64())}), tmp_path / "u.parquet")
    engine.ingest_users(tmp_path / "u.parquet")
    return engine


def matched_keys(engine, found) -> set[str]:
    return set(engine.iter_keys(found.bitmap))


def test_match_on_the_user_key(engine):
    ids = ["u1", "u3", "nobody", "u9"]
    session = engine.open_session()
    try:
        found = imports.match(session, engine.encode, ids)
    finally:
        session.close()
    assert matched_keys(engine, found) == set(ids) & set(PROFILES)
    assert (found.matched_ids, found.unmatched_ids, found.new_users) == (2, 2, 0)
    assert engine.lookup("nobody") is None  # nothing was added


def test_match_keeping_unmatched_ids_as_new_users(engine):
    ids = ["u2", "new1", "new2"]
    session = engine.open_session()
    try:
        found = imports.match(session, engine.encode, ids, keep_unmatched=True)
    finally:
        session.close()
    assert matched_keys(engine, found) == set(ids)
    assert (found.matched_ids, found.unmatched_ids, found.new_users) == (3, 2, 2)
    assert engine.lookup("new1") is not None


def test_match_on_a_profile_property(engine):
    ids = ["A1", "A4", "A9", "u2"]
    session = engine.open_session()
    try:
        found = imports.match(session, engine.encode, ids, "#account_id")
        by_level = imports.match(session, engine.encode, ["7", "1.0", "x", "99"], "level")
    finally:
        session.close()
    expected = {user for user, account in PROFILES.items() if account in ids}
    assert matched_keys(engine, found) == expected == {"u1", "u5", "u4"}
    assert (found.matched_ids, found.unmatched_ids) == (2, 2)
    assert matched_keys(engine, by_level) == {u for u, level in LEVELS.items() if level in (7, 1)}
    assert (by_level.matched_ids, by_level.unmatched_ids) == (2, 2)


def test_match_refuses_unknown_or_unfit_columns(engine):
    session = engine.open_session()
    try:
        with pytest.raises(imports.EngineError) as unknown:
            imports.match(session, engine.encode, ["A1"], "#nope")
        with pytest.raises(imports.EngineError) as keep:
            imports.match(session, engine.encode, ["A1"], "#account_id", keep_unmatched=True)
    finally:
        session.close()
    assert unknown.value.code == "unknown_property" and "#account_id" in unknown.value.message
    assert keep.value.code == "bad_definition"


def test_tag_values_give_each_matched_user_its_ids_value(engine):
    parsed = imports.parse_bytes(b"key,value\nA1,gold\nA4,\nA2,silver\nA9,bronze\n", "tag", match_column="#account_id")
    session = engine.open_session()
    try:
        found = imports.match(session, engine.encode, parsed.keys, "#account_id")
    finally:
        session.close()
    uids, values = imports.tag_values(parsed.values, found)
    got = dict(zip(engine.iter_keys(imports.to_bitmap(uids)), values, strict=True))
    by_id = dict(zip(parsed.keys, parsed.values, strict=True))
    expected = {user: by_id[account] for user, account in PROFILES.items() if by_id.get(account)}
    assert got == expected == {"u1": "gold", "u5": "gold", "u2": "silver"}
    assert list(uids) == sorted(uids)
