"""WSGI entry point for gunicorn: `gunicorn wsgi:app`; it wires the web app to the job sender."""

import logging

from app import create_app
from core.settings import Settings
from workers.celery_app import create_celery

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
settings = Settings.from_env()
app = create_app({"SETTINGS": settings, "CELERY": create_celery(settings)})
