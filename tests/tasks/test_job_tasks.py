"""The Celery app's job tasks come from the dialect registry: every name a job may be sent under is registered."""

from __future__ import annotations

from core.queue import job_task_names


def test_the_celery_app_registers_every_job_task_name_of_the_registry(service_settings):
    from workers.celery_app import create_celery

    celery = create_celery(service_settings)
    celery.loader.import_default_modules()
    assert job_task_names(service_settings) <= set(celery.tasks)
    assert {"cohorts.sweep", "cohorts.schedule"} <= set(celery.tasks)
