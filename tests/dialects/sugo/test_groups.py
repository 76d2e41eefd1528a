"""Sugo-format user groups against a real Redis, checked against groups built by hand the Java way."""

from __future__ import annotations

import uuid

import pytest

from dialects.sugo import groups as sugo_groups
from dialects.sugo.groups import CHUNK_BYTES, SugoGroupFormatError


def java_style_chunks(ids: list[str]) -> list[bytes]:
    """What Sugo's Java service pushes: StringBuilder text, getBytes(UTF-8), fixed 1 MiB slices."""
    builder = [str(len(ids)), "\t"]
    for uid in ids:
        builder.append(uid)
        builder.append("\t")
    data = "".join(builder).encode("utf-8")
    return [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


@pytest.fixture
def group_key(redis_client):
    key = f"sugo-test:{uuid.uuid4().hex}"
    yield key
    redis_client.delete(key)


def test_unicode_ids_round_trip_through_redis(redis_client, group_key):
    ids = ["u1", "用户二", "ユーザー3", "emoji-😀", "naïve"]
    assert sugo_groups.write_group(redis_client, group_key, ids) == 5
    assert redis_client.type(group_key) == b"list"
    assert redis_client.lrange(group_key, 0, -1) == [("5\t" + "\t".join(ids) + "\t").encode("utf-8")]
    assert sugo_groups.read_group(redis_client, group_key) == ids


def test_empty_group_is_a_single_count_chunk(redis_client, group_key):
    assert sugo_groups.encode([]) == [b"0\t"]
    sugo_groups.write_group(redis_client, group_key, [])
    assert redis_client.lrange(group_key, 0, -1) == [b"0\t"]
    assert sugo_groups.read_group(redis_client, group_key) == []


def test_missing_key_is_an_empty_group(redis_client):
    assert sugo_groups.read_group(redis_client, f"sugo-test:absent:{uuid.uuid4().hex}") == []


def test_group_over_one_mib_is_byte_identical_to_the_java_layout(redis_client, group_key):
    # Multi-byte ids of uneven length, so the 1 MiB cuts land inside ids and inside characters.
    ids = [f"用户{i:07d}-{'é' * (i % 5)}" for i in range(120_000)]
    expected = java_style_chunks(ids)
    assert len(expected) >= 3
    joined = b"".join(expected)
    cuts_inside_ids = [n for n in range(1, len(expected)) if joined[n * CHUNK_BYTES - 1:n * CHUNK_BYTES] != b"\t"]
    assert cuts_inside_ids, "the fixture must split at least one id across chunks"
    assert sugo_groups.encode(ids) == expected

    sugo_groups.write_group(redis_client, group_key, ids)
    assert redis_client.lrange(group_key, 0, -1) == expected
    assert sugo_groups.read_group(redis_client, group_key) == ids

    # And a group the Java service wrote reads back the same, whatever the cut positions.
    redis_client.delete(group_key)
    redis_client.rpush(group_key, *expected)
    assert sugo_groups.read_group(redis_client, group_key) == ids


def test_a_cut_inside_a_multibyte_character_is_joined_before_decoding(redis_client, group_key):
    # One id of 3-byte characters sized so the first cut falls one byte into a character.
    prefix = "1\t"
    filler = "x" * (CHUNK_BYTES - len(prefix) - 1)
    ids = [filler + "中文"]
    chunks = java_style_chunks(ids)
    assert len(chunks) == 2 and chunks[1][0] & 0xC0 == 0x80  # starts with a continuation byte
    redis_client.rpush(group_key, *chunks)
    assert sugo_groups.read_group(redis_client, group_key) == ids
    assert sugo_groups.encode(ids) == chunks


def test_writing_replaces_the_whole_previous_list(redis_client, group_key):
    big = [f"id-{i:09d}" for i in range(150_000)]
    sugo_groups.write_group(redis_client, group_key, big)
    assert redis_client.llen(group_key) >= 2
    sugo_groups.write_group(redis_client, group_key, ["only"])
    assert redis_client.lrange(group_key, 0, -1) == [b"1\tonly\t"]
    assert redis_client.ttl(group_key) == -1


def test_duplicates_are_written_once_and_counted_once(redis_client, group_key):
    assert sugo_groups.write_group(redis_client, group_key, ["b", "a", "b", "c", "a"]) == 3
    assert redis_client.lrange(group_key, 0, -1) == [b"3\tb\ta\tc\t"]


def test_failure_midway_leaves_the_previous_group(redis_client, group_key):
    sugo_groups.write_group(redis_client, group_key, ["old1", "old2"])
    # Enough ids that several chunks are pushed to the temporary key before the bad id is reached.
    ids = [f"id-{i:09d}" for i in range(sugo_groups.ENCODE_BATCH * 2)] + ["bad\tid"]
    with pytest.raises(SugoGroupFormatError, match="bad"):
        sugo_groups.write_group(redis_client, group_key, ids)
    assert sugo_groups.read_group(redis_client, group_key) == ["old1", "old2"]
    assert redis_client.keys(f"{group_key}:tmp:*") == []


def test_malformed_groups_are_reported(redis_client, group_key):
    with pytest.raises(SugoGroupFormatError, match="holds 1"):
        sugo_groups.parse(b"2\ta\t")
    with pytest.raises(SugoGroupFormatError, match="not a number"):
        sugo_groups.parse(b"x\ta\t")
    with pytest.raises(SugoGroupFormatError, match="ending in a tab"):
        sugo_groups.parse(b"1\ta")
    with pytest.raises(SugoGroupFormatError, match="empty or contains a tab"):
        sugo_groups.encode(["ok", ""])
    redis_client.set(group_key, "0\t")
    with pytest.raises(SugoGroupFormatError, match=group_key):
        sugo_groups.read_group(redis_client, group_key)


# -- concurrent updates: the group's writer lock ------------------------------------------------------


def _race(redis, key, writers: int = 4) -> list[set[str]]:
    """`writers` threads each appending their own ids to one group at the same moment."""
    import threading
    import time

    id_sets = [{f"w{w}-{i}" for i in range(200)} for w in range(writers)]
    start = threading.Event()
    errors = []

    def append(ids):
        def union(current):
            time.sleep(0.05)  # a slow union: unlocked, every writer would read before any writes
            return sorted(set(current) | ids)

        start.wait(timeout=30)
        try:
            sugo_groups.update_group(redis, key, union)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(ids,)) for ids in id_sets]
    for thread in threads:
        thread.start()
    start.set()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return id_sets


