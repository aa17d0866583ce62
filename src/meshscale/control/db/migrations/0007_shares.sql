-- 0007: node sharing across tailnets (issue #16 part 2, docs/protocol/policy.md §6).

-- Node node_id is shared with user user_id of another tailnet; a row goes with its node
-- or its user.
CREATE TABLE shares (
  node_id integer NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
  user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at text NOT NULL,
  PRIMARY KEY (node_id, user_id)
);
CREATE INDEX shares_user_id ON shares(user_id);
