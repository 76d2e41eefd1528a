"""ID imports (docs/imports.md): upload an ID file into a cohort, check and read import sources.

`import_ids` is the one service every API calls (the native upload endpoints, ThinkingData's
`/open/import-id-cluster-*`, Sensors types 5 and 6 through their `import` leaves): it parses the
stream (refusing the whole file on any bad row), matches the IDs now for the counts the caller
answers with, stores the upload and creates or replaces the cohort in one transaction, then sends
the job that computes the version. Sources (a path under the import directory, an allowlisted
URL) are checked here before anything is read or contacted.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cohort_engine import imports
from cohort_engine.definition import import_leaves
from cohort_engine.errors import EngineError
from cohort_engine.imports import Limits, Parsed, UploadError
from core.data import sugo_targets, uploads
from core.errors import Invalid

log = logging.getLogger(__name__)

TARGET_KIND = "import"
URL_SCHEMES = {"http": 80, "https": 443}


def limits(settings) -> Limits:
    """The upload limits of the service's settings."""
    return Limits(max_bytes=settings.import_max_bytes, max_rows=settings.import_max_rows)


def upload_invalid(exc: UploadError, field: str = "file") -> Invalid:
    """An UploadError as a 400 naming the file and each bad line."""
    messages = [f"line {e['line']}: {e['message']}" if e.get("line") else e["message"] for e in exc.errors]
    return Invalid({field: messages or [exc.message]}, exc.message)


def parse_upload(settings, chunks, kind: str, *, header: str = "auto", match: str | None = None) -> Parsed:
    """Parse an uploaded stream (byte chunks); Invalid naming the bad lines (nothing is written)."""
    try:
        return imports.parse(chunks, kind, header=header, match_column=match, limits=limits(settings))
    except UploadError as exc:
        raise upload_invalid(exc) from None


# -- sources --------------------------------------------------------------------------------------


def confined_path(settings, path: str) -> Path:
    """The file a source path names under the import directory; ValueError if it is not confined there."""
    if not settings.import_dir:
        raise ValueError("path sources are disabled: this service has no import directory (COHORTS_IMPORT_DIR)")
    if path.startswith("/") or "\\" in path or any(part in ("..", "") for part in path.split("/")):
        raise ValueError("must be a relative path under the import directory, without '..' or empty parts")
    root = Path(settings.import_dir).resolve()
    target = (root / path).resolve()  # follows symlinks: a link pointing out of the directory is refused
    if root not in target.parents:
        raise ValueError("resolves outside the import directory")
    return target


def _normalised_host(host: str) -> str:
    host = host.lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def url_target(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) source URL; ValueError if it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    try:
        port = parts.port or URL_SCHEMES[parts.scheme]
    except ValueError:
        raise ValueError("has an invalid port") from None
    return _normalised_host(parts.hostname), port


def check_url(conn, project_id: int, url: str) -> None:
    """ValueError unless the URL's host:port is an `import` target allowed for the project."""
    host, port = url_target(url)
    allowed = {(t["host"], t["port"]) for t in sugo_targets.for_project(conn, project_id) if t["kind"] == TARGET_KIND}
    if (host, port) not in allowed:
        raise ValueError(f"{host}:{port} is not an import source allowed for this project (an operator allows it "
                         f"with `python -m core.manage sugo-allow PROJECT --import {host}:{port}`)")


def check_source(conn, project_id: int, settings, source: dict) -> None:
    """ValueError naming what is wrong with a routine-import source (nothing is contacted)."""
    if "path" in source:
        target = confined_path(settings, source["path"])
        if not target.is_file():
            raise ValueError("no such file under the import directory")
    else:
        check_url(conn, project_id, source["url"])


def check_imports(conn, project_id: int, settings, definition: dict) -> None:
    """Invalid/NotFound for an import leaf naming another project's upload or a source it may not read."""
    for leaf in import_leaves(definition):
        if "upload_id" in leaf:
            upload = uploads.get(conn, project_id, leaf["upload_id"])
            if upload is None:
                raise Invalid({"definition.upload_id": [f"no upload {leaf['upload_id']} in this project"]})
            if upload["kind"] != "cohort":
                raise Invalid({"definition.upload_id": [f"upload {upload['id']} is a {upload['kind']} upload "
                                                        "(key,value rows); a cohort needs one ID a line"]})
        else:
            try:
                check_source(conn, project_id, settings, leaf["source"])
            except ValueError as exc:
                field = "path" if "path" in leaf["source"] else "url"
                raise Invalid({f"definition.source.{field}": [str(exc)]}) from None


def _fetch_chunks(settings, url: str):
    """The body of a source URL in chunks, bounded in time and size, no redirects followed."""
    import requests  # imported here: only workers reading URL sources need it loaded

    try:
        response = requests.get(url, stream=True, allow_redirects=False,
                                timeout=(settings.import_fetch_timeout, settings.import_fetch_timeout))
    except requests.RequestException as exc:
        raise EngineError("import_source_error", f"could not fetch {url}: {exc}") from None
    with response:
        if response.status_code != 200:
            raise EngineError("import_source_error", f"{url} answered HTTP {response.status_code}; the source must"
                                                     " answer 200 with the ID file (redirects are not followed)")
        try:
            yield from response.iter_content(imports.READ_CHUNK)
        except requests.RequestException as exc:
            raise EngineError("import_source_error", f"reading {url} failed: {exc}") from None


