"""A small client of the service's native REST API (/api/v1), for the `cohorts` command."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import requests

DEFAULT_URL = "http://127.0.0.1:6061"
ENDED = ("succeed", "failed")


class ServiceError(Exception):
    """An answer of the service that is not a success, or no answer at all (status None)."""

    def __init__(self, status: int | None, message: str, errors: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or {}


class ServiceClient:
    """Calls one service as one project (its Bearer token)."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ServiceError(None, f"cannot reach the service at {self.url} ({type(exc).__name__}); "
                                     "give its address with --url or COHORTS_URL") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            body = body if isinstance(body, dict) else {}
            message = body.get("error") or body.get("errorMessage") or response.reason or "error"
            response.close()
            raise ServiceError(response.status_code, str(message), body.get("errors"))
        return response

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: dict | None = None) -> dict:
        return self.request("POST", path, json=body).json()

    def create_cohort(self, body: dict) -> dict:
        return self.post("/api/v1/cohorts", body)

    def job(self, job_id: int) -> dict:
        return self.get(f"/api/v1/jobs/{job_id}")

    def jobs(self, status=None, cohort_id=None, per_page=50) -> list[dict]:
        return self.get("/api/v1/jobs", status=status, cohort_id=cohort_id, per_page=per_page)["jobs"]

    def cancel(self, job_id: int) -> dict:
        return self.post(f"/api/v1/jobs/{job_id}/cancel")

    def cohort(self, cohort_id: int) -> dict:
        return self.get(f"/api/v1/cohorts/{cohort_id}")

    def cohorts(self, status=None, per_page=500) -> list[dict]:
        return self.get("/api/v1/cohorts", status=status, per_page=per_page)["cohorts"]

    def members(self, cohort_id: int) -> tuple[int | None, Iterator[str]]:
        """(member count, the keys as they stream in) of the cohort's published version."""
        return self.stream_lines(f"/api/v1/cohorts/{cohort_id}/members")

    def create_tag(self, body: dict) -> dict:
        return self.post("/api/v1/tags", body)

    def tags(self, status=None, per_page=500) -> list[dict]:
        return self.get("/api/v1/tags", status=status, per_page=per_page)["tags"]

    def tag_values(self, tag_id: int, values=(), low=None, high=None) -> tuple[int | None, Iterator[str]]:
        """(row count, the CSV lines "key,value" after the header line) of the tag's published version."""
        params = [("value", v) for v in values] + [(k, v) for k, v in (("min", low), ("max", high)) if v is not None]
        return self.stream_lines(f"/api/v1/tags/{tag_id}/values", params)

    def stream_lines(self, path: str, params=None) -> tuple[int | None, Iterator[str]]:
        """(X-Total-Count, the answer's non-empty lines as they stream in) of a text/csv answer."""
        response = self.request("GET", path, params=params, stream=True)
        total = response.headers.get("X-Total-Count")

        def keys():
            with response:
                for line in response.iter_lines(decode_unicode=True):
                    if line:
                        yield line
        return (int(total) if total is not None else None), keys()

    def wait(self, job_id: int, on_progress: Callable[[dict], None], interval: float = 0.25,
             max_interval: float = 2.0) -> dict:
        """Poll a job until it ends, calling on_progress with each answer; the final job.

        The interval grows towards max_interval while nothing changes, and is short again after a change.
        """
        last = None
        delay = interval
        while True:
            job = self.job(job_id)
            on_progress(job)
            if job["status"] in ENDED:
                return job
            seen = (job["status"], job["progress"])
            delay = interval if seen != last else min(delay * 1.5, max_interval)
            last = seen
            time.sleep(delay)
