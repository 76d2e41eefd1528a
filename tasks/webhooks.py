"""The webhook delivery task: one attempt by the core deliverer, then a retry after its backoff (docs/webhooks.md)."""

from __future__ import annotations

import logging

from celery import shared_task

from core.webhooks import DELIVER_TASK
from core.webhooks import deliver as deliver_once

log = logging.getLogger(__name__)


@shared_task(name=DELIVER_TASK, bind=True, ignore_result=True, max_retries=None)
def deliver(self, delivery_id: int) -> None:
    """Post delivery delivery_id; a failed attempt is retried after the backoff the delivery row records."""
    retry_in = deliver_once(self.app.cohort_settings, delivery_id)
    if retry_in is not None:
        # Attempts are counted in PostgreSQL (webhook_max_attempts), not by Celery's retry counter.
        raise self.retry(countdown=retry_in, max_retries=self.request.retries + 1)
