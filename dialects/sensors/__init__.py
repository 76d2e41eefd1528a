"""Sensors Analytics `/segmenter` cohorts (docs/dialects/sensors.md)."""

from core.dialects import Dialect

DIALECT = Dialect(name="sensors", blueprint="dialects.sensors.views:bp", openapi="dialects.sensors.openapi:add_paths",
                  partitioned=True)