@pytest.mark.parametrize("writers", [2, 6])
def test_concurrent_appends_never_lose_ids(redis_client, group_key, writers):
    sugo_groups.write_group(redis_client, group_key, ["existing"])
    id_sets = _race(redis_client, group_key, writers)
    stored = sugo_groups.read_group(redis_client, group_key)
    assert set(stored) == {"existing"}.union(*id_sets) and len(stored) == len(set(stored))
    assert not redis_client.exists(sugo_groups.lock_key_for(group_key))


def test_unlocked_read_union_write_loses_ids_the_lock_keeps(redis_client, group_key):
    """The hole itself, shown without the lock: two writers that both read first keep only one's ids."""
    import threading

    sugo_groups.write_group(redis_client, group_key, ["existing"])
    barrier = threading.Barrier(2)

    def unlocked(ids):
        current = sugo_groups.read_group(redis_client, group_key)
        barrier.wait(timeout=30)
        sugo_groups.write_group(redis_client, group_key, sorted(set(current) | ids))

    threads = [threading.Thread(target=unlocked, args=({f"u{n}"},)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(sugo_groups.read_group(redis_client, group_key))) == 2  # one writer's id was lost


def test_a_writer_that_lost_its_lock_writes_nothing(redis_client, group_key):
    sugo_groups.write_group(redis_client, group_key, ["kept"])
    with sugo_groups.group_lock(redis_client, group_key, ttl=30) as lock:
        redis_client.set(lock[0], "someone-else")  # as if our lock had expired and another writer took it
        with pytest.raises(sugo_groups.GroupLockError, match="nothing was written"):
            sugo_groups.write_group(redis_client, group_key, ["lost"], lock=lock)
    assert sugo_groups.read_group(redis_client, group_key) == ["kept"]
    assert redis_client.get(sugo_groups.lock_key_for(group_key)) == b"someone-else"  # not ours: not released
    redis_client.delete(sugo_groups.lock_key_for(group_key))


def test_a_held_lock_makes_the_next_writer_wait_then_time_out(redis_client, group_key):
    lock_key = sugo_groups.lock_key_for(group_key)
    with sugo_groups.group_lock(redis_client, group_key):
        held = redis_client.get(lock_key)
        with pytest.raises(sugo_groups.GroupLockError, match="stayed locked"):
            with sugo_groups.group_lock(redis_client, group_key, wait=0.2):
                pytest.fail("a second writer got a lock that was held")
        assert redis_client.get(lock_key) == held  # the waiter that timed out left the holder's lock alone
    assert redis_client.get(lock_key) is None  # released on exit
    with sugo_groups.group_lock(redis_client, group_key, wait=0.2):
        assert redis_client.get(lock_key) is not None  # taken at once
