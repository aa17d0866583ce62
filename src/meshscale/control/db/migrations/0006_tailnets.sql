-- 0006: several tailnets on one server (issue #16). The existing single tailnet becomes
-- tailnet 1, "default": every user, node, pre-auth key and the policy move into it.
-- (SQLite runs migrations with foreign_keys off, so a REFERENCES column with a default
-- can be added; the runner checks every reference before it commits: sqlite.py migrate.)

CREATE TABLE tailnets (
  id integer PRIMARY KEY AUTOINCREMENT,
  name text NOT NULL,
  -- MagicDNS base domain of this tailnet; NULL: the server's dns.base_domain.
  base_domain text,
  created_at text NOT NULL
);
CREATE UNIQUE INDEX tailnets_name ON tailnets(name);
-- The first row of a new table: id 1 in both dialects. Created when the database was.
INSERT INTO tailnets (name, created_at) SELECT 'default', MIN(applied_at) FROM schema_migrations;

-- A user, node and pre-auth key belong to one tailnet (a node's and a key's is their
-- user's; State keeps them equal).
ALTER TABLE users ADD COLUMN tailnet_id integer NOT NULL DEFAULT 1 REFERENCES tailnets(id);
ALTER TABLE nodes ADD COLUMN tailnet_id integer NOT NULL DEFAULT 1 REFERENCES tailnets(id);
ALTER TABLE pre_auth_keys ADD COLUMN tailnet_id integer NOT NULL DEFAULT 1
  REFERENCES tailnets(id);
-- NULL: a server admin key; else the key sees and changes only that tailnet's objects.
ALTER TABLE api_keys ADD COLUMN tailnet_id integer REFERENCES tailnets(id) ON DELETE CASCADE;

-- Names are unique per tailnet: a local user name, a MagicDNS name.
DROP INDEX users_local_name;
CREATE UNIQUE INDEX users_local_name ON users(tailnet_id, name) WHERE provider_id IS NULL;
DROP INDEX nodes_given_name;
CREATE UNIQUE INDEX nodes_given_name ON nodes(tailnet_id, given_name);
CREATE INDEX users_tailnet_id ON users(tailnet_id);

-- One policy per tailnet (the single row id = 1 becomes tailnet 1's), and every version
-- of the history belongs to one tailnet.
CREATE TABLE policies_0006 (data text NOT NULL, updated_at text NOT NULL);
INSERT INTO policies_0006 (data, updated_at) SELECT data, updated_at FROM policies;
DROP TABLE policies;
CREATE TABLE policies (
  tailnet_id integer PRIMARY KEY REFERENCES tailnets(id) ON DELETE CASCADE,
  data text NOT NULL,
  updated_at text NOT NULL
);
INSERT INTO policies (tailnet_id, data, updated_at) SELECT 1, data, updated_at FROM policies_0006;
DROP TABLE policies_0006;
ALTER TABLE policy_versions ADD COLUMN tailnet_id integer NOT NULL DEFAULT 1
  REFERENCES tailnets(id) ON DELETE CASCADE;
