"""Analysys Ark `/uba/api/cohort` cohorts (docs/dialects/ark.md)."""

from core.dialects import Dialect

DIALECT = Dialect(name="ark", blueprint="dialects.ark.views:bp", openapi="dialects.ark.openapi:add_paths")
