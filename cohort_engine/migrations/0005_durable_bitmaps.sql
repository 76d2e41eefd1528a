-- A durable copy of every computed version's bitmap (the serialized roaring bitmap), written in the
-- publishing transaction: Redis holds a cache of it, refilled from here on a miss.
ALTER TABLE cohort_versions ADD COLUMN bitmap bytea;
-- Roaring bitmaps are already compact: skip pglz's compression attempt (CPU for ~nothing), keep TOAST.
ALTER TABLE cohort_versions ALTER COLUMN bitmap SET STORAGE EXTERNAL;
