-- Projects and the per-project user-key dictionary (string key <-> dense uint32 id).
CREATE TABLE projects (
    id              serial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    timezone        text NOT NULL DEFAULT 'UTC',
    api_token_hash  text,
    backend         jsonb NOT NULL DEFAULT '{"kind": "embedded"}',
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The row lock on a project's counter serialises its dictionary writers; generation tells a
-- process cache that the dictionary it holds was recreated.
CREATE TABLE user_key_counters (
    project_id  integer PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    next_id     bigint NOT NULL DEFAULT 0 CHECK (next_id >= 0 AND next_id <= 4294967295),
    generation  text NOT NULL DEFAULT gen_random_uuid()::text
);

-- Keys in id order, BLOCK_SIZE (65536) per row, each UTF-8 and NUL-terminated: one row per
-- block instead of one indexed row per key keeps bulk encodes fast.
CREATE TABLE user_key_blocks (
    project_id  integer NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    block_no    integer NOT NULL CHECK (block_no >= 0),
    keys        bytea COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (project_id, block_no)
);

-- The same keys by crc32 hash bucket, with their ids as little-endian uint32, for point lookups.
CREATE TABLE user_key_buckets (
    project_id  integer NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    bucket      integer NOT NULL CHECK (bucket >= 0),
    keys        bytea COMPRESSION lz4 NOT NULL,
    ids         bytea COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (project_id, bucket)
);

INSERT INTO projects (name) VALUES ('default');
