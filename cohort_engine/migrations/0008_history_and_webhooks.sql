-- Version history (docs/api.md "History, diff, preview"): what each version row keeps beside its count.
-- job_id: the job that wrote it; started_at: when that job first started (duration = finished_at - started_at);
-- timings: per-leaf seconds and counts of the computation; previous_version_id, entered_count, left_count:
-- the users who entered and left against the version published before this one (set only when this one was
-- published; a first version has no previous one and every member entered).
ALTER TABLE cohort_versions ADD COLUMN job_id bigint REFERENCES jobs(id) ON DELETE SET NULL;
ALTER TABLE cohort_versions ADD COLUMN started_at timestamptz;
ALTER TABLE cohort_versions ADD COLUMN timings jsonb;
ALTER TABLE cohort_versions ADD COLUMN previous_version_id integer REFERENCES cohort_versions(id) ON DELETE SET NULL;
ALTER TABLE cohort_versions ADD COLUMN entered_count bigint;
ALTER TABLE cohort_versions ADD COLUMN left_count bigint;
CREATE INDEX cohort_versions_job ON cohort_versions (job_id);

-- Preview jobs (POST /api/v1/cohorts/preview) have no cohort; the sweeper deletes them once finished.
CREATE INDEX jobs_preview_finished ON jobs (finished_at) WHERE kind = 'preview';

-- Webhook addresses share the per-project outbound allowlist (python -m core.manage allow --webhook host:port).
ALTER TABLE sugo_targets DROP CONSTRAINT sugo_targets_kind_check;
ALTER TABLE sugo_targets ADD CONSTRAINT sugo_targets_kind_check
    CHECK (kind IN ('redis', 'hproxy', 'broker', 'import', 'webhook'));

-- Webhooks (docs/webhooks.md): per project, or per cohort when cohort_id is set.
CREATE TABLE webhooks (
    id          serial PRIMARY KEY,
    project_id  integer NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    cohort_id   integer REFERENCES cohorts(id) ON DELETE CASCADE,
    url         text NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    -- The HMAC-SHA256 key of the X-Cohorts-Signature header: kept as given, since signing needs it.
    secret      text NOT NULL CHECK (length(secret) BETWEEN 16 AND 200),
    events      text[] NOT NULL DEFAULT '{version.published,job.failed}'
                CHECK (events <@ ARRAY['version.published', 'job.failed'] AND cardinality(events) > 0),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_project ON webhooks (project_id);

-- One row per (event, webhook): written in the transaction that publishes the version or fails the job (an
-- outbox), sent to `webhooks.deliver` after the commit. body is the exact signed JSON (every retry sends it).
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    webhook_id      integer NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event           text NOT NULL,
    cohort_id       integer,
    version_id      integer,
    job_id          bigint,
    body            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    status_code     integer,
    error           text,
    -- [{attempt, at, status_code, error, seconds}] of every try.
    history         jsonb NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id DESC);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
