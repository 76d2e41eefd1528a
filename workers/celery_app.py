"""The Celery application factory: broker, reliability settings, beat schedule."""

from __future__ import annotations

from celery import Celery, signals

from core.queue import urgent_queue
from core.settings import Settings
from tasks.jobs import register_job_tasks

MAINTENANCE_TASKS = ("cohorts.sweep", "cohorts.schedule")


def create_celery(settings: Settings | None = None) -> Celery:
    """A configured Celery app; tasks are found in the `tasks` package, dialects' job task names in the registry."""
    settings = settings or Settings.from_env()
    celery = Celery("cohorts", broker=settings.broker_url, include=["tasks.jobs", "tasks.maintenance", "tasks.webhooks"])
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        # "priority": BRPOP keeps the order the worker lists its queues in (urgent first, see below);
        # the default round robin would let a backlog job in between two resends.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout,
                                  "queue_order_strategy": "priority"},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=True,
        # No task-sent events: they double the cost of every enqueue, and Flower lists tasks from the
        # workers' received/started/succeeded events anyway.
        task_send_sent_event=False,
        task_default_queue=settings.queue,
        # By name, so beat and the web app route them without importing the tasks.
        task_routes={name: {"queue": settings.maintenance_queue} for name in MAINTENANCE_TASKS},
        worker_hijack_root_logger=False,
        beat_schedule={
            "sweep-jobs": {"task": "cohorts.sweep", "schedule": settings.sweep_interval},
            "schedule-dynamic-cohorts": {"task": "cohorts.schedule", "schedule": settings.schedule_interval},
        },
    )
    celery.cohort_settings = settings
    register_job_tasks(celery, settings)
    return celery


@signals.celeryd_after_setup.connect
def consume_urgent_first(sender, instance, **kwargs) -> None:
    """A worker of the compute queue also consumes its urgent queue (resent jobs), and before it."""
    queue = instance.app.cohort_settings.queue
    queues = instance.app.amqp.queues
    selected = list(queues.consume_from)
    if queue in selected and urgent_queue(queue) not in selected:
        queues.select([urgent_queue(queue), *selected])
