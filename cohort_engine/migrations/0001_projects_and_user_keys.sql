-- Projects and the per-project user-key dictionary (string key <-> dense uint32 id).
CREATE TABLE projects (
    id              serial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    timezone        text NOT NULL DEFAULT 'UTC',
    api_token_hash  text,
    backend         jsonb NOT NULL DEFAULT '{"kind": "embedded"}',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_key_counters (
    project_id  integer PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    next_id     bigint NOT NULL DEFAULT 0 CHECK (next_id <= 4294967296)
);

CREATE TABLE user_keys (
    project_id  integer NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    id          bigint NOT NULL CHECK (id >= 0 AND id < 4294967296),
    key         text NOT NULL,
    PRIMARY KEY (project_id, id),
    UNIQUE (project_id, key)
);

INSERT INTO projects (name) VALUES ('default');
