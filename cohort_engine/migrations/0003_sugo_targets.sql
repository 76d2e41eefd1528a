-- The Sugo addresses each project's /ant request bodies may name (docs/dialects/sugo.md): Redis
-- targets are host:port AND database (a Redis Cluster node is db 0; a Sentinel is allowed at the
-- db of the master it names), hproxy and broker targets host:port. Hosts are stored lower-cased
-- as written (IPv6 compressed, no brackets) and never resolved.
CREATE TABLE sugo_targets (
    project_id  integer NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('redis', 'hproxy', 'broker')),
    host        text NOT NULL CHECK (host <> '' AND host = lower(host)),
    port        integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    -- 0 for hproxy and broker targets, which have no database.
    db          integer NOT NULL DEFAULT 0 CHECK (db >= 0 AND (kind = 'redis' OR db = 0)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, kind, host, port, db)
);
