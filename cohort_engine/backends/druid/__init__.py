"""The Druid backend: a project's events and profiles in a Druid (or Sugo tindex/uindex) cluster, over HTTP.

Each leaf becomes native queries (queries.py) sent by the broker client (cohort_engine.druid.client);
the user keys they answer are encoded into the project's dictionary in bulk. docs/druid.md
"The Druid backend" describes the setting, the JSON of each leaf kind and the limits.
"""

from __future__ import annotations

from ...errors import EngineError
from .. import Backend, ProjectInfo, register
from .session import DruidSession
from .settings import BackendSettingError, DruidSettings, public_backend

__all__ = ["BackendSettingError", "DruidBackend", "DruidSession", "DruidSettings", "public_backend"]


class DruidBackend(Backend):
    """A project whose `backend` is `{"kind": "druid", "brokers": ..., "events": ..., ...}`."""

    kind = "druid"

    def __init__(self, project: ProjectInfo, config):
        super().__init__(project, config)
        self.settings = DruidSettings.parse(project.backend)

    def outbound(self) -> list[tuple[str, int]]:
        """The (host, port) of every broker this backend contacts, for the caller's allowlist."""
        return self.settings.addresses()

    def open(self) -> DruidSession:
        return DruidSession(self.project, self.config, self.settings)


def _factory(project: ProjectInfo, config) -> DruidBackend:
    try:
        return DruidBackend(project, config)
    except BackendSettingError as exc:
        raise EngineError("backend_config", f"the project's druid backend setting is invalid: {exc}; "
                                            "fix it with python -m core.manage druid-backend") from None


register(DruidBackend.kind, _factory)
