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
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import numpy as np

from cohort_engine import imports
from cohort_engine.backends import UserValues
from cohort_engine.definition import import_leaves
from cohort_engine.errors import EngineError
from cohort_engine.imports import Limits, Parsed, UploadError
from cohort_engine.tag_column import to_micros
from cohort_engine.tag_definition import VALUE_TYPES, trees_of
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


def parse_upload(settings, chunks, kind: str, *, header: str = "auto", match: str | None = None,
                 value_type: str | None = None) -> Parsed:
    """Parse an uploaded stream (byte chunks); Invalid naming the bad lines (nothing is written)."""
    check = value_checker(value_type) if kind == "tag" and value_type else None
    try:
        return imports.parse(chunks, kind, header=header, match_column=match, limits=limits(settings),
                             check_value=check)
    except UploadError as exc:
        raise upload_invalid(exc) from None


# -- sources --------------------------------------------------------------------------------------


def confined_path(settings, path: str) -> Path:
    """The file a source path names under the import directory; ValueError if it is not confined there."""
    if not settings.import_dir:
        raise ValueError("path sources are disabled: this service has no import directory (COHORTS_IMPORT_DIR)")
    if path.startswith("/") or "\\" in path or any(part in ("..", "") for part in path.split("/")):
        raise ValueError("must be a relative path under the import directory, without '..' or empty parts")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in path.split("/")):
        raise ValueError("has a name longer than 255 bytes, which no file system here holds")
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
        try:
            is_file = target.is_file()
        except OSError as exc:  # e.g. a path too long for the file system
            raise ValueError(f"cannot be read: {exc.strerror}") from None
        if not is_file:
            raise ValueError("no such file under the import directory")
    else:
        check_url(conn, project_id, source["url"])


def check_imports(conn, project: dict, settings, definition: dict) -> None:
    """Invalid for an import leaf (or import tag) naming another project's upload, a source it may not
    read, or a match column that is not a string or number profile property."""
    project_id = project["id"]
    if "kind" in definition:  # a tag definition (cohort_engine.tag_definition)
        if definition["kind"] == "import":
            _check_tag_source(conn, project_id, definition)
            check_match_columns(settings, project, {definition["source"].get("match")}, "definition.source.match")
        for tree in trees_of(definition):
            check_imports(conn, project, settings, tree)
        return
    leaves = import_leaves(definition)
    check_match_columns(settings, project, {leaf.get("match") for leaf in leaves}, "definition.match")
    for leaf in leaves:
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


def check_match_columns(settings, project: dict, columns: set, field: str) -> None:
    """Invalid unless each named match column is a string or number profile property of the project now."""
    columns = {c for c in columns if c}
    if not columns:
        return
    from cohort_engine.project import ProjectEngine  # loads DuckDB: only where IDs are matched

    engine = ProjectEngine(settings.engine, project["name"], project_id=project["id"], timezone=project["timezone"])
    session = engine.open_session()
    try:
        known = session.columns()["profile"]
    finally:
        session.close()
    for column in sorted(columns):
        if column not in known:
            raise Invalid({field: [f"profile property {column!r} does not exist (profile properties: "
                                   f"{', '.join(sorted(known)) or 'none'}); IDs cannot be matched on it"]})
        if known[column] not in ("string", "number"):
            raise Invalid({field: [f"profile property {column!r} is a {known[column]}; IDs match string or number "
                                   "properties only"]})


TAG_SOURCE_FIELDS = {"upload_id", "match", "keep_unmatched"}


def _check_tag_source(conn, project_id: int, definition: dict) -> None:
    """An import tag's source: {upload_id, match?, keep_unmatched?} naming a tag upload of the project."""
    source = definition.get("source") or {}
    unknown = sorted(set(source) - TAG_SOURCE_FIELDS)
    if unknown:
        raise Invalid({f"definition.source.{unknown[0]}": ["unknown field (source takes upload_id, match, "
                                                            "keep_unmatched)"]})
    upload_id = source.get("upload_id")
    if not isinstance(upload_id, int) or isinstance(upload_id, bool) or not 1 <= upload_id < 2**63:
        raise Invalid({"definition.source.upload_id": ["an import tag names its upload: upload a key,value file "
                                                       "with POST /api/v1/tags/import"]})
    match = source.get("match")
    if match is not None and not (isinstance(match, str) and 1 <= len(match) <= 200):
        raise Invalid({"definition.source.match": ["must be a profile property name (1-200 characters) or null"]})
    keep = source.get("keep_unmatched", False)
    if not isinstance(keep, bool):
        raise Invalid({"definition.source.keep_unmatched": ["must be true or false"]})
    problem = imports.check_match_options(match, keep)
    if problem:
        raise Invalid({"definition.source.keep_unmatched": [problem]})
    upload = uploads.get(conn, project_id, upload_id)
    if upload is None or upload["kind"] != "tag":
        raise Invalid({"definition.source.upload_id": [f"no tag upload {upload_id} in this project"]})


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


def value_checker(value_type: str):
    """check(text) -> problem or None, for the values of a tag upload of value_type (empty: no value)."""

    def check(text: str) -> str | None:
        if not text:
            return None
        try:
            typed_value(text, value_type, ZoneInfo("UTC"))
        except ValueError as exc:
            return str(exc)
        return None

    return check


