-- 0004: every accepted policy version (policy history and rollback).

-- One row per accepted policy text, append-only; id is the version number.
CREATE TABLE policy_versions (
  id integer PRIMARY KEY AUTOINCREMENT,
  data text NOT NULL,
  created_at text NOT NULL,
  source text NOT NULL DEFAULT ''
);
-- The policy in force before this migration becomes version 1.
INSERT INTO policy_versions (data, created_at, source)
  SELECT data, updated_at, 'migrated' FROM policies;
