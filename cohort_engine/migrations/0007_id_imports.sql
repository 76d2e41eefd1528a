-- ID imports (docs/imports.md): the content of each uploaded ID file, referenced by id from the
-- `import` leaves of cohort definitions. The file itself is not kept: its distinct IDs (and, for
-- tags, values) are, NUL-terminated and zlib-compressed, with the counts of the upload. A row is
-- written in the same transaction as the cohort that uses it, so no upload is half-written.
CREATE TABLE uploads (
    id            bigserial PRIMARY KEY,
    project_id    integer NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('cohort', 'tag')),
    rows          bigint NOT NULL CHECK (rows >= 0),
    distinct_ids  bigint NOT NULL CHECK (distinct_ids >= 0),
    duplicates    bigint NOT NULL DEFAULT 0,
    empty_values  bigint NOT NULL DEFAULT 0,
    bytes         bigint NOT NULL DEFAULT 0,
    keys          bytea NOT NULL,
    vals          bytea,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_project ON uploads (project_id, id);
-- Already compressed: skip pglz's attempt, keep TOAST.
ALTER TABLE uploads ALTER COLUMN keys SET STORAGE EXTERNAL, ALTER COLUMN vals SET STORAGE EXTERNAL;

-- Routine imports may fetch an allowlisted URL: its host:port is a per-project target of kind
-- 'import' (python -m core.manage sugo-allow PROJECT --import host:port), beside Sugo's targets.
ALTER TABLE sugo_targets DROP CONSTRAINT sugo_targets_kind_check;
ALTER TABLE sugo_targets ADD CONSTRAINT sugo_targets_kind_check
    CHECK (kind IN ('redis', 'hproxy', 'broker', 'import'));
