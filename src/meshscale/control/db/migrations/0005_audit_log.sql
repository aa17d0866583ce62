-- 0005: the audit log of admin changes (REST API, admin CLI, console): append-only.

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
