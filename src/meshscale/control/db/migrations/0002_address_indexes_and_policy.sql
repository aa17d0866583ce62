-- 0002: unique tailnet addresses; the policy table (policy.mode = database).

-- Two nodes never share a tailnet address (NULL: that family is not configured).
CREATE UNIQUE INDEX nodes_ipv4 ON nodes(ipv4) WHERE ipv4 IS NOT NULL;
CREATE UNIQUE INDEX nodes_ipv6 ON nodes(ipv6) WHERE ipv6 IS NOT NULL;

-- The policy document (policy.mode = database); at most one row, id = 1.
CREATE TABLE policies (
  id integer PRIMARY KEY CHECK (id = 1),
  data text NOT NULL,
  updated_at text NOT NULL
);
