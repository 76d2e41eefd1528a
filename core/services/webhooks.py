"""The webhook commands of the native API: register, change, delete, with the project's outbound allowlist."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from core import webhooks as hooks
from core.data import cohorts, webhooks
from core.errors import Invalid, NotFound


@dataclass
class WebhookService:
    """The webhooks of one project on conn; every write is checked, then committed."""

    conn: Any
    project: dict
    settings: Any

    def get(self, webhook_id: int, *, lock: bool = False) -> dict:
        hook = webhooks.get(self.conn, self.project["id"], webhook_id, lock=lock) if webhook_id <= 2**31 - 1 else None
        if hook is None:
            raise NotFound(f"webhook {webhook_id} not found")
        return hook

    def _check(self, fields: dict) -> None:
        errors = {}
        if "url" in fields:
            problem = hooks.address_error(self.conn, self.settings, self.project["id"], fields["url"])
            if problem:
                errors["url"] = [problem]
        if fields.get("cohort_id") is not None and cohorts.get(self.conn, self.project["id"],
                                                               fields["cohort_id"]) is None:
            errors["cohort_id"] = [f"no cohort {fields['cohort_id']} in this project"]
        if errors:
            raise Invalid(errors)

    def create(self, url: str, *, secret: str | None, cohort_id, events, active: bool) -> dict:
        """Register a webhook (committed); its secret is generated when none is given."""
        self._check({"url": url, "cohort_id": cohort_id})
        hook = webhooks.insert(self.conn, self.project["id"], url, secret or secrets.token_hex(32),
                               cohort_id=cohort_id, events=events, active=active)
        self.conn.commit()
        return hook

    def update(self, webhook_id: int, fields: dict) -> dict:
        self.get(webhook_id, lock=True)
        self._check(fields)
        hook = webhooks.update(self.conn, webhook_id, **fields)
        self.conn.commit()
        return hook

    def delete(self, webhook_id: int) -> None:
        """Delete a webhook and its delivery records (a delivery on its way then finds nothing to send)."""
        self.get(webhook_id)
        webhooks.delete(self.conn, self.project["id"], webhook_id)
        self.conn.commit()
