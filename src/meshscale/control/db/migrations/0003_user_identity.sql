-- 0003: OIDC users are keyed by (issuer, subject), stored verbatim; IdP groups for the policy.

ALTER TABLE users ADD COLUMN oidc_issuer text;
ALTER TABLE users ADD COLUMN oidc_subject text;
-- JSON list of the IdP's group names, refreshed at every sign-in (policy: group:NAME).
ALTER TABLE users ADD COLUMN idp_groups text NOT NULL DEFAULT '[]';
CREATE UNIQUE INDEX users_oidc_identity ON users(oidc_issuer, oidc_subject)
  WHERE oidc_issuer IS NOT NULL;
