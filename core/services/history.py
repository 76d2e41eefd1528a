"""A cohort's version history, the difference between two of its versions, and previews of definitions.

Works over the version store (cohort_versions) of any row of the cohorts table, so whatever else keeps its
versions there (tags share the table's ids and version machinery) is served by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyroaring import BitMap

from cohort_engine import bitmaps
from core.data import jobs, versions
from core.errors import Conflict, NotFound
from core.jobs.cohort import PREVIEW_KIND

MAX_SAMPLE = 100


@dataclass
class VersionDiff:
    """Two versions of one cohort and their bitmaps; entered = to - from, left = from - to."""

    before: dict
    after: dict
    before_bitmap: BitMap
    after_bitmap: BitMap

    @property
    def entered(self) -> BitMap:
        return self.after_bitmap - self.before_bitmap

    @property
    def left(self) -> BitMap:
        return self.before_bitmap - self.after_bitmap


def page(conn, cohort: dict, *, limit: int, offset: int) -> tuple[int, list[dict]]:
    """(total, a page of the cohort's versions, newest first) (every row is kept; only bitmaps expire)."""
    return versions.list_page(conn, cohort["id"], limit=limit, offset=offset)


def _version(conn, cohort: dict, version_id: int, field: str) -> dict:
    version = versions.of_cohort(conn, cohort["id"], version_id)
    if version is None:
        raise NotFound(f"cohort {cohort['id']} has no version {version_id}", {field: ["no such version of this cohort"]})
    return version


def _bitmap(conn, redis, version: dict, field: str) -> BitMap:
    why = None
    if version["status"] != "succeed":
        why = f"version {version['id']} {version['status']} ({version['error_code']}), so it has no members"
    elif version["bitmap_key"] is None:
        why = (f"version {version['id']} is no longer kept (each cohort keeps its COHORTS_KEEP_VERSIONS newest "
               "versions' members, and its published one); its count stays in the history")
    bitmap = None if why else bitmaps.load_cached(redis, version["bitmap_key"],
                                                  lambda: versions.bitmap_of(conn, version["id"]))
    if bitmap is None:
        raise Conflict(why or f"version {version['id']} has no stored members", {field: [why or "no stored members"]})
    return bitmap


def versions_to_compare(conn, cohort: dict, from_id: int | None, to_id: int | None) -> tuple[dict, dict]:
    """The two versions named (to: default the published one; from: default the one published before `to`)."""
    if to_id is None:
        if cohort["latest_version_id"] is None:
            raise Conflict(f"cohort {cohort['id']} has no published version yet; name both from and to",
                           {"to": ["the cohort has no published version"]})
        to_id = cohort["latest_version_id"]
    after = _version(conn, cohort, to_id, "to")
    if from_id is None:
        from_id = after["previous_version_id"]
        if from_id is None:
            raise Conflict(f"version {after['id']} has no previously published version to compare with; name from",
                           {"from": ["version has no previous published version"]})
    return _version(conn, cohort, from_id, "from"), after


def diff(conn, redis, cohort: dict, from_id: int | None, to_id: int | None) -> VersionDiff:
    """Two versions of a cohort with their members (a tag's versions compare by distribution_diff)."""
    before, after = versions_to_compare(conn, cohort, from_id, to_id)
    return VersionDiff(before, after, _bitmap(conn, redis, before, "from"), _bitmap(conn, redis, after, "to"))


def tag_distributions(conn, tag: dict, from_id: int | None, to_id: int | None) -> tuple[dict, dict, dict, dict]:
    """(from version, to version, their distributions): kept with each version row, so expiry does not matter."""
    before, after = versions_to_compare(conn, tag, from_id, to_id)
    found = []
    for version, field in ((before, "from"), (after, "to")):
        meta = versions.meta_of(conn, version["id"]) if version["status"] == "succeed" else None
        if meta is None:
            why = f"version {version['id']} {version['status']} ({version['error_code']}), so it has no distribution"
            raise Conflict(why, {field: [why]})
        found.append(meta["distribution"])
    return before, after, found[0], found[1]


def distribution_diff(before: dict, after: dict) -> dict:
    """How a tag's distribution changed: per value (users before, after, change), or, when either side is a
    histogram (whose bins move with min and max), the summaries and both histograms."""
    answer = {"count": _change(before.get("count", 0), after.get("count", 0))}
    if before["kind"] == "values" and after["kind"] == "values":
        counts_before = {_key(v["value"]): v for v in before["values"]}
        counts_after = {_key(v["value"]): v for v in after["values"]}
        rows = []
        for key in [*counts_before, *(k for k in counts_after if k not in counts_before)]:
            value = (counts_after.get(key) or counts_before[key])["value"]
            rows.append({"value": value, **_change(counts_before.get(key, {}).get("count", 0),
                                                   counts_after.get(key, {}).get("count", 0))})
        rows.sort(key=lambda row: -abs(row["change"]))  # stable: ties keep the earlier version's order
        answer.update(kind="values", values=rows,
                      other=_change(before.get("other_count", 0), after.get("other_count", 0)))
        return answer
    summary = ("count", "min", "max", "sum", "avg")
    answer.update(kind="histogram", **{
        "from_summary": {k: before[k] for k in summary if k in before},
        "to_summary": {k: after[k] for k in summary if k in after},
        "from_bins": before.get("bins") or before.get("values"), "to_bins": after.get("bins") or after.get("values")})
    return answer


def _key(value):
    return repr(value)  # 1 and "1" (and True) stay distinct values


def _change(before, after) -> dict:
    return {"from": before, "to": after, "change": after - before}


def submit_preview(service, definition: dict, sample: int) -> dict:
    """Check the definition as a save would, then insert and send its preview job (committed); no cohort row.

    service: the request's CohortService. The job's result is {count, sample}; the sweeper deletes the job
    COHORTS_PREVIEW_KEEP_SECONDS after it ends.
    """
    service.check_definition(None, definition)
    job, created = jobs.insert(service.conn, service.project["id"], PREVIEW_KIND,
                               params={"definition": definition, "sample": sample},
                               max_attempts=service.settings.max_attempts)
    service.commit_and_enqueue([(job, created)])
    return job
