"""The broker as the Sugo dialect runs it: Druid's query types plus Sugo's `user_group`."""

from functools import partial

from cohort_engine import broker
from dialects.sugo.broker_queries import QUERY_TYPES, user_group_uids

__all__ = ["execute", "respond", "user_group_uids"]

execute = partial(broker.execute, query_types=QUERY_TYPES)
respond = partial(broker.respond, query_types=QUERY_TYPES)
