-- meshscale-control database schema: the source of truth.
--
-- Every migration in migrations/ must end exactly here; tests/control/test_db.py (SQLite)
-- and test_db_postgres.py (PostgreSQL) build a database from the migrations and one from
-- this file and compare their structure.
-- The SQL is kept portable so the PostgreSQL store runs the same files: integer ids, text
-- for keys/addresses/JSON, text timestamps in RFC 3339 UTC ("2026-01-02T03:04:05.123456Z"),
-- integer 0/1 for booleans. The only two spellings that differ, "integer PRIMARY KEY
-- AUTOINCREMENT" and "blob", are translated by db/postgres.py (to_postgres).

CREATE TABLE schema_migrations (
  version integer PRIMARY KEY,
  name text NOT NULL,
  applied_at text NOT NULL
);

-- A tailnet owns users, nodes, pre-auth keys, a policy and a DNS base domain; id 1 is
-- "default" (migration 0006). Addresses are one space per server (shared nodes never clash).
CREATE TABLE tailnets (
  id integer PRIMARY KEY AUTOINCREMENT,
  name text NOT NULL,
  -- MagicDNS base domain of this tailnet; NULL: the server's dns.base_domain.
  base_domain text,
  created_at text NOT NULL
);
CREATE UNIQUE INDEX tailnets_name ON tailnets(name);

CREATE TABLE users (
  id integer PRIMARY KEY AUTOINCREMENT,
  name text NOT NULL,
  display_name text NOT NULL DEFAULT '',
  email text NOT NULL DEFAULT '',
  -- NULL for local users; the OIDC issuer+subject for users from an identity provider.
  provider_id text,
  created_at text NOT NULL,
  -- OIDC users: issuer and subject verbatim (the identity; never the email).
  oidc_issuer text,
  oidc_subject text,
  idp_groups text NOT NULL DEFAULT '[]',
  tailnet_id integer NOT NULL DEFAULT 1 REFERENCES tailnets(id)
);
-- A local user is identified by name within its tailnet: two local users of one tailnet
-- can never share one. Users from an identity provider are identified by provider_id, so
-- the same name may exist once locally and once per provider identity.
CREATE UNIQUE INDEX users_local_name ON users(tailnet_id, name) WHERE provider_id IS NULL;
CREATE UNIQUE INDEX users_provider_id ON users(provider_id) WHERE provider_id IS NOT NULL;
CREATE UNIQUE INDEX users_oidc_identity ON users(oidc_issuer, oidc_subject)
  WHERE oidc_issuer IS NOT NULL;
CREATE INDEX users_tailnet_id ON users(tailnet_id);

CREATE TABLE pre_auth_keys (
  id integer PRIMARY KEY AUTOINCREMENT,
  user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  -- The key is "hskey-auth-<prefix>-<secret>": prefix is the public lookup handle,
  -- hash is sha256(secret). The secret is never stored.
  prefix text NOT NULL,
  hash blob NOT NULL,
  reusable integer NOT NULL DEFAULT 0,
  ephemeral integer NOT NULL DEFAULT 0,
  -- A single-use key is consumed by "UPDATE ... SET used = 1 WHERE id = ? AND used = 0":
  -- the row count decides which of two racing registrations wins.
  used integer NOT NULL DEFAULT 0,
  expiration text,
  tags text NOT NULL DEFAULT '[]',
  created_at text NOT NULL,
  tailnet_id integer NOT NULL DEFAULT 1 REFERENCES tailnets(id)
);
-- Lookup of a presented key is by prefix, so a prefix names at most one key.
CREATE UNIQUE INDEX pre_auth_keys_prefix ON pre_auth_keys(prefix);

CREATE TABLE api_keys (
  id integer PRIMARY KEY AUTOINCREMENT,
  prefix text NOT NULL,
  hash blob NOT NULL,
  expiration text,
  last_seen text,
  created_at text NOT NULL,
  -- NULL: a server admin key; else the key sees and changes only that tailnet's objects.
  tailnet_id integer REFERENCES tailnets(id) ON DELETE CASCADE
);
-- As for pre-auth keys: the prefix is the lookup handle and must name one key.
CREATE UNIQUE INDEX api_keys_prefix ON api_keys(prefix);

