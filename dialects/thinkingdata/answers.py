"""ThinkingData answers: return codes, the envelope, and the cluster shapes of the seed (plain Python).

Codes and the HTTP status of each: docs/dialects/thinkingdata.md "Errors".
"""

from __future__ import annotations

import copy
from datetime import datetime
from zoneinfo import ZoneInfo

from dialects.thinkingdata.translate import TIME_FORMAT, resolved_days

SUCCESS = 0
# return_code -> (HTTP status, what it means). -1008 and its wording are the seed's.
CODES = {
    -1001: (400, "invalid parameter"),
    -1002: (401, "invalid token"),
    -1003: (403, "projectId is not the token's project"),
    -1004: (404, "no such cluster"),
    -1005: (409, "clusterName taken"),
    -1006: (400, "clusterType not supported here"),
    -1007: (409, "conflicts with the cluster's state"),
    -1008: (401, "token missing"),
    -1009: (503, "a store of the service is unreachable"),
    -1099: (500, "internal error"),
}
MISSING_TOKEN = "参数(token)为空"


class TdError(Exception):
    """A refused request, answered {"return_code": code, "return_message": message}."""

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message
        super().__init__(message)

    @property
    def status(self) -> int:
        return CODES[self.code][0]


def envelope(data=None, *, with_data: bool = True) -> dict:
    """A success answer; answers without data (update, delete, refresh) carry no data field, as the seed."""
    return {**({"data": data} if with_data else {}), "return_code": SUCCESS, "return_message": "success"}


def error_body(code: int, message: str) -> dict:
    return {"return_code": code, "return_message": message}


def local_text(moment: datetime | None, zone: ZoneInfo) -> str:
    """'YYYY-MM-DD HH:MM:SS' in the project's zone, "" for never."""
    return "" if moment is None else moment.astimezone(zone).strftime(TIME_FORMAT)


def progress(row: dict) -> int:
    """TA's progress: 0-99 computing, 100 done, -1 failed (the cluster's newest job)."""
    status = row.get("job_status")
    if status is None:
        return 100 if row.get("users_num") is not None else 0
    if status == "succeed":
        return 100
    if status == "failed":
        return -1
    return min(int(row.get("job_progress") or 0), 99)


def resolved_qp(qp: dict | None, base: datetime) -> dict | None:
    """The stored qp with each relative event's startTime / endTime as of base (the last refresh, or now)."""
    if not isinstance(qp, dict):
        return qp
    resolved = copy.deepcopy(qp)
    for event in resolved.get("events") or []:
        if isinstance(event, dict) and event.get("recentDay") and not (event.get("startTime") and event.get("endTime")):
            event["startTime"], event["endTime"] = resolved_days(event["recentDay"], base.date())
    return resolved


def cluster_detail(row: dict, project_id: int, zone: ZoneInfo, now: datetime) -> dict:
    """GET /open/user-cluster-detail's data."""
    body = row["request_body"] or {}
    base = (row.get("base_time") or now).astimezone(zone)
    data = {
        "clusterName": row["name"], "clusterType": body.get("clusterType"), "displayName": row["display_name"],
        "id": row["id"], "progress": progress(row), "projectId": project_id,
        "refreshTime": local_text(row.get("refreshed_at"), zone), "userId": 0, "usersNum": row.get("users_num") or 0,
    }
    if row.get("entity") == "tag":
        data["userTagDef"] = body.get("tagQp")
    elif body.get("qp") is not None:
        data["userClusterDef"] = resolved_qp(body.get("qp"), base)
    return data


def cluster_listed(row: dict, project_id: int, zone: ZoneInfo) -> dict:
    """One entry of /open/user-cluster-list's userClusters, with every field of the seed."""
    body = row["request_body"] or {}
    return {
        "clusterCatalog": body.get("clusterCatalog", "catalog_cluster"), "clusterName": row["name"],
        "clusterType": body.get("clusterType"), "displayName": row["display_name"],
        "historyDataStatus": 1 if (row.get("versions") or 0) > 1 else 0, "id": row["id"],
        "mainColumnName": body.get("mainColumnName") or "", "progress": progress(row), "projectId": project_id,
        "refreshDelay": 0, "refreshTime": local_text(row.get("refreshed_at"), zone),
        "remarks": body.get("remarks") or "", "selectType": row.get("value_type") or "string", "status": 1,
        "uploadFileName": "", "userId": 0, "userName": row.get("owner") or "", "usersNum": row.get("users_num") or 0,
    }
