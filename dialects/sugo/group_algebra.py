"""Set algebra of Sugo user groups on their raw bytes (Arrow), for `multi` when no uid is needed.

A group's joined bytes are viewed, without a copy, as an Arrow binary array whose values are the
ids each with its closing tab ("id\\t"): equal ids are equal values, and the values of a result
laid end to end are the group's text after its count. One Arrow dictionary encoding over every
source gives each distinct id a code; the or / and / exclude chain is then boolean masks over the
codes, and the result is taken back from the dictionary in first-seen order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dialects.sugo.groups import SugoGroupFormatError, check_count

TAB = 9
EMPTY = pa.array([], pa.large_binary())


def ids_of(data: bytes) -> pa.LargeBinaryArray:
    """The ids of a group's joined bytes as "id\\t" values, validated exactly as groups.parse validates."""
    if not data:
        return EMPTY
    try:
        # Only to refuse what parse refuses: a tab is one byte never found inside a multi-byte
        # character, so the values of valid UTF-8 text are valid UTF-8 each and compare as text.
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SugoGroupFormatError(f"user group is not UTF-8 text: {exc}") from None
    tabs = np.flatnonzero(np.frombuffer(data, np.uint8) == TAB)
    if not len(tabs) or data[-1] != TAB:
        raise SugoGroupFormatError("user group text must be '<count>\\t' followed by ids each ending in a tab")
    check_count(data[:tabs[0]].decode("utf-8"), len(tabs) - 1)
    offsets = (tabs + 1).astype(np.int64)
    return pa.Array.from_buffers(pa.large_binary(), len(tabs) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def combine(sources: Sequence[pa.Array], ops: Sequence[str]) -> pa.LargeBinaryArray:
    """sources[0] then each op ("or", "and", "exclude") with the next source, left to right; distinct values."""
    lengths = [len(s) for s in sources]
    if not sum(lengths):
        return EMPTY
    encoded = pc.dictionary_encode(pa.chunked_array(sources, pa.large_binary()))
    # One dictionary for every chunk, but empty chunks are dropped: cut the codes by the lengths.
    dictionary = encoded.chunks[0].dictionary
    codes = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in encoded.chunks])
    bounds = np.cumsum([0, *lengths])
    accumulated = None
    for position in range(len(sources)):
        current = np.zeros(len(dictionary), dtype=bool)
        current[codes[bounds[position]:bounds[position + 1]]] = True
        if accumulated is None:
            accumulated = current
        elif ops[position - 1] == "or":
            accumulated |= current
        elif ops[position - 1] == "and":
            accumulated &= current
        else:
            accumulated &= ~current
    return dictionary.take(pa.array(np.flatnonzero(accumulated)))


def group_bytes(ids: pa.LargeBinaryArray) -> list[bytes]:
    """The Sugo group text of distinct "id\\t" values: its count, then the values end to end, in pieces."""
    if len(ids) and pc.min(pc.binary_length(ids)).as_py() == 1:
        raise SugoGroupFormatError("user group id '' is empty or contains a tab")
    offsets = np.frombuffer(ids.buffers()[1], np.int64, len(ids) + 1, ids.offset * 8)
    body = ids.buffers()[2][int(offsets[0]):int(offsets[-1])] if len(ids) else b""
    return [f"{len(ids)}\t".encode(), memoryview(body)]