def read_source(conn, project_id: int, settings, leaf: dict) -> Parsed:
    """Read and parse an import leaf's source now (checked again: the directory or allowlist may have changed)."""
    source = leaf["source"]
    try:
        check_source(conn, project_id, settings, source)
    except ValueError as exc:
        raise EngineError("import_source_error", f"import source {source}: {exc}") from None
    try:
        if "path" in source:
            with open(confined_path(settings, source["path"]), "rb") as f:
                return imports.parse(imports.iter_stream(f), "cohort", header=leaf.get("header", "auto"),
                                     match_column=leaf.get("match"), limits=limits(settings))
        return imports.parse(_fetch_chunks(settings, source["url"]), "cohort", header=leaf.get("header", "auto"),
                             match_column=leaf.get("match"), limits=limits(settings))
    except UploadError as exc:
        raise EngineError("import_bad_rows", f"import source {source}: {exc.describe()}") from None
    except OSError as exc:
        raise EngineError("import_source_error", f"import source {source}: {exc.strerror or exc}") from None


def loader(conn_factory, project_id: int, settings):
    """load_import for the engine: the distinct IDs of an import leaf (stored upload or source read now)."""

    def load(leaf: dict) -> list[str]:
        with conn_factory() as conn:
            if "upload_id" in leaf:
                found = uploads.content(conn, project_id, leaf["upload_id"])
                if found is None:
                    raise EngineError("import_missing", f"upload {leaf['upload_id']} no longer exists; "
                                                        "upload the file again")
                return found[0]
            parsed = read_source(conn, project_id, settings, leaf)
        log.info("import source read project=%s rows=%d distinct=%d", project_id, parsed.rows, len(parsed.keys))
        return parsed.keys

    return load


# -- the upload command ---------------------------------------------------------------------------


@dataclass
class ImportOutcome:
    """What an upload did: its counts, the cohort created or replaced, its job, the upload row."""

    counts: dict
    cohort: dict
    job: dict
    upload: dict


def match_counts(settings, project: dict, parsed: Parsed, match: str | None, keep_unmatched: bool) -> dict:
    """The upload's counts with its match against the users as they are now (Invalid: a bad match column)."""
    problem = imports.check_match_options(match, keep_unmatched)
    if problem:
        raise Invalid({"keep_unmatched": [problem]})
    from cohort_engine.project import ProjectEngine  # loads DuckDB: only where IDs are matched

    engine = ProjectEngine(settings.engine, project["name"], project_id=project["id"], timezone=project["timezone"])
    session = engine.open_session()
    try:
        found = imports.match(session, engine.encode, parsed.keys, match, keep_unmatched=False)
    except EngineError as exc:
        raise Invalid({"match": [exc.message]}) from None
    finally:
        session.close()
    unmatched_rows = found.unmatched_ids  # distinct IDs; their duplicates are counted apart
    users = len(found.bitmap) + (unmatched_rows if keep_unmatched else 0)
    counts = {**parsed.counts(), "matched_ids": found.matched_ids, "unmatched_ids": unmatched_rows,
              "users": users, "kept_as_new_users": unmatched_rows if keep_unmatched else 0}
    return counts


def import_ids(service, chunks, *, kind: str = "cohort", match: str | None = None, keep_unmatched: bool = False,
               cohort: dict | None = None, name: str | None = None, display_name: str | None = None,
               header: str = "auto", dialect: str = "native", request_body=None) -> ImportOutcome:
    """Upload an ID file into a new cohort (name) or as a new version of `cohort` (locked); committed and sent.

    chunks: the body as an iterable of bytes. The counts are those of the match now; the job computes
    the version (and adds kept IDs to the dictionary), failing `import_no_match` if no ID matches.
    """
    if kind != "cohort":
        raise Invalid({"kind": ["only cohort imports are available (tag imports come with tags)"]})
    settings, project = service.settings, service.project
    if cohort is None and not name:
        raise Invalid({"name": ["a new import cohort needs a name"]})
    service.check_broker()
    parsed = parse_upload(settings, chunks, kind, header=header, match=match)
    counts = match_counts(settings, project, parsed, match, keep_unmatched)
    upload = uploads.insert(service.conn, project["id"], parsed)
    leaf = {"type": "import", "upload_id": upload["id"], "match": match, "keep_unmatched": keep_unmatched,
            "header": header}
    if cohort is None:
        cohort = service.create(name, leaf, dialect=dialect, request_body=request_body, display_name=display_name)
        job_kind = "create"
    else:
        previous = [old["upload_id"] for old in import_leaves(cohort["definition"]) if "upload_id" in old]
        fields = {"display_name": display_name} if display_name is not None else {}
        cohort = service.update(cohort, leaf, request_body if request_body is not None else cohort["request_body"],
                                fields)
        for old in previous:
            uploads.delete_unreferenced(service.conn, project["id"], old)
        job_kind = "recalculate"
    submitted = service.submit(cohort, job_kind, supersede=job_kind == "recalculate")
    service.commit_and_enqueue([submitted])
    counts["upload_id"] = upload["id"]
    log.info("import project=%s cohort=%s upload=%s rows=%d matched=%d", project["id"], cohort["id"], upload["id"],
             parsed.rows, counts["matched_ids"])
    return ImportOutcome(counts, cohort, submitted[0], upload)


def store_upload(service, chunks, *, kind: str = "cohort", header: str = "auto") -> dict:
    """Store an ID file for later use by id (Sensors types 5); committed. Its row with the parse counts."""
    if kind != "cohort":
        raise Invalid({"kind": ["only cohort imports are available (tag imports come with tags)"]})
    parsed = parse_upload(service.settings, chunks, kind, header=header)
    upload = uploads.insert(service.conn, service.project["id"], parsed)
    service.conn.commit()
    return upload

