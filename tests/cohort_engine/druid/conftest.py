"""The client tests serve queries from the broker tests' store."""

from tests.cohort_engine.broker.conftest import druid_store  # noqa: F401
