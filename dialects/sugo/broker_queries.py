"""Sugo's additions to the Druid broker protocol: the `user_group` query type and tindex's groupBy rows.

`user_group` answers the distinct values of one dimension under a filter (the users of a Sugo
group); the broker over the embedded store runs it when given QUERY_TYPES. tindex answers
groupBy rows as {"v": ..., "event": {...}} where Druid says "version": row_event reads both.
"""

from __future__ import annotations

from pyroaring import BitMap

from cohort_engine.backends.embedded.store import quote
from cohort_engine.bitmaps import to_bitmap
from cohort_engine.broker import UNLIMITED, BadQuery, DataSources, Plan, QueryLimits, guarded
from cohort_engine.broker.embedded import UID, name_field
from cohort_engine.broker.errors import require
from cohort_engine.broker.filters import STRING
from cohort_engine.druid.protocol import DruidError


def run_user_group(plan: Plan, uids: bool = False):
    """The sorted distinct values of the query's dimension (or, with uids, the matching users' uids)."""
    dimension = name_field(require(plan.query, "dimension", "query"), "dimension")
    filter_sql = plan.filter_sql()
    filter_uses_key = plan.spec.key_dimension in plan.columns.used
    if uids:
        rows = plan.fetch(lambda con: plan.source_ctes(con, filter_sql, filter_uses_key)
                          + f"SELECT DISTINCT {quote(UID)} FROM src WHERE {filter_sql}{plan.cap_sql()}",
                          capped=True)
        return to_bitmap([r[0] for r in rows])
    column, kind = plan.columns.sql(dimension), plan.columns.type_of(dimension)
    value = column if kind in (STRING, None) else f"CAST({column} AS VARCHAR)"
    rows = plan.fetch(lambda con: plan.source_ctes(con, filter_sql, filter_uses_key)
                      + f"SELECT DISTINCT {value} AS v FROM src WHERE {filter_sql} AND {value} IS NOT NULL"
                      f" ORDER BY v{plan.cap_sql()}", capped=True)
    return [r[0] for r in rows]


# The query types Sugo adds to Druid's: pass as query_types= to the broker's run/execute/respond.
QUERY_TYPES = {"user_group": run_user_group}


def user_group_uids(query: dict, datasources: DataSources, limits: QueryLimits = UNLIMITED) -> BitMap:
    """The uids of a Sugo `user_group` query whose dimension is the datasource's key dimension."""
    return guarded(lambda: _user_group_uids(query, datasources, limits))


def _user_group_uids(query: dict, datasources: DataSources, limits: QueryLimits) -> BitMap:
    plan = Plan(query, datasources, limits, QUERY_TYPES)
    if plan.query_type != "user_group":
        raise BadQuery("queryType must be user_group")
    if require(plan.query, "dimension", "query") != plan.spec.key_dimension:
        raise BadQuery(f"dimension must be the key dimension {plan.spec.key_dimension!r} to answer uids")
    return run_user_group(plan, uids=True)


def row_event(row: dict) -> dict:
    """The event of a groupBy row, whether it says {"version": ...} (Druid) or {"v": ...} (tindex)."""
    if "event" not in row or not ("version" in row or "v" in row):
        raise DruidError("Unexpected response", f"groupBy row without version/event: {str(row)[:200]}")
    return row["event"]
