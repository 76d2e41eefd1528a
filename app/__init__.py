"""Flask application factory: the thin HTTP layer that validates, records jobs and enqueues them."""

from __future__ import annotations

import logging

from core.settings import Settings


def create_app(config: dict | None = None):
    """Build the app; config may hold SETTINGS (a Settings) and CELERY (a Celery app) for tests."""
    # Imported here so that workers and dialect modules can import app.* without loading Flask.
    from flask import Flask

    app = Flask(__name__)
    app.config.from_mapping(config or {})
    settings = app.config.get("SETTINGS") or Settings.from_env()
    app.config["SETTINGS"] = settings
    if app.config.get("CELERY") is None:
        from workers.celery_app import create_celery

        app.config["CELERY"] = create_celery(settings)
    app.extensions["celery"] = app.config["CELERY"]

    from app import db, errors, input_rules
    from app.api import docs, health, native
    from core import dialects

    db.init_app(app)
    errors.init_app(app)
    input_rules.init_app(app)
    app.register_blueprint(native.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    for dialect in dialects.enabled(settings):
        if dialect.blueprint:
            app.register_blueprint(dialects.load(dialect.blueprint))
    logging.getLogger(__name__).info("app created broker=%s", settings.broker_url)
    return app
