"""Flask application factory: the thin HTTP layer that validates, records jobs and enqueues them."""

from __future__ import annotations

import logging

from core.settings import Settings


def create_app(config: dict | None = None):
    """Build the app; config holds CELERY (the job sender) and may hold SETTINGS (default: from the environment).

    CELERY is any object with Celery's `send_task` and a `cohort_settings` (workers.celery_app's app):
    the caller (wsgi.py, the tests) builds it, so the web package never imports the worker packages.
    """
    # Imported here so that dialect modules can import app.* without loading Flask at import time.
    from flask import Flask

    app = Flask(__name__)
    app.config.from_mapping(config or {})
    settings = app.config.get("SETTINGS") or Settings.from_env()
    app.config["SETTINGS"] = settings
    if app.config.get("CELERY") is None:
        raise ValueError("create_app needs CELERY, the job sender: create_app({'CELERY': create_celery(settings)})"
                         " as wsgi.py does")
    app.extensions["celery"] = app.config["CELERY"]

    from app import db, errors, input_rules
    from app.api import docs, health, history, imports, native, tags, webhooks
    from app.dashboard import views as dashboard
    from core import dialects

    db.init_app(app)
    errors.init_app(app)
    input_rules.init_app(app)
    app.register_blueprint(native.bp)
    app.register_blueprint(imports.bp)
    app.register_blueprint(tags.bp)
    app.register_blueprint(history.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(dashboard.bp)
    for dialect in dialects.enabled(settings):
        if dialect.blueprint:
            app.register_blueprint(dialects.load(dialect.blueprint))
    logging.getLogger(__name__).info("app created broker=%s", settings.broker_url)
    return app
