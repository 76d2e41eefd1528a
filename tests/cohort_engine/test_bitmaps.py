"""Cohort bitmaps in Redis: atomic publish, membership, streaming members as user keys."""

from __future__ import annotations

import multiprocessing
import random

import numpy as np
import pytest
import redis as redis_lib
from pyroaring import BitMap

from cohort_engine import bitmaps
from cohort_engine.dictionary import UserKeyDictionary


def _versions() -> list[BitMap]:
    rng = random.Random(11)
    # Different sizes, so a half-written value could not pass for another whole one.
    return [BitMap(rng.sample(range(5_000_000), size)) for size in (150_000, 40_000, 90_000)]


def _republish(redis_url: str, key: str, rounds: int) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    versions = _versions()
    for i in range(rounds):
        bitmaps.publish(client, key, versions[i % len(versions)], also=(key + ":latest",))
    client.close()


def test_readers_never_see_a_missing_or_partial_bitmap_while_a_writer_republishes(redis_client, redis_url):
    key = "cohorts-test:bitmaps:atomic"
    versions = _versions()
    bitmaps.publish(redis_client, key, versions[0], also=(key + ":latest",))
    writer = multiprocessing.get_context("spawn").Process(target=_republish, args=(redis_url, key, 150))
    writer.start()
    seen = set()
    reads = 0
    while writer.is_alive() or reads < 50:
        for target in (key, key + ":latest"):
            bitmap = bitmaps.load(redis_client, target)
            assert bitmap is not None, "a reader saw the key missing"
            assert bitmap in versions, "a reader saw a value that is no whole version"
            seen.add(len(bitmap))
        reads += 1
    writer.join(timeout=60)
    assert writer.exitcode == 0
    # The readers ran while the writer alternated, so they saw more than one version.
    assert len(seen) > 1
    assert not list(redis_client.scan_iter(key + ":tmp:*")) and not list(redis_client.scan_iter(key + ":latest:tmp:*"))


def test_is_member(redis_client):
    key = "cohorts-test:bitmaps:member"
    bitmaps.publish(redis_client, key, BitMap([1, 5, 70000, 2**31]))
    assert bitmaps.is_member(redis_client, key, 5)
    assert bitmaps.is_member(redis_client, key, 2**31)
    assert not bitmaps.is_member(redis_client, key, 6)
    assert not bitmaps.is_member(redis_client, key, None)
    assert not bitmaps.is_member(redis_client, key + ":absent", 5)
    assert bitmaps.load(redis_client, key + ":absent") is None


def test_cohort_keys_are_per_project_and_version():
    assert bitmaps.cohort_key("p", 3, 9) == "p:p3:cohort:9"
    assert bitmaps.cohort_key("p", 3, 9, version=2) == "p:p3:cohort:9:v2"


def test_to_bitmap_takes_unsorted_ids_with_duplicates():
    ids = np.array([9, 3, 3, 2**32 - 2, 0, 9], dtype=np.uint32)
    assert list(bitmaps.to_bitmap(ids)) == [0, 3, 9, 2**32 - 2]
    assert len(bitmaps.to_bitmap(np.array([], dtype=np.uint32))) == 0


class _CountingDictionary:
    """The real dictionary, counting decode round trips to show that members are streamed."""

    def __init__(self, inner: UserKeyDictionary):
        self.inner = inner
        self.calls = 0

    def decode(self, ids):
        self.calls += 1
        return self.inner.decode(ids)


def test_iter_members_streams_keys_in_batches(pg, project):
    dictionary = UserKeyDictionary(pg, project[1])
    keys = [f"member-{i}" for i in range(25)] + ["广东省", "tab\tkey"]
    ids = dictionary.encode(keys)
    chosen = {keys[i]: int(ids[i]) for i in range(0, len(keys), 2)}
    counting = _CountingDictionary(dictionary)
    stream = bitmaps.iter_members(BitMap(chosen.values()), counting, batch=4)
    first = next(stream)
    assert counting.calls == 1
    rest = list(stream)
    assert sorted([first, *rest]) == sorted(chosen)
    assert counting.calls == -(-len(chosen) // 4)
    assert list(bitmaps.iter_members(BitMap(), counting)) == []


@pytest.mark.parametrize("size", [0, 1, 300_000])
def test_serialized_form_is_portable_roaring(redis_client, size):
    key = f"cohorts-test:bitmaps:portable:{size}"
    bitmap = BitMap(range(0, size * 3, 3))
    bitmaps.publish(redis_client, key, bitmap)
    raw = redis_client.get(key)
    assert raw == bitmap.serialize()
    assert BitMap.deserialize(raw) == bitmap


def test_a_miss_is_refilled_from_the_durable_copy_and_never_replaces_a_newer_bitmap(redis_client):
    key = "cohorts-test:bitmaps:cached"
    redis_client.delete(key)
    durable = BitMap([1, 2, 3])
    calls = []

    def from_postgres():
        calls.append(1)
        return durable.serialize()

    assert bitmaps.load_cached(redis_client, key, lambda: None) is None
    assert bitmaps.load_cached(redis_client, key, from_postgres) == durable
    assert redis_client.get(key) == durable.serialize()
    assert bitmaps.load_cached(redis_client, key, from_postgres) == durable
    assert len(calls) == 1  # a hit does not read the durable copy
    # A publisher's bitmap that lands between a reader's miss and its refill stays.
    newer = BitMap([7])
    redis_client.delete(key)

    def raced():
        bitmaps.publish(redis_client, key, newer)
        return durable.serialize()

    assert bitmaps.load_cached(redis_client, key, raced) == durable  # this reader saw the older version
    assert BitMap.deserialize(redis_client.get(key)) == newer
