"""Celery tasks: thin wrappers that load a job by id and hand it to the executor."""
