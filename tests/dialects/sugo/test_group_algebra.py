"""Arrow set algebra on raw Sugo groups, checked against plain Python sets of groups.parse's ids."""

from __future__ import annotations

import random
import uuid

import pytest

from dialects.sugo import group_algebra
from dialects.sugo import groups as sugo_groups
from dialects.sugo.groups import SugoGroupFormatError


def text(ids: list[str]) -> bytes:
    """A group's joined bytes as Sugo writes them, duplicates kept (the Java layout, not write_group's)."""
    return (f"{len(ids)}\t" + "".join(f"{i}\t" for i in ids)).encode("utf-8")


def brute(groups: list[list[str]], ops: list[str]) -> set[str]:
    result = set(groups[0])
    for op, members in zip(ops, groups[1:], strict=True):
        result = result | set(members) if op == "or" else result & set(members) if op == "and" else result - set(members)
    return result


def written(ids) -> list[str]:
    """The ids of the group text that group_bytes gives, read back with the str parser."""
    return sugo_groups.parse(b"".join(bytes(piece) for piece in group_algebra.group_bytes(ids)))


def combined(groups: list[list[str]], ops: list[str]) -> list[str]:
    return written(group_algebra.combine([group_algebra.ids_of(text(g)) for g in groups], ops))


def test_random_chains_equal_python_sets():
    rng = random.Random(5)
    universe = [f"u{i}" for i in range(300)] + ["用户-一", "ユーザー", "emoji-😀", "naïve", "a b", "x" * 300]
    for _ in range(200):
        count = rng.randint(1, 6)
        groups = [[rng.choice(universe) for _ in range(rng.randint(0, 80))] for _ in range(count)]
        ops = [rng.choice(["or", "and", "exclude"]) for _ in range(count - 1)]
        result = combined(groups, ops)
        assert len(result) == len(set(result))
        assert set(result) == brute(groups, ops), (groups, ops)


@pytest.mark.parametrize("groups, ops, expected", [
    ([[]], [], set()),
    ([[], ["a"]], ["or"], {"a"}),
    ([["a", "b"], []], ["and"], set()),
    ([["a", "b"], []], ["exclude"], {"a", "b"}),
    ([["a", "a", "b", "b"], ["b", "b"]], ["exclude"], {"a"}),
    # The same ops in another order give another group: left to right, no precedence.
    ([["a"], ["b"], ["b"]], ["or", "exclude"], {"a"}),
    ([["a"], ["b"], ["b"]], ["exclude", "or"], {"a", "b"}),
    ([["a", "c"], ["a"], ["b"]], ["and", "or"], {"a", "b"}),
    ([["a", "c"], ["a"], ["b"]], ["or", "and"], set()),
    ([["a", "b"], ["b"], ["b"]], ["exclude", "exclude"], {"a"}),
])
def test_edge_cases(groups, ops, expected):
    assert brute(groups, ops) == expected
    assert set(combined(groups, ops)) == expected


def test_a_missing_key_and_an_empty_group_are_both_empty():
    missing, empty = group_algebra.ids_of(b""), group_algebra.ids_of(b"0\t")
    assert len(missing) == len(empty) == 0
    assert set(written(group_algebra.combine([group_algebra.ids_of(text(["a"])), missing], ["exclude"]))) == {"a"}
    assert written(group_algebra.combine([missing, empty], ["or"])) == []


def test_ids_are_text_not_prefixes():
    # Each value carries its closing tab, so "a" and "ab" never match by prefix or by concatenation.
    assert set(combined([["a", "ab", "b"], ["ab"]], ["exclude"])) == {"a", "b"}
    assert set(combined([["a", "ab"], ["a"]], ["and"])) == {"a"}


def test_result_is_in_first_seen_order():
    assert combined([["c", "a", "c"], ["b", "a", "d"]], ["or"]) == ["c", "a", "b", "d"]


def test_bad_groups_are_refused_as_parse_refuses_them():
    bad = [b"2\ta\t", b"x\ta\t", b"1\ta", b"1", "1\t\xff\t".encode("latin-1"), b"1\ta\tb"]
    for data in bad:
        with pytest.raises(SugoGroupFormatError) as expected:
            sugo_groups.parse(data)
        with pytest.raises(SugoGroupFormatError) as got:
            group_algebra.ids_of(data)
        assert str(got.value).split(":")[0] == str(expected.value).split(":")[0], data


def test_an_empty_id_is_refused_only_if_it_is_written():
    ids = group_algebra.ids_of(b"2\t\tx\t")
    assert len(ids) == 2
    with pytest.raises(SugoGroupFormatError, match="empty or contains a tab"):
        group_algebra.group_bytes(group_algebra.combine([ids], []))
    assert written(group_algebra.combine([ids, group_algebra.ids_of(b"1\t\t")], ["exclude"])) == ["x"]


def test_raw_groups_round_trip_through_redis_over_chunk_boundaries(redis_client):
    # Multi-byte ids of uneven length, so the 1 MiB chunk cuts land inside ids and characters.
    key = f"sugo-test:{uuid.uuid4().hex}"
    first = [f"用户{i:07d}-{'é' * (i % 5)}" for i in range(120_000)]
    second = [f"用户{i:07d}-{'é' * (i % 5)}" for i in range(100_000, 200_000)]
    try:
        sugo_groups.write_group(redis_client, key, first)
        ids = [sugo_groups.read_parsed(redis_client, key, group_algebra.ids_of), group_algebra.ids_of(text(second))]
        result = group_algebra.combine(ids, ["exclude"])
        sugo_groups.update_group_raw(redis_client, key, lambda current: group_algebra.group_bytes(result), bytes,
                                     read=False)
        assert sugo_groups.read_group(redis_client, key) == first[:100_000]
        appended = []

        def union(current):
            appended.append(current)
            return group_algebra.group_bytes(group_algebra.combine([result, group_algebra.ids_of(current)], ["or"]))

        sugo_groups.update_group_raw(redis_client, key, union, bytes)
        assert appended[0] == b"".join(sugo_groups.encode(first[:100_000]))
        assert sugo_groups.read_group(redis_client, key) == first[:100_000]
        redis_client.rpush(key, b"x\t")
        with pytest.raises(SugoGroupFormatError, match=f"Redis key '{key}': user group says it holds 100000 ids"):
            sugo_groups.read_parsed(redis_client, key, group_algebra.ids_of)
    finally:
        redis_client.delete(key)
    assert sugo_groups.read_parsed(redis_client, key, bytes) == b""
