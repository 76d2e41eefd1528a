-- Cohorts, their computed versions (partitions), and the job table polled by clients.
CREATE TABLE cohorts (
    id                  serial PRIMARY KEY,
    project_id          integer NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    display_name        text,
    dialect             text NOT NULL DEFAULT 'native',
    request_body        jsonb,
    definition          jsonb NOT NULL,
    definition_version  integer NOT NULL DEFAULT 1,
    dynamic             boolean NOT NULL DEFAULT false,
    cron                text,
    scheduler_running   boolean NOT NULL DEFAULT false,
    last_fire_at        timestamptz,
    error_count         integer NOT NULL DEFAULT 0,
    retry_after         timestamptz,
    owner               text,
    latest_version_id   integer,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE cohort_versions (
    id                  serial PRIMARY KEY,
    cohort_id           integer NOT NULL REFERENCES cohorts(id) ON DELETE CASCADE,
    definition_version  integer NOT NULL,
    base_time           timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'computing', 'succeed', 'failed')),
    count               bigint,
    bitmap_key          text,
    error_code          text,
    error_message       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
CREATE INDEX cohort_versions_cohort ON cohort_versions (cohort_id, base_time DESC);

ALTER TABLE cohorts ADD CONSTRAINT cohorts_latest_version
    FOREIGN KEY (latest_version_id) REFERENCES cohort_versions(id) ON DELETE SET NULL;

CREATE TABLE jobs (
    id                  bigserial PRIMARY KEY,
    project_id          integer NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind                text NOT NULL,
    cohort_id           integer REFERENCES cohorts(id) ON DELETE CASCADE,
    version_id          integer REFERENCES cohort_versions(id) ON DELETE SET NULL,
    partition_key       text NOT NULL DEFAULT 'latest',
    params              jsonb NOT NULL DEFAULT '{}',
    base_time           timestamptz NOT NULL DEFAULT now(),
    status              text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'computing', 'succeed', 'failed')),
    progress            integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    error_code          text,
    error_message       text,
    result              jsonb,
    attempts            integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL DEFAULT 3,
    cancel_requested    boolean NOT NULL DEFAULT false,
    worker              text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    enqueued_at         timestamptz,
    started_at          timestamptz,
    heartbeat_at        timestamptz,
    finished_at         timestamptz,
    CHECK (status <> 'succeed' OR progress = 100),
    CHECK (status = 'succeed' OR progress < 100)
);
CREATE INDEX jobs_status ON jobs (status, created_at);
CREATE INDEX jobs_cohort ON jobs (cohort_id, created_at DESC);
-- At most one live computation per cohort partition: a refresh while one runs is coalesced.
CREATE UNIQUE INDEX jobs_one_live_per_partition ON jobs (cohort_id, partition_key)
    WHERE status IN ('new', 'computing') AND cohort_id IS NOT NULL;
-- A cron fire time produces one job, however many beat processes run.
CREATE UNIQUE INDEX jobs_one_per_fire_time ON jobs (cohort_id, base_time) WHERE kind = 'cron';
