"""ThinkingData user cluster and tag Open API `/open/*` (docs/dialects/thinkingdata.md)."""

from core.dialects import Dialect

DIALECT = Dialect(name="thinkingdata", blueprint="dialects.thinkingdata.views:bp",
                  openapi="dialects.thinkingdata.openapi:add_paths")
