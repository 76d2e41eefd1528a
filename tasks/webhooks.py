"""The webhook delivery task: one attempt by the core deliverer, then a retry after its backoff (docs/webhooks.md)."""

from __future__ import annotations

import logging

from celery import shared_task

from core.webhooks import DELIVER_TASK
from core.webhooks import deliver as deliver_once
from tasks.jobs import TRANSIENT

log = logging.getLogger(__name__)


@shared_task(name=DELIVER_TASK, bind=True, ignore_result=True, max_retries=None)
def deliver(self, delivery_id: int) -> None:
    """Post delivery delivery_id; a failed attempt is retried after the backoff the delivery row records."""
    settings = self.app.cohort_settings
    try:
        retry_in = deliver_once(settings, delivery_id)
    except TRANSIENT as exc:
        # PostgreSQL unreachable: the attempt could not be recorded, so it does not count (at least once).
        log.warning("delivery=%s transient error, retrying: %s", delivery_id, exc)
        raise self.retry(countdown=settings.retry_delay, max_retries=self.request.retries + 1) from None
    if retry_in is not None:
        # Attempts are counted in PostgreSQL (webhook_max_attempts), not by Celery's retry counter.
        raise self.retry(countdown=retry_in, max_retries=self.request.retries + 1)
