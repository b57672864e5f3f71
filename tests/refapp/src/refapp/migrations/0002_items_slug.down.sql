-- Down-migration of 0002 (shipped by release 1.1.0 only): back to schema 1, which release 1.0.0 reads.
-- The slugs are derived from the names, so nothing written since the upgrade is lost.
ALTER TABLE items DROP COLUMN slug;
