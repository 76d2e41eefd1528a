"""Deterministic, realistic sample data in the seeds' vocabulary, written as Parquet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

EVENTS = ["$startup", "consume_item", "player_register", "fight_success", "pay", "activity_attend",
          "login", "view_page", "share"]
EVENT_WEIGHTS = [0.18, 0.16, 0.02, 0.14, 0.05, 0.07, 0.16, 0.18, 0.04]
PROVINCES = ["广东省", "北京市", "上海市", "浙江省", "江苏省", "四川省", "湖北省", "山东省", "福建省", "河南省"]
PROVINCE_WEIGHTS = [0.22, 0.12, 0.12, 0.1, 0.1, 0.08, 0.07, 0.07, 0.06, 0.06]
RISKS = ["R1", "R2", "R3", "R4", "R5"]
OSES = ["iOS", "Android", "Windows", "macOS"]
ITEMS = ["sword", "shield", "potion", "gem", "scroll", "armor", "ticket", "skin"]
CHUNK = 2_000_000


def user_keys(n: int) -> list[str]:
    """Stable distinct_id strings for users 0..n-1."""
    return [f"{(i * 2654435761) % 4294967296:08x}-{i:x}" for i in range(n)]


def _pick(rng, choices, weights, size):
    return pa.DictionaryArray.from_arrays(
        pa.array(rng.choice(len(choices), size=size, p=weights).astype(np.int32)), pa.array(choices))


def _used_keys(keys: pa.Array, who: np.ndarray) -> pa.DictionaryArray:
    used, positions = np.unique(who, return_inverse=True)
    return pa.DictionaryArray.from_arrays(pa.array(positions.astype(np.int32)), keys.take(pa.array(used)))


def write_sample(out: str | Path, users: int, events: int, seed: int, end: date | None = None,
                 days: int = 60, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write users.parquet and events/part-*.parquet under out; return the paths and sizes.

    progress(events written, events) is called after each part (for a command's progress bar).
    """
    out = Path(out)
    (out / "events").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # The columns the ThinkingData and Ark examples use draw from a stream of their own, so adding
    # them left every older column (and every count pinned on it) as it was.
    extra = np.random.default_rng([seed, 1])
    end = end or datetime.now(UTC).date()
    end_ts = int(datetime.combine(end + timedelta(days=1), time(), tzinfo=UTC).timestamp() * 1e6)
    span = days * 86_400 * 1_000_000
    keys = pa.array(user_keys(users))

    signup = end_ts - span - rng.integers(0, 365 * 86_400 * 1_000_000, users)
    levels = np.minimum(1 + rng.geometric(0.35, users), 10)
    email = pa.array([f"user{i}@example.com" if i % 4 else None for i in range(users)])
    profiles = pa.table({
        "distinct_id": keys,
        "user_level": pa.array(levels.astype(np.int64)),
        "sugo_province": _pick(rng, PROVINCES, PROVINCE_WEIGHTS, users),
        "ub_risk": _pick(rng, RISKS, [0.35, 0.3, 0.2, 0.1, 0.05], users),
        "$email": email,
        "$signup_time": pa.array(signup, pa.timestamp("us", tz="UTC")),
        "#os": _pick(rng, OSES, [0.4, 0.45, 0.1, 0.05], users),
        "age": pa.array(rng.integers(16, 70, users).astype(np.int64)),
        "is_vip": pa.array(rng.random(users) < 0.08),
        # ThinkingData's account id: most users have one, guests (every tenth) do not.
        "#account_id": pa.array([f"acc{i:07d}" if i % 10 else None for i in range(users)]),
    })
    pq.write_table(profiles, out / "users.parquet")

    # Activity is skewed: a Zipf-like weight per user, so a few users are heavy and most are light.
    weights = 1.0 / np.arange(1, users + 1) ** 0.8
    weights = rng.permutation(weights / weights.sum())
    cumulative = np.cumsum(weights)
    parts = []
    written = 0
    index = 0
    while written < events:
        size = min(CHUNK, events - written)
        who = np.minimum(np.searchsorted(cumulative, rng.random(size)), users - 1).astype(np.int32)
        when = end_ts - rng.integers(1, span, size)
        table = pa.table({
            # Only the keys this chunk uses: a dictionary of every user would be stored again in
            # each row group (320 MB a part at 10M users).
            "distinct_id": _used_keys(keys, who),
            "event": _pick(rng, EVENTS, EVENT_WEIGHTS, size),
            "time": pa.array(when, pa.timestamp("us", tz="UTC")),
            "item_name": _pick(rng, ITEMS, None, size),
            "price": pa.array(np.round(rng.gamma(2.0, 30.0, size), 2)),
            "amount": pa.array(rng.integers(1, 6, size).astype(np.int64)),
            "sugo_province": _pick(rng, PROVINCES, PROVINCE_WEIGHTS, size),
            "age": pa.array(rng.integers(16, 70, size).astype(np.int64)),
        })
        event_names = table.column("event").combine_chunks().cast(pa.string())
        is_pay = pa.compute.equal(event_names, "pay")
        is_activity = pa.compute.equal(event_names, "activity_attend")
        table = table.append_column("#os", _pick(extra, OSES, [0.4, 0.45, 0.1, 0.05], size))
        table = table.append_column("#vp@test_num", pa.compute.if_else(
            is_pay, pa.array(extra.integers(0, 100, size).astype(np.int64)), pa.scalar(None, pa.int64())))
        table = table.append_column("activity_reward", pa.compute.if_else(
            is_activity, pa.array(extra.integers(1, 500, size).astype(np.int64)), pa.scalar(None, pa.int64())))
        path = out / "events" / f"part-{index:04d}.parquet"
        pq.write_table(table, path)
        parts.append(path)
        written += size
        index += 1
        if progress:
            progress(written, events)
    return {"users": out / "users.parquet", "events": parts, "user_count": users, "event_count": events}
