// A lab identity provider: the real npm `oidc-provider`, users from argv[3] (JSON), loopback.
import Provider from 'oidc-provider';
const [port, usersJson, redirect] = [process.argv[2], process.argv[3], process.argv[4]];
const users = JSON.parse(usersJson);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{ client_id: 'meshscale', client_secret: 'lab-secret', redirect_uris: [redirect],
              grant_types: ['authorization_code'], response_types: ['code'] }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'],
            profile: ['name', 'preferred_username'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  findAccount: async (ctx, id) => users[id] ? { accountId: id, claims: async () => ({ sub: id, ...users[id] }) } : undefined,
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['lab-cookie-key'] },
});
provider.listen(Number(port), '127.0.0.1', () => console.log('ready ' + issuer));
