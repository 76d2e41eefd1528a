"""Sugo `/ant` user groups and tag batch updates, and the embedded `/druid/v2` broker (docs/dialects/sugo.md)."""

from core.dialects import Dialect

DIALECT = Dialect(
    name="sugo", blueprint="dialects.sugo.views:bp", openapi="dialects.sugo.openapi:add_paths",
    job_handlers={"usergroup": "dialects.sugo.jobs:run_sugo_job", "batchUpdate": "dialects.sugo.jobs:run_sugo_job",
                  # A tag version pushed to hproxy as one column (docs/tags.md); sent to jobs.run.
                  "sugo.tagPush": "dialects.sugo.tag_push:run_tag_push"},
    # The task names these kinds had before the generic jobs.run: queued messages and older workers know them.
    task_names={"usergroup": "sugo.usergroup", "batchUpdate": "sugo.batch_update"})
