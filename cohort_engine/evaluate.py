"""Evaluation: the tree walk. Each leaf is one backend query returning user ids; groups are Roaring bitmap operations."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from pyroaring import BitMap, FrozenBitMap

from . import imports
from .backends import Session
from .bitmaps import to_bitmap
from .definition import iter_leaves
from .errors import EngineError
from .leafcache import LeafCache, leaf_key
from .values import NEGATIONS

__all__ = ["EngineError", "EvalContext", "Result", "count_steps", "evaluate", "evaluate_many"]

log = logging.getLogger(__name__)

BACKEND_LEAVES = ("profile", "event", "sequence")
# Leaves answered from stored versions: reused within one evaluation only, since the versions they
# read are not part of the backend's snapshot. `ids` and `import` leaves are never reused: their key
# would be as long as their ID lists, and an import leaf reports match counts per occurrence.
STORED_LEAVES = ("cohort", "tag")


@dataclass
class EvalContext:
    """What evaluation needs from outside: the backend session, time frame, and lookups."""

    session: Session
    tz: ZoneInfo
    base_time: datetime
    encode_keys: Callable[[list[str]], object] | None = None
    load_cohort: Callable[[int], BitMap | None] | None = None
    progress: Callable[[int, int], None] | None = None
    # The distinct IDs of an `import` leaf (its stored upload, or its source read now).
    load_import: Callable[[dict], list[str]] | None = None
    # A tag's latest good version (a cohort_engine.tag_column.TagColumn), or None when it has none.
    load_tag: Callable[[int], object | None] | None = None
    # This process's leaf-result cache and the project its keys are namespaced by; without either,
    # leaves are reused within the evaluation only (docs/store.md "Leaf-result cache").
    leaf_cache: LeafCache | None = None
    project_id: int | None = None


@dataclass
class Result:
    bitmap: BitMap
    timings: list[dict] = field(default_factory=list)
    # One entry per `import` leaf: its match counts (docs/imports.md).
    imports: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.bitmap)


def evaluate(tree: dict, ctx: EvalContext) -> Result:
    """The member bitmap of a validated canonical tree (the caller closes ctx.session)."""
    if ctx.base_time.tzinfo is None:
        ctx = replace(ctx, base_time=ctx.base_time.replace(tzinfo=ctx.tz))
    evaluator = _Evaluator(ctx, [tree])
    bitmap = evaluator.node(tree, "")
    return Result(_owned(bitmap), evaluator.timings, evaluator.imports)


def evaluate_many(trees: list[dict], ctx: EvalContext, path: str = "") -> list[Result]:
    """The member bitmaps of several trees in one walk (one progress scale), e.g. a values tag's rules."""
    if ctx.base_time.tzinfo is None:
        ctx = replace(ctx, base_time=ctx.base_time.replace(tzinfo=ctx.tz))
    evaluator = _Evaluator(ctx, trees)
    evaluator.total = sum(count_steps(t) for t in trees)
    if ctx.progress:
        ctx.progress(0, evaluator.total)
    results = []
    for i, tree in enumerate(trees):
        evaluator.timings = []
        results.append(Result(_owned(evaluator.node(tree, f"{path}[{i}]")), evaluator.timings))
    return results


def count_steps(tree: dict) -> int:
    """Leaves plus group merges: the units progress is reported in."""
    if "children" in tree:
        return 1 + sum(count_steps(c) for c in tree["children"])
    if "child" in tree:
        return 1 + count_steps(tree["child"])
    return 1


def _owned(bitmap: BitMap) -> BitMap:
    """A bitmap the caller may change: a frozen one (shared with a cache) is copied."""
    return BitMap(bitmap) if isinstance(bitmap, FrozenBitMap) else bitmap


