// A lab identity provider: the real npm `oidc-provider`, users from argv[3] (JSON). Issuer
// http://HOST:PORT, HOST = argv[5] (listening on all addresses, in a lab namespace) or loopback.
import Provider from 'oidc-provider';
const [port, usersJson, redirect, host] = process.argv.slice(2);
const users = JSON.parse(usersJson);
const issuer = `http://${host || '127.0.0.1'}:${port}`;
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
provider.listen(Number(port), host ? '0.0.0.0' : '127.0.0.1', () => console.log('ready ' + issuer));
