"""The user-key dictionary: dense ids, exact round trips, both lookup paths, other writers' keys."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import psycopg2
import pytest

from cohort_engine import dictionary
from cohort_engine.dictionary import CACHE_THRESHOLD, MISSING, UserKeyDictionary

AWKWARD_KEYS = ["plain", "tab\there", "new\nline", "carriage\rreturn", "back\\slash", "\\N", "广东省",
                "emoji 🙂", "quote'\"", " spaces ", "", "comma,semi;colon", "x" * 5000, "\\\t\n\\"]


@pytest.fixture
def dictionary_of(pg, project):
    _, project_id = project
    dictionary.clear_process_caches()
    yield UserKeyDictionary(pg, project_id)
    dictionary.clear_process_caches()


def _check_mapping(keys: list[str], ids: np.ndarray) -> dict[str, int]:
    """One id per distinct key, distinct keys distinct ids; returns the mapping."""
    mapping: dict[str, int] = {}
    for key, uid in zip(keys, ids.tolist(), strict=True):
        assert uid != int(MISSING)
        assert mapping.setdefault(key, uid) == uid, f"{key!r} got two ids"
    assert len(set(mapping.values())) == len(mapping), "two keys share an id"
    return mapping


def test_awkward_keys_round_trip_through_the_bucket_path(dictionary_of):
    ids = dictionary_of.encode(AWKWARD_KEYS)
    mapping = _check_mapping(AWKWARD_KEYS, ids)
    assert sorted(mapping.values()) == list(range(len(AWKWARD_KEYS)))
    assert dictionary_of.decode(ids.tolist()) == AWKWARD_KEYS
    for key in AWKWARD_KEYS:
        assert dictionary_of.lookup(key) == mapping[key]
    assert dictionary_of.encode(list(reversed(AWKWARD_KEYS))).tolist() == list(reversed(ids.tolist()))


def test_bulk_encode_is_dense_and_agrees_with_point_lookups(dictionary_of):
    rng = random.Random(3)
    keys = [f"user-{i}" for i in range(3 * CACHE_THRESHOLD)] + AWKWARD_KEYS
    with_duplicates = keys + rng.sample(keys, 500)
    rng.shuffle(with_duplicates)
    ids = dictionary_of.encode(with_duplicates)
    mapping = _check_mapping(with_duplicates, ids)
    assert sorted(mapping.values()) == list(range(len(keys)))
    assert dictionary_of.decode(ids.tolist()) == with_duplicates
    # A fresh process cache (as in another worker) and the bucket path see the same ids.
    dictionary.clear_process_caches()
    assert dictionary_of.encode(with_duplicates, create=False).tolist() == ids.tolist()
    for key in rng.sample(keys, 50) + AWKWARD_KEYS:
        assert dictionary_of.lookup(key) == mapping[key]


def test_unknown_keys_and_ids(dictionary_of):
    dictionary_of.encode(["a", "b"])
    assert dictionary_of.encode(["b", "zz", "a"], create=False).tolist() == [1, int(MISSING), 0]
    assert dictionary_of.lookup("zz") is None
    assert dictionary_of.decode([1, 7, 0, 2**31]) == ["b", None, "a", None]
    assert list(dictionary_of.iter_decode([0, 5, 1], batch=2)) == ["a", "b"]
    # create=False must not have added anything: the next new key still gets id 2.
    assert dictionary_of.encode(["zz"]).tolist() == [2]
    assert dictionary_of.encode([]).tolist() == []


def test_growing_across_blocks_keeps_ids_dense(dictionary_of, monkeypatch):
    monkeypatch.setattr(dictionary, "BLOCK_SIZE", 7)
    expected = {}
    for batch in range(12):
        keys = [f"k{batch}-{i}" for i in range(batch * 3 % 11)] + ["k0-0"]
        ids = dictionary_of.encode(keys)
        for key, uid in zip(keys, ids.tolist(), strict=True):
            expected.setdefault(key, len(expected))
            assert uid == expected[key]
    everything = list(expected)
    assert dictionary_of.decode(list(range(len(everything)))) == everything
    dictionary.clear_process_caches()
    bulk = everything * (CACHE_THRESHOLD // len(everything) + 1)
    assert dictionary_of.encode(bulk, create=False).tolist() == [expected[k] for k in bulk]


def test_a_nul_character_is_refused_and_nothing_is_stored(dictionary_of):
    with pytest.raises(ValueError, match="NUL"):
        dictionary_of.encode(["fine", "bad\x00key"])
    assert dictionary_of.encode(["fine"], create=False).tolist() == [int(MISSING)]


def test_projects_have_separate_dictionaries(pg, database_url):
    with pg.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES ('dict_a_' || md5(random()::text)::varchar(8)),"
                    " ('dict_b_' || md5(random()::text)::varchar(8)) RETURNING id")
        first, second = (row[0] for row in cur.fetchall())
    pg.commit()
    UserKeyDictionary(pg, first).encode(["x", "y"])
    assert UserKeyDictionary(pg, second).encode(["y"]).tolist() == [0]
    assert UserKeyDictionary(pg, second).lookup("x") is None


def test_the_process_cache_sees_keys_another_process_added(dictionary_of, database_url):
    first = [f"mine-{i}" for i in range(CACHE_THRESHOLD)]
    dictionary_of.encode(first)
    script = (
        "import sys, psycopg2\n"
        "from cohort_engine.dictionary import UserKeyDictionary\n"
        "conn = psycopg2.connect(sys.argv[1])\n"
        "ids = UserKeyDictionary(conn, int(sys.argv[2])).encode(['theirs-%d' % i for i in range(3000)])\n"
        "print(','.join(map(str, ids.tolist())))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, database_url, str(dictionary_of.project_id)],
                         check=True, capture_output=True, text=True).stdout
    theirs = [int(x) for x in out.strip().split(",")]
    assert theirs == list(range(len(first), len(first) + 3000))
    keys = [f"theirs-{i}" for i in range(3000)]
    assert dictionary_of.encode(keys, create=False).tolist() == theirs
    assert dictionary_of.encode(keys + ["new-one"]).tolist() == theirs + [len(first) + 3000]


def test_decoded_keys_come_from_the_database_not_the_caller(dictionary_of, database_url):
    keys = [f"k{i}" for i in range(50)]
    ids = dictionary_of.encode(keys)
    conn = psycopg2.connect(database_url)
    try:
        other = UserKeyDictionary(conn, dictionary_of.project_id)
        assert other.decode(ids[::-1].tolist()) == keys[::-1]
    finally:
        conn.close()


def test_a_bulk_decode_reads_the_process_cache_and_its_new_blocks(dictionary_of, database_url):
    first = [f"bulk-{i}" for i in range(CACHE_THRESHOLD)]
    ids = dictionary_of.encode(first).tolist()
    assert dictionary_of.decode(ids[::-1] + [len(first) + 5]) == first[::-1] + [None]  # bulk: from the cache
    conn = psycopg2.connect(database_url)
    try:
        # Keys another connection (another process, in production) added after the cache was loaded.
        later = [f"later-{i}" for i in range(10)]
        added = UserKeyDictionary(conn, dictionary_of.project_id)._encode_by_buckets(conn.cursor(), later, True)
        conn.commit()
    finally:
        conn.close()
    wanted = ids[:CACHE_THRESHOLD - 3] + added.tolist()
    assert dictionary_of.decode(wanted) == first[:CACHE_THRESHOLD - 3] + later
    dictionary.clear_process_caches()
    assert dictionary_of.decode(added.tolist()) == later  # small: from the blocks, as before
