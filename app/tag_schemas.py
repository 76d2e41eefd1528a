"""Request and response schemas of the native tag API (/api/v1/tags), beside app/schemas.py's cohort ones."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate

from app.schemas import (
    CohortCreateSchema,
    CohortListQuery,
    CohortSchema,
    CohortUpdateSchema,
    JobSchema,
    PageSchema,
    page_field,
)
from cohort_engine.definition import DefinitionError
from cohort_engine.tag_definition import VALUE_TYPES, parse_tag_definition

# The app refuses NUL in any parameter (app/input_rules.py); saying so lets /openapi.json state it.
NO_NUL = validate.Regexp(r"^[^\x00]+$", error="must not contain NUL")
TAG_DEFINITION_DOC = {"type": "object", "description": "a canonical tag definition (docs/definition.md \"Tags\"):"
                      " kind values, metric, first_last or import; checked on save, 400 naming the field"}


class TagDefinitionField(fields.Field):
    """A canonical tag definition, validated by the engine's schema."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return parse_tag_definition(value)
        except DefinitionError as exc:
            raise ValidationError({(p if p != "_root" else "_schema"): m for p, m in exc.errors.items()}) from None


class TagCreateSchema(CohortCreateSchema):
    definition = TagDefinitionField(required=True, metadata=TAG_DEFINITION_DOC)


class TagUpdateSchema(CohortUpdateSchema):
    """Body of PUT: the whole tag; every editable field is required (null where nullable)."""

    definition = TagDefinitionField(required=True, metadata=TAG_DEFINITION_DOC)


class TagPatchSchema(TagUpdateSchema):
    """Body of PATCH: any of the PUT fields; a field left out keeps its stored value."""

    def __init__(self, **kwargs):
        super().__init__(partial=True, **kwargs)


class TagListQuery(CohortListQuery):
    pass


class TagValuesQuery(Schema):
    format = fields.String(load_default="csv", validate=validate.OneOf(("csv", "json")))
    page = page_field()
    per_page = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=100000))
    value = fields.List(fields.String(validate=[validate.Length(min=1, max=1000), NO_NUL]), load_default=list, metadata={
        "description": "only users with one of these values (repeat the parameter)"})
    min = fields.String(load_default=None, validate=[validate.Length(min=1, max=100), NO_NUL],
                        metadata={"description": "only values >= min (number and time tags)"})
    max = fields.String(load_default=None, validate=[validate.Length(min=1, max=100), NO_NUL],
                        metadata={"description": "only values < max (number and time tags)"})


class TagSchema(CohortSchema):
    value_type = fields.String(validate=validate.OneOf(VALUE_TYPES),
                               metadata={"description": "the type of every value, fixed by the definition"})


class TagWithJobSchema(Schema):
    tag = fields.Nested(TagSchema)
    job = fields.Nested(JobSchema, allow_none=True)


class TagPageSchema(PageSchema):
    tags = fields.List(fields.Nested(TagSchema))


class TagValueRowSchema(Schema):
    key = fields.String()
    value = fields.Raw(metadata={"description": "string, number, boolean, or ISO 8601 time"})


class TagValuesPageSchema(PageSchema):
    value_type = fields.String()
    version_id = fields.Integer()
    values = fields.List(fields.Nested(TagValueRowSchema))


class TagUserValueSchema(Schema):
    key = fields.String()
    value = fields.Raw(allow_none=True, metadata={"description": "null: the user has no value"})
    value_type = fields.String()
    version_id = fields.Integer()


class DistributionSchema(Schema):
    kind = fields.String(metadata={"description": "values (value -> count) or histogram (bins)"})
    value_type = fields.String()
    version_id = fields.Integer()
    count = fields.Integer(metadata={"description": "users with a value"})
    values = fields.List(fields.Dict(), metadata={"description": "[{value, count}], most users first (strings)"
                                                                  " or in value order (numbers, times)"})
    other_count = fields.Integer(metadata={"description": "users whose value is not listed (beyond 1000 values)"})
    bins = fields.List(fields.Dict(), metadata={"description": "[{low, high, count}]: low <= v < high, the last"
                                                                " bin also holds max"})
    min = fields.Raw()
    max = fields.Raw()
    sum = fields.Float()
    avg = fields.Float()
