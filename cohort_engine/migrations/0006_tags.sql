-- Tags share the cohorts table (one id space, as ThinkingData's clusterId and Sensors address cohorts
-- and tags alike) and with it the job, version, cron and retention machinery (docs/tags.md).
ALTER TABLE cohorts ADD COLUMN entity text NOT NULL DEFAULT 'cohort' CHECK (entity IN ('cohort', 'tag'));
-- The value type of a tag, fixed by its definition (docs/definition.md "Tags"); none for a cohort.
ALTER TABLE cohorts ADD COLUMN value_type text CHECK (value_type IN ('string', 'number', 'time', 'boolean'));
ALTER TABLE cohorts ADD CONSTRAINT cohorts_tag_typed CHECK ((entity = 'tag') = (value_type IS NOT NULL));
-- A tag version's payload (the uid-indexed value column, cohort_engine/tag_column.py) is kept in the
-- version's `bitmap` column like a cohort's bitmap (same durability, same retention); tag_meta says
-- where its parts are and holds the distribution computed when it was published.
ALTER TABLE cohort_versions ADD COLUMN tag_meta jsonb;
