"""The backend registry: the project's `backend` kind chooses the backend; unknown or disabled kinds are refused."""

from __future__ import annotations

import json

import pytest

from cohort_engine import backends, db
from cohort_engine.backends.embedded import EmbeddedBackend
from cohort_engine.errors import EngineError
from cohort_engine.project import ProjectEngine

from ..reference import create_project


def test_embedded_is_registered_and_chosen_by_default(engine_config):
    assert "embedded" in backends.registered()
    engine = ProjectEngine(engine_config, create_project(engine_config.database_url, "UTC"))
    assert engine.info.kind == "embedded" and isinstance(engine.backend, EmbeddedBackend)


def test_an_unknown_backend_kind_is_unsupported(engine_config):
    name = create_project(engine_config.database_url, "UTC")
    with db.connection(engine_config.database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE projects SET backend = %s WHERE name = %s", (json.dumps({"kind": "nosuch"}), name))
    with pytest.raises(EngineError) as caught:
        ProjectEngine(engine_config, name)
    assert caught.value.code == "unsupported" and "nosuch" in caught.value.message


def test_a_backend_whose_dependency_is_missing_is_not_registered():
    class Missing(backends.Backend):
        kind = "missing-dependency"

        @classmethod
        def enabled(cls):
            return False

        def open(self):
            raise AssertionError("never opened")

    backends.register(Missing.kind, Missing)
    assert Missing.kind not in backends.registered()
    with pytest.raises(EngineError, match="missing-dependency"):
        backends.get(Missing.kind)