def typed_value(text: str, value_type: str, tz: ZoneInfo):
    """A tag upload's value text as a value of the type (time: int64 microseconds UTC); ValueError."""
    if value_type == "string":
        return text
    if value_type == "number":
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"value {text[:40]!r} is not a number") from None
        if not math.isfinite(number) or not -2**63 <= number < 2**63:
            raise ValueError(f"value {text[:40]!r} is not a finite number within -2^63 .. 2^63-1")
        return number
    if value_type == "boolean":
        found = {"true": True, "false": False}.get(text.lower())
        if found is None:
            raise ValueError(f"value {text[:40]!r} is not true or false")
        return found
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"value {text[:40]!r} is not a time YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)  # local time in the project's zone; an offset wins
    return to_micros(moment.astimezone(timezone.utc).replace(tzinfo=None))


def tag_loader(conn_factory, engine, project: dict):
    """load_import for an import tag: (definition) -> UserValues of its upload matched to users now."""

    def load(definition: dict) -> UserValues:
        source = definition["source"]
        with conn_factory() as conn:
            found = uploads.content(conn, project["id"], source["upload_id"])
        if found is None:
            raise EngineError("import_missing", f"upload {source['upload_id']} no longer exists; upload the file "
                                                "again")
        keys, values = found
        session = engine.open_session()
        try:
            matched = imports.match(session, engine.encode, keys, source.get("match"),
                                    source.get("keep_unmatched", False))
        finally:
            session.close()
        if not len(matched.bitmap):
            by = f"profile property {source['match']!r}" if source.get("match") else "user key"
            raise EngineError("import_no_match", f"none of the {len(keys)} imported IDs matched a user by {by}; "
                                                 "check the file and the match column")
        uids, texts = imports.tag_values(values, matched)
        value_type, tz = definition["type"], ZoneInfo(project["timezone"])
        try:
            typed = [typed_value(text, value_type, tz) for text in texts]
        except ValueError as exc:
            raise EngineError("type_mismatch", f"the upload's values do not fit the tag's type: {exc}") from None
        array = np.array(typed, dtype={"number": np.float64, "time": np.int64, "boolean": bool}.get(value_type, object))
        return UserValues(value_type, uids, array)

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
               header: str = "auto", dialect: str = "native", request_body=None,
               value_type: str | None = None) -> ImportOutcome:
    """Upload an ID file into a new cohort or tag (name) or as a new version of `cohort` (locked); committed and sent.

    kind "cohort": one ID a line; kind "tag": `ID,value` rows into an import tag of value_type
    (service is then a core.services.tags.TagService; a replaced tag keeps its type unless given).
    chunks: the body as an iterable of bytes. The counts are those of the match now; the job computes
    the version (and adds kept IDs to the dictionary), failing `import_no_match` if no ID matches.
    """
    if kind not in imports.KINDS:
        raise Invalid({"kind": [f"must be one of {', '.join(imports.KINDS)}"]})
    settings, project = service.settings, service.project
    if cohort is None and not name:
        raise Invalid({"name": [f"a new import {kind} needs a name"]})
    if kind == "tag":
        value_type = value_type or (cohort or {}).get("value_type")
        if value_type not in VALUE_TYPES:
            raise Invalid({"type": [f"an import tag needs its value type: one of {', '.join(VALUE_TYPES)}"]})
    if cohort is not None and (cohort.get("entity") or "cohort") != kind:
        raise Invalid({"kind": [f"{cohort['id']} is a {cohort.get('entity') or 'cohort'}, not a {kind}"]})
    service.check_broker()
    parsed = parse_upload(settings, chunks, kind, header=header, match=match, value_type=value_type)
    counts = match_counts(settings, project, parsed, match, keep_unmatched)
    upload = uploads.insert(service.conn, project["id"], parsed)
    if kind == "cohort":
        definition = {"type": "import", "upload_id": upload["id"], "match": match, "keep_unmatched": keep_unmatched,
                      "header": header}
    else:
        definition = {"kind": "import", "type": value_type,
                      "source": {"upload_id": upload["id"], "match": match, "keep_unmatched": keep_unmatched}}
    if cohort is None:
        create = service.create_tag if kind == "tag" else service.create
        cohort = create(name, definition, dialect=dialect, request_body=request_body, display_name=display_name)
        job_kind = "create"
    else:
        previous = _upload_ids(cohort["definition"])
        fields = {"display_name": display_name} if display_name is not None else {}
        cohort = service.update(cohort, definition, request_body if request_body is not None else cohort["request_body"],
                                fields)
        for old in previous:
            uploads.delete_unreferenced(service.conn, project["id"], old)
        job_kind = "recalculate"
    submitted = service.submit(cohort, job_kind, supersede=job_kind == "recalculate")
    service.commit_and_enqueue([submitted])
    counts["upload_id"] = upload["id"]
    log.info("import project=%s kind=%s id=%s upload=%s rows=%d matched=%d", project["id"], kind, cohort["id"],
             upload["id"], parsed.rows, counts["matched_ids"])
    return ImportOutcome(counts, cohort, submitted[0], upload)


def _upload_ids(definition: dict) -> list[int]:
    """The uploads a cohort or tag definition names."""
    if definition.get("kind") == "import":
        return [definition["source"]["upload_id"]]
    if "kind" in definition:
        return [i for tree in trees_of(definition) for i in _upload_ids(tree)]
    return [leaf["upload_id"] for leaf in import_leaves(definition) if "upload_id" in leaf]


def store_upload(service, chunks, *, kind: str = "cohort", header: str = "auto", value_type: str | None = None) -> dict:
    """Store an ID file for later use by id (Sensors type 5, an import tag's source); committed. Its row."""
    if kind not in imports.KINDS:
        raise Invalid({"kind": [f"must be one of {', '.join(imports.KINDS)}"]})
    parsed = parse_upload(service.settings, chunks, kind, header=header, value_type=value_type)
    upload = uploads.insert(service.conn, service.project["id"], parsed)
    service.conn.commit()
    return upload
