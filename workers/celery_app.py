"""The Celery application factory: broker, reliability settings, beat schedule."""

from __future__ import annotations

import logging

from celery import Celery, signals

from core.queue import urgent_queue
from core.settings import Settings
from tasks.jobs import register_job_tasks

MAINTENANCE_TASKS = ("cohorts.sweep", "cohorts.schedule")
# Celery's own lines about every task (beat's "Sending due task", the worker's "received" and
# "succeeded"): for the periodic maintenance tasks they are demoted to DEBUG, so a run that did
# nothing leaves no INFO line; the tasks log their own key=value line when they did something.
CELERY_TASK_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


class QuietMaintenance(logging.Filter):
    """Demote Celery's per-task records of MAINTENANCE_TASKS to DEBUG (dropped unless DEBUG is on)."""

    def __init__(self, logger: logging.Logger):
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not is_maintenance(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.logger.isEnabledFor(logging.DEBUG)


def is_maintenance(record: logging.LogRecord) -> bool:
    data = getattr(record, "data", None)  # the worker's records carry the task's name in `data`
    if isinstance(data, dict) and data.get("name") in MAINTENANCE_TASKS:
        return True
    # beat: "Scheduler: Sending due task %s (%s)" % (entry name, task name)
    return isinstance(record.args, tuple) and len(record.args) == 2 and record.args[1] in MAINTENANCE_TASKS


def quiet_maintenance_logs() -> None:
    """Install QuietMaintenance once per process on Celery's task loggers."""
    for name in CELERY_TASK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietMaintenance) for f in logger.filters):
            logger.addFilter(QuietMaintenance(logger))


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
    quiet_maintenance_logs()
    return celery


@signals.celeryd_after_setup.connect
def consume_urgent_first(sender, instance, **kwargs) -> None:
    """A worker of the compute queue also consumes its urgent queue (resent jobs), and before it."""
    queue = instance.app.cohort_settings.queue
    queues = instance.app.amqp.queues
    selected = list(queues.consume_from)
    if queue in selected and urgent_queue(queue) not in selected:
        queues.select([urgent_queue(queue), *selected])
