"""Druid's broker protocol (protocol.py) and an HTTP client for real brokers (client.py).

The Druid-compatible broker over the embedded store is cohort_engine.broker.
"""
