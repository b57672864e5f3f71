-- Schema + data migration: add items.slug and backfill it from name.
-- The default keeps release 1.0.0 (which does not know the column) able to
-- insert rows after a rollback.
ALTER TABLE items ADD COLUMN slug text;
UPDATE items SET slug = lower(trim(BOTH '-' FROM regexp_replace(name, '[^A-Za-z0-9]+', '-', 'g')));
ALTER TABLE items ALTER COLUMN slug SET DEFAULT '';
ALTER TABLE items ALTER COLUMN slug SET NOT NULL;
