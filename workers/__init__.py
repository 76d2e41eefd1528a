"""Celery application, configuration and entry points for worker and beat."""
