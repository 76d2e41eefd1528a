"""Request and response schemas of the native API (also the source of the OpenAPI document)."""

from __future__ import annotations

from croniter import croniter
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from cohort_engine.definition import MAX_COHORT_ID, DefinitionError, parse_definition
from core.crons import check_fires
from core.fields import StrictBoolean

STATUSES = ("new", "computing", "succeed", "failed")
# Keeps page offsets far inside bigint (docs/api.md).
MAX_PAGE = 1_000_000


def page_field(default: int = 1) -> fields.Integer:
    """A 1-based page number, bounded so that its offset fits the database's integers."""
    return fields.Integer(load_default=default, validate=validate.Range(min=1, max=MAX_PAGE))


class DefinitionField(fields.Field):
    """A canonical cohort definition (docs/definition.md), validated by the engine's schema."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return parse_definition(value)
        except DefinitionError as exc:
            nested: dict = {}
            for path, messages in exc.errors.items():
                nested[path if path != "_root" else "_schema"] = messages
            raise ValidationError(nested) from None


DEFINITION_DOC = {"allOf": [{"$ref": "#/components/schemas/Definition"}],
                  "description": "the canonical rule tree (docs/definition.md); the rules between its fields are"
                                 " checked on save and answered 400 naming the field"}


def valid_cron(value: str) -> None:
    if len(value.split()) not in (5, 6) or not croniter.is_valid(value):
        raise ValidationError("not a valid cron expression: 5 fields (minute hour day month weekday), "
                              "or 6 with seconds last")
    check_fires(value)


NAME = validate.Regexp(r"^[\w.\-:]{1,200}$", error="use 1-200 letters, digits, _ . - :")
# Every field a client may set on a cohort: PUT names them all, PATCH any of them (docs/api.md).
EDITABLE = ("name", "display_name", "definition", "dynamic", "cron", "owner")


def check_schedule(dynamic: bool, cron: str | None) -> None:
    """A dynamic cohort has a cron and only a dynamic cohort has one."""
    if dynamic and not cron:
        raise ValidationError({"cron": ["a dynamic cohort needs a cron expression"]})
    if cron and not dynamic:
        raise ValidationError({"cron": ["cron is only for dynamic cohorts: set dynamic: true, or send dynamic: false with cron: null to stop scheduling"]})


class CohortCreateSchema(Schema):
    project = fields.String(load_default=None, metadata={"description": "must match the token's project if given"})
    name = fields.String(required=True, validate=NAME)
    display_name = fields.String(load_default=None, validate=validate.Length(max=200))
    definition = DefinitionField(required=True, metadata=DEFINITION_DOC)
    dynamic = StrictBoolean(load_default=False)
    cron = fields.String(load_default=None, allow_none=True, validate=valid_cron)
    owner = fields.String(load_default=None, validate=validate.Length(max=200))

    @validates_schema
    def _cron_for_dynamic(self, data, partial=False, **kwargs):
        if not partial:  # a PATCH is checked once merged with the stored cohort
            check_schedule(data.get("dynamic"), data.get("cron"))


class CohortUpdateSchema(CohortCreateSchema):
    """Body of PUT: the whole cohort; every editable field is required (null where nullable)."""

    name = fields.String(required=True, validate=NAME, metadata={"description": "renames the cohort"})
    display_name = fields.String(required=True, allow_none=True, validate=validate.Length(max=200))
    definition = DefinitionField(required=True, metadata=DEFINITION_DOC)
    dynamic = StrictBoolean(required=True)
    cron = fields.String(required=True, allow_none=True, validate=valid_cron)
    owner = fields.String(required=True, allow_none=True, validate=validate.Length(max=200))


class CohortPatchSchema(CohortUpdateSchema):
    """Body of PATCH: any of the PUT fields; a field left out keeps its stored value."""

    def __init__(self, **kwargs):
        # partial also makes apispec list no field as required.
        super().__init__(partial=True, **kwargs)


class CohortListQuery(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    page = page_field()
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class JobListQuery(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    cohort_id = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_COHORT_ID))
    page = page_field()
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class MembersQuery(Schema):
    format = fields.String(load_default="csv", validate=validate.OneOf(("csv", "json")))
    page = page_field()
    per_page = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=100000))


class JobSchema(Schema):
    id = fields.Integer()
    kind = fields.String(metadata={"description": "create, refresh, recalculate, cron, ..."})
    cohort_id = fields.Integer(allow_none=True)
    status = fields.String(validate=validate.OneOf(STATUSES))
    progress = fields.Integer(metadata={"description": "0..100, 100 only when succeed"})
    error_code = fields.String(allow_none=True)
    error_message = fields.String(allow_none=True)
    result = fields.Dict(allow_none=True)
    base_time = fields.DateTime()
    attempts = fields.Integer()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class VersionSchema(Schema):
    id = fields.Integer()
    status = fields.String()
    count = fields.Integer(allow_none=True)
    base_time = fields.DateTime()
    computed_at = fields.DateTime(allow_none=True)


class ScheduleErrorSchema(Schema):
    message = fields.String()
    at = fields.DateTime()


class CohortSchema(Schema):
    id = fields.Integer()
    project = fields.String()
    name = fields.String()
    display_name = fields.String(allow_none=True)
    dialect = fields.String()
    definition = fields.Dict()
    dynamic = fields.Boolean()
    cron = fields.String(allow_none=True)
    scheduler_running = fields.Boolean()
    owner = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    latest_version = fields.Nested(VersionSchema, allow_none=True)
    schedule_error = fields.Nested(ScheduleErrorSchema, allow_none=True, metadata={
        "description": "why the scheduler last skipped this dynamic cohort; null once a pass schedules it"})


class CohortWithJobSchema(Schema):
    cohort = fields.Nested(CohortSchema)
    job = fields.Nested(JobSchema, allow_none=True, metadata={
        "description": "the job computing a changed definition; null when PUT/PATCH changed no definition"})


class ErrorsSchema(Schema):
    """Every error answer: a message, and for invalid input the messages per field path."""

    error = fields.String(required=True, metadata={"description": "what went wrong"})
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                         metadata={"description": "field path -> messages (invalid input)"})


class PageSchema(Schema):
    """The envelope of a paged answer; each subclass adds its list."""

    total = fields.Integer()
    page = fields.Integer()
    per_page = fields.Integer()


class CohortPageSchema(PageSchema):
    cohorts = fields.List(fields.Nested(CohortSchema))


class JobPageSchema(Schema):
    page = fields.Integer()
    per_page = fields.Integer()
    jobs = fields.List(fields.Nested(JobSchema))


class MembersPageSchema(PageSchema):
    members = fields.List(fields.String(), metadata={"description": "user keys"})


class MembershipSchema(Schema):
    member = fields.Boolean()


class RefreshSchema(Schema):
    job = fields.Nested(JobSchema)
    coalesced = fields.Boolean(metadata={"description": "true: joined the cohort's running computation"})


class DeletedSchema(Schema):
    deleted = fields.Integer()


class ProjectSchema(Schema):
    name = fields.String()
    timezone = fields.String()
    backend = fields.Dict(metadata={"description": "the rule backend setting, without secrets (a druid "
                                                   "backend shows password_set instead of its password)"})


class HealthSchema(Schema):
    ok = fields.Boolean()
    checks = fields.Dict(keys=fields.String(), values=fields.Dict())


# -- history, diff, preview (docs/api.md) and webhooks (docs/webhooks.md) ----------------------------------

VERSION_ID = validate.Range(min=1, max=2147483647)


class PageQuery(Schema):
    page = page_field()
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class DiffQuery(Schema):
    from_ = fields.Integer(data_key="from", load_default=None, validate=VERSION_ID, metadata={
        "description": "version id (default: the version published before `to`)"})
    to = fields.Integer(load_default=None, validate=VERSION_ID, metadata={
        "description": "version id (default: the published version)"})
    side = fields.String(load_default=None, validate=validate.OneOf(("entered", "left")), metadata={
        "description": "stream the keys of users who entered or left as text/csv, one a line"})


class TagDiffQuery(Schema):
    from_ = fields.Integer(data_key="from", load_default=None, validate=VERSION_ID, metadata={
        "description": "version id (default: the version published before `to`)"})
    to = fields.Integer(load_default=None, validate=VERSION_ID, metadata={
        "description": "version id (default: the published version)"})


class PreviewSchema(Schema):
    project = fields.String(load_default=None, metadata={"description": "must match the token's project if given"})
    definition = DefinitionField(required=True, metadata=DEFINITION_DOC)
    sample = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=0, max=100), metadata={
        "description": "how many member keys to return (default COHORTS_PREVIEW_SAMPLE, 10)"})


class VersionHistorySchema(Schema):
    id = fields.Integer()
    definition_version = fields.Integer()
    base_time = fields.DateTime()
    status = fields.String(validate=validate.OneOf(STATUSES))
    count = fields.Integer(allow_none=True)
    error_code = fields.String(allow_none=True)
    error_message = fields.String(allow_none=True)
    published = fields.Boolean(metadata={"description": "this is the cohort's published (latest) version"})
    kept = fields.Boolean(metadata={"description": "its members are kept (diff and members can read them)"})
    entered = fields.Integer(allow_none=True, metadata={
        "description": "users in this version but not in the one published before it (all members for a first "
                       "version); null when this version was not published"})
    left = fields.Integer(allow_none=True, metadata={"description": "users in the previous published version only"})
    previous_version_id = fields.Integer(allow_none=True)
    job_id = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    duration_seconds = fields.Float(allow_none=True, metadata={
        "description": "from its job's first start to the version's end"})
    timings = fields.List(fields.Dict(), allow_none=True, metadata={
        "description": "per leaf: {leaf (path), type, seconds, count}"})


class VersionPageSchema(PageSchema):
    versions = fields.List(fields.Nested(VersionHistorySchema))


class DiffSideSchema(Schema):
    id = fields.Integer()
    count = fields.Integer()
    base_time = fields.DateTime()
    definition_version = fields.Integer()


class DiffSchema(Schema):
    cohort = fields.Integer()
    from_ = fields.Nested(DiffSideSchema, data_key="from")
    to = fields.Nested(DiffSideSchema)
    entered = fields.Integer(metadata={"description": "users in `to` and not in `from`"})
    left = fields.Integer(metadata={"description": "users in `from` and not in `to`"})


class ChangeSchema(Schema):
    from_ = fields.Raw(data_key="from")
    to = fields.Raw()
    change = fields.Raw()


class ValueChangeSchema(ChangeSchema):
    value = fields.Raw(metadata={"description": "a tag value (string, number, time, boolean)"})


class TagDiffSchema(Schema):
    tag = fields.Integer()
    value_type = fields.String()
    from_ = fields.Nested(DiffSideSchema, data_key="from")
    to = fields.Nested(DiffSideSchema)
    kind = fields.String(metadata={"description": "values: per value; histogram: either side is a histogram, whose "
                                                  "bins are not comparable, so both are given with their summaries"})
    count = fields.Nested(ChangeSchema, metadata={"description": "users with a value"})
    values = fields.List(fields.Nested(ValueChangeSchema), metadata={"description": "kind values: largest change "
                                                                                    "first"})
    other = fields.Nested(ChangeSchema, metadata={"description": "kind values: users of the values not listed"})
    from_summary = fields.Dict()
    to_summary = fields.Dict()
    from_bins = fields.List(fields.Dict())
    to_bins = fields.List(fields.Dict())


class PreviewResultSchema(Schema):
    count = fields.Integer()
    sample = fields.List(fields.String(), metadata={"description": "member keys (the smallest ids)"})
    job = fields.Nested(JobSchema)


class PreviewFailedSchema(Schema):
    error = fields.String(required=True, metadata={"description": "why the preview's job failed"})
    error_code = fields.String(metadata={"description": "the job's error_code (docs/jobs.md)"})
    job = fields.Nested(JobSchema)


class PreviewAcceptedSchema(Schema):
    job = fields.Nested(JobSchema, metadata={"description": "poll GET /api/v1/jobs/{id}: its result is {count, "
                                                           "sample} once it succeeds"})


WEBHOOK_EVENTS = ("version.published", "job.failed")
WEBHOOK_URL = validate.Length(min=1, max=2000)
WEBHOOK_SECRET = validate.Length(min=16, max=200)


class WebhookCreateSchema(Schema):
    url = fields.String(required=True, validate=WEBHOOK_URL, metadata={
        "description": "http(s) URL; its host:port must be allowed for the project "
                       "(python -m core.manage allow PROJECT --webhook HOST:PORT)"})
    secret = fields.String(load_default=None, validate=WEBHOOK_SECRET, metadata={
        "description": "HMAC-SHA256 key of the X-Cohorts-Signature header (default: generated, shown once)"})
    cohort_id = fields.Integer(load_default=None, allow_none=True, strict=True,
                               validate=validate.Range(min=1, max=MAX_COHORT_ID), metadata={"description": "only this cohort's events (default: every cohort's)"})
    events = fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), load_default=list(WEBHOOK_EVENTS),
                         validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)))
    active = StrictBoolean(load_default=True)


class WebhookPatchSchema(WebhookCreateSchema):
    def __init__(self, **kwargs):
        super().__init__(partial=True, **kwargs)

    url = fields.String(validate=WEBHOOK_URL)
    secret = fields.String(validate=WEBHOOK_SECRET)
    cohort_id = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=MAX_COHORT_ID))
    events = fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
                         validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)))
    active = StrictBoolean()


class WebhookSchema(Schema):
    id = fields.Integer()
    url = fields.String()
    cohort_id = fields.Integer(allow_none=True)
    events = fields.List(fields.String())
    active = fields.Boolean()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    secret = fields.String(metadata={"description": "only in the answer that creates it (or sets a new one)"})


class WebhookPageSchema(PageSchema):
    webhooks = fields.List(fields.Nested(WebhookSchema))


class DeliveryListQuery(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(("pending", "delivered", "failed")))
    page = page_field()
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class DeliverySchema(Schema):
    id = fields.Integer()
    webhook_id = fields.Integer()
    event = fields.String()
    cohort_id = fields.Integer(allow_none=True)
    version_id = fields.Integer(allow_none=True)
    job_id = fields.Integer(allow_none=True)
    status = fields.String(metadata={"description": "pending (an attempt is due), delivered, failed (no more tries)"})
    attempts = fields.Integer()
    status_code = fields.Integer(allow_none=True, metadata={"description": "of the last attempt"})
    error = fields.String(allow_none=True, metadata={"description": "of the last attempt"})
    history = fields.List(fields.Dict(), metadata={"description": "every attempt: {attempt, at, status_code, error, "
                                                                  "seconds}"})
    body = fields.Dict(metadata={"description": "the JSON body sent (docs/webhooks.md)"})
    created_at = fields.DateTime()
    next_attempt_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)


class DeliveryPageSchema(PageSchema):
    deliveries = fields.List(fields.Nested(DeliverySchema))