CREATE TABLE nodes (
  id integer PRIMARY KEY AUTOINCREMENT,
  machine_key text NOT NULL,
  node_key text NOT NULL,
  disco_key text,
  user_id integer NOT NULL REFERENCES users(id),
  hostname text NOT NULL DEFAULT '',
  given_name text NOT NULL,
  ipv4 text,
  ipv6 text,
  host_info text NOT NULL DEFAULT '{}',
  endpoints text NOT NULL DEFAULT '[]',
  last_seen text,
  expiry text,
  tags text NOT NULL DEFAULT '[]',
  approved_routes text NOT NULL DEFAULT '[]',
  register_method text NOT NULL,
  auth_key_id integer REFERENCES pre_auth_keys(id) ON DELETE SET NULL,
  ephemeral integer NOT NULL DEFAULT 0,
  created_at text NOT NULL,
  tailnet_id integer NOT NULL DEFAULT 1 REFERENCES tailnets(id)
);
-- The machine key (from the Noise handshake) identifies a device: one node per machine.
CREATE UNIQUE INDEX nodes_machine_key ON nodes(machine_key);
-- A node key is bound to exactly one node, so a lookup by node key is unambiguous
-- (docs/protocol/control.md §3.7: a NodeKey is bound 1:1 to the machine key that registered it).
CREATE UNIQUE INDEX nodes_node_key ON nodes(node_key);
-- MagicDNS names must resolve to one node of the tailnet.
CREATE UNIQUE INDEX nodes_given_name ON nodes(tailnet_id, given_name);
-- Two nodes never share a tailnet address (NULL: that family is not configured).
CREATE UNIQUE INDEX nodes_ipv4 ON nodes(ipv4) WHERE ipv4 IS NOT NULL;
CREATE UNIQUE INDEX nodes_ipv6 ON nodes(ipv6) WHERE ipv6 IS NOT NULL;
CREATE INDEX nodes_user_id ON nodes(user_id);

-- The policy document (policy.mode = database); at most one row per tailnet.
CREATE TABLE policies (
  tailnet_id integer PRIMARY KEY REFERENCES tailnets(id) ON DELETE CASCADE,
  data text NOT NULL,
  updated_at text NOT NULL
);

-- Every accepted policy text, append-only; id is the version number.
CREATE TABLE policy_versions (
  id integer PRIMARY KEY AUTOINCREMENT,
  data text NOT NULL,
  created_at text NOT NULL,
  source text NOT NULL DEFAULT '',
  tailnet_id integer NOT NULL DEFAULT 1 REFERENCES tailnets(id) ON DELETE CASCADE
);

-- Node node_id is shared with user user_id of another tailnet (node sharing,
-- docs/protocol/policy.md §6); a row goes with its node or its user.
CREATE TABLE shares (
  node_id integer NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
  user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at text NOT NULL,
  PRIMARY KEY (node_id, user_id)
);
CREATE INDEX shares_user_id ON shares(user_id);

-- The audit log of admin changes (REST API, admin CLI, console): append-only.
CREATE TABLE audit_log (
  id integer PRIMARY KEY AUTOINCREMENT,
  at text NOT NULL,
  -- who: "apikey:<prefix>", "unix:uid=<n>", "console:apikey:<prefix>", "console:oidc:<email>"
  actor text NOT NULL,
  -- what: the /api/v1 operation id (setTags, createPreAuthKey, setPolicy, ...)
  action text NOT NULL,
  -- on what: the path parameters ("nodeId=3"), empty when none
  target text NOT NULL DEFAULT '',
  -- the request's fields, JSON (never a secret: secrets are only ever in responses)
  detail text NOT NULL DEFAULT '{}',
  -- from where: the client's address, or "unix"
  source text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log(at);