class _Evaluator:
    def __init__(self, ctx: EvalContext, trees: list[dict]):
        self.ctx = ctx
        self.total = 0
        self.done = 0
        self.timings: list[dict] = []
        self.imports: list[dict] = []
        # Answers of leaves that occur more than once in this walk, frozen: computed once, shared.
        self.memo: dict[str, FrozenBitMap] = {}
        seen: set[str] = set()
        self.repeated: set[str] = set()
        for leaf in (leaf for tree in trees for leaf in iter_leaves(tree)):
            key = self.reuse_key(leaf)
            if key is not None:
                (self.repeated if key in seen else seen).add(key)
        self._shared_scope: tuple | None | bool = False

    def reuse_key(self, leaf: dict) -> str | None:
        """The key under which a leaf's answer is reused, or None for a leaf never reused."""
        kind = leaf.get("type")
        if kind in BACKEND_LEAVES:
            return leaf_key(leaf, self.ctx.tz, self.ctx.base_time)
        if kind in STORED_LEAVES:
            # Same zone and base time throughout one walk: the leaf as written is its key.
            return "stored:" + json.dumps(leaf, sort_keys=True, separators=(",", ":"), default=repr)
        return None

    def shared_scope(self) -> tuple | None:
        """(project, snapshot) that backend leaves are cached under across evaluations, or None."""
        if self._shared_scope is False:
            cache, project_id = self.ctx.leaf_cache, self.ctx.project_id
            snapshot_id = getattr(self.ctx.session, "snapshot_id", None)
            snapshot = snapshot_id() if cache is not None and cache.enabled and snapshot_id else None
            self._shared_scope = None if snapshot is None or project_id is None else (project_id, snapshot)
        return self._shared_scope

    def step(self) -> None:
        self.done += 1
        if self.ctx.progress:
            self.ctx.progress(self.done, self.total)

    def node(self, node: dict, path: str) -> BitMap:
        if not self.total:
            self.total = count_steps(node)
            if self.ctx.progress:
                self.ctx.progress(0, self.total)
        op = node.get("op")
        if op in ("and", "or"):
            parts = [self.node(c, f"{path}.children[{i}]".lstrip(".")) for i, c in enumerate(node["children"])]
            # The answer takes the first part's class: a mutable part first keeps it a BitMap.
            parts.sort(key=lambda part: isinstance(part, FrozenBitMap))
            result = BitMap.intersection(*parts) if op == "and" else BitMap.union(*parts)
            self.step()
            return result
        if op == "not":
            result = self.ctx.session.universe() - self.node(node["child"], f"{path}.child".lstrip("."))
            self.step()
            return result
        started = time.perf_counter()
        result, reused = self.reused_leaf(node)
        timing = {"leaf": path or "_root", "type": node["type"],
                  "seconds": time.perf_counter() - started, "count": len(result)}
        if reused:
            timing["reused"] = reused
        self.timings.append(timing)
        self.step()
        return result

    def reused_leaf(self, leaf: dict) -> tuple[BitMap, str | None]:
        """A leaf's answer and where it was reused from ("evaluation", "process"; None: computed now).

        A reused answer is frozen; a computed one is returned as computed, its caches holding copies.
        """
        key = self.reuse_key(leaf)
        if key is None:
            return self.leaf(leaf), None
        found = self.memo.get(key)
        if found is not None:
            return found, "evaluation"
        scope = self.shared_scope() if leaf["type"] in BACKEND_LEAVES else None
        if scope is not None:
            found = self.ctx.leaf_cache.get((*scope, key))
            if found is not None:
                if key in self.repeated:
                    self.memo[key] = found
                return found, "process"
        result = self.leaf(leaf)
        if scope is not None:
            frozen = self.ctx.leaf_cache.put((*scope, key), result)
            if key in self.repeated:
                self.memo[key] = frozen
        elif key in self.repeated:
            self.memo[key] = FrozenBitMap(result)
        return result, None

    def leaf(self, leaf: dict) -> BitMap:
        kind = leaf["type"]
        if kind == "ids":
            return self.leaf_ids(leaf)
        if kind == "cohort":
            return self.leaf_cohort(leaf)
        if kind == "import":
            return self.leaf_import(leaf)
        if kind == "tag":
            return self.leaf_tag(leaf)
        if kind in BACKEND_LEAVES:
            return getattr(self.ctx.session, kind)(leaf, self.ctx)
        raise EngineError("unsupported", f"leaf type {kind!r} is not supported")

    def leaf_ids(self, leaf: dict) -> BitMap:
        if not leaf["keys"]:
            return BitMap()
        if self.ctx.encode_keys is None:
            raise EngineError("unsupported", "ids leaves need a user-key dictionary")
        return to_bitmap(self.ctx.encode_keys(list(leaf["keys"])))

    def leaf_cohort(self, leaf: dict) -> BitMap:
        bitmap = self.ctx.load_cohort(leaf["cohort_id"]) if self.ctx.load_cohort else None
        if bitmap is None:
            raise EngineError("cohort_not_ready",
                              f"cohort {leaf['cohort_id']} has no computed version yet; compute it first")
        return bitmap

    def leaf_import(self, leaf: dict) -> BitMap:
        if self.ctx.load_import is None or self.ctx.encode_keys is None:
            raise EngineError("unsupported", "import leaves need an import loader and a user-key dictionary")
        keys = self.ctx.load_import(leaf)
        found = imports.match(self.ctx.session, self.ctx.encode_keys, keys, leaf.get("match"),
                              leaf.get("keep_unmatched", False))
        origin = {"upload_id": leaf["upload_id"]} if "upload_id" in leaf else {"source": leaf["source"]}
        self.imports.append({**origin, "ids": len(keys), **found.counts()})
        if not len(found.bitmap):
            by = f"profile property {leaf['match']!r}" if leaf.get("match") else "user key"
            raise EngineError("import_no_match", f"none of the {len(keys)} imported IDs matched a user by {by}; "
                                                 "check the file and the match column")
        return found.bitmap
    def leaf_tag(self, leaf: dict) -> BitMap:
        column = self.ctx.load_tag(leaf["tag_id"]) if self.ctx.load_tag else None
        if column is None:
            raise EngineError("tag_not_ready", f"tag {leaf['tag_id']} has no computed version yet; compute it first")
        positive = NEGATIONS.get(leaf["cmp"], leaf["cmp"])
        hits = column.select(positive, leaf["values"], self.ctx.tz, self.ctx.base_time, f"tag {leaf['tag_id']}")
        # A negative comparator is the universe minus its positive: users without a value match it.
        return self.ctx.session.universe() - hits if positive != leaf["cmp"] else hits
