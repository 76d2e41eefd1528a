-- Each project's daily refresh time: local HH:MM in the project's time zone, when the cohorts that
-- recompute "every early morning" fire (Ark's dynamic cohorts, ThinkingData's daily ones). 04:00 by
-- default: after late events of the previous day have arrived, before the working day, and outside
-- the 01:00-03:00 hours that DST changes skip or repeat in most zones (docs/jobs.md).
ALTER TABLE projects ADD COLUMN daily_refresh_time text NOT NULL DEFAULT '04:00'
    CHECK (daily_refresh_time ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$');

-- Another name the project answers to where a vendor API names it (Ark's appKey header); the
-- project's own name always works too. Unique, so an app key names one project.
ALTER TABLE projects ADD COLUMN app_key text UNIQUE CHECK (app_key ~ '^[A-Za-z0-9_.-]{1,64}$');

-- The cohort's cron is the project's daily refresh time (`core.manage set-refresh-time` moves it).
ALTER TABLE cohorts ADD COLUMN daily_refresh boolean NOT NULL DEFAULT false;
