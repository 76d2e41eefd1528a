"""The broker's query types: Druid's own built in, a dialect's passed in (nothing Sugo-only by default)."""

from __future__ import annotations

from cohort_engine import broker

USER_GROUP = {"queryType": "user_group", "dataSource": "tag_bank", "granularity": "all", "intervals": "1000/3000",
              "dimension": "distinct_id"}


def test_the_broker_alone_knows_druids_query_types_only(druid_store):
    assert set(broker.DRUID_QUERY_TYPES) == {"groupBy", "timeseries", "topN", "scan", "segmentMetadata"}
    status, body = broker.execute(USER_GROUP, druid_store.datasources)
    assert status == 400 and "Could not resolve type id" in body["errorMessage"]


def test_a_dialect_adds_a_query_type_with_a_handler(druid_store):
    def count_rows(plan):
        filter_sql = plan.filter_sql()
        rows = plan.fetch(lambda con: plan.source_ctes(con, filter_sql, False) + f"SELECT count(*) FROM src WHERE {filter_sql}")
        return [{"rows": rows[0][0]}]

    query = {"queryType": "rowCount", "dataSource": "tag_bank", "intervals": "1000/3000"}
    status, body = broker.execute(query, druid_store.datasources, query_types={"rowCount": count_rows})
    assert status == 200 and body == [{"rows": len(druid_store.users)}]


def test_the_embedded_broker_speaks_the_broker_protocol(druid_store):
    query = {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": "1000/3000", "granularity": "all",
             "dimensions": ["event"], "aggregations": [{"type": "count", "name": "n"}]}
    with broker.EmbeddedBroker(druid_store.datasources) as client:
        pages = list(client.iter_group_by(query, page_size=2))
        assert client.cancel("any") is False
    assert sum(row["n"] for page in pages for row in page) == len(druid_store.events)
    assert [len(p) for p in pages] == [2, 1]
