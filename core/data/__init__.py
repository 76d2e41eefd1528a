"""Data access: one module per table, raw parameterised SQL over psycopg2 connections."""
