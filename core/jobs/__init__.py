"""The job runner (life cycle, heartbeat, progress, final status) and its handlers by job kind; no Celery."""
