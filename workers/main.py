"""Entry point for `celery -A workers.main worker|beat|flower` (builds the app from the environment)."""

import logging

from workers.celery_app import create_celery

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
app = create_celery()
