-- The scheduler marks a cohort it could not schedule (and skips it) instead of failing every pass.
ALTER TABLE cohorts ADD COLUMN schedule_error text;
ALTER TABLE cohorts ADD COLUMN schedule_error_at timestamptz;

-- Versions beyond COHORTS_KEEP_VERSIONS lose their Redis bitmap; the row stays (count, status) as history.
ALTER TABLE cohort_versions ADD COLUMN expired_at timestamptz;
