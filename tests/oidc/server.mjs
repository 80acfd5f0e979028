// oidc-provider (an OpenID Certified OAuth 2.0 / OIDC server) on loopback for tokensync's tests.
//
// Short token lifetimes (ACCESS_TTL seconds) and refresh-token rotation with reuse detection
// (a rotated refresh token presented again revokes the whole grant). Clients:
//   tokensync-post   client_secret_post: client_credentials, authorization_code, refresh_token
//   tokensync-basic  client_secret_basic: client_credentials
// GET /test/code plays the person in the browser: it walks the authorization flow (login and
// consent) and answers {"code": ...} for tokensync-post and REDIRECT_URI.
//
// Prints the base URL on its first stdout line, then serves until killed.
import http from 'node:http';
import Provider from 'oidc-provider';

const ACCESS_TTL = Number(process.env.ACCESS_TTL || 6);
export const CLIENT_SECRET = 'oidc-secret-&=+%/';
const REDIRECT_URI = 'https://tokensync.example/callback';
const API = 'urn:tokensync:api';

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(base, {
  clients: [
    {
      client_id: 'tokensync-post',
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [REDIRECT_URI],
      token_endpoint_auth_method: 'client_secret_post',
      scope: 'openid offline_access api:read',
    },
    {
      client_id: 'tokensync-basic',
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'api:read',
    },
  ],
  scopes: ['openid', 'offline_access', 'api:read'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // client credentials are for the API; the code flow's token is for userinfo
      defaultResource: (ctx) => (ctx.oidc.params?.grant_type === 'client_credentials' ? API : undefined),
      getResourceServerInfo: () => ({ scope: 'api:read', accessTokenTTL: ACCESS_TTL, accessTokenFormat: 'opaque' }),
      useGrantedResource: () => true,
    },
  },
  ttl: {
    AccessToken: ACCESS_TTL,
    ClientCredentials: ACCESS_TTL,
    AuthorizationCode: 60,
    RefreshToken: 3600,
    Grant: 3600,
    Session: 3600,
    Interaction: 600,
    IdToken: ACCESS_TTL,
  },
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

// The "person": finish login and consent as soon as they are asked for.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    return provider.interactionFinished(req, res, { login: { accountId: 'pilot' } });
  }
  const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  const missing = details.prompt.details.missingOIDCScope;
  if (missing) grant.addOIDCScope(missing.join(' '));
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId } });
}

// A browser with a cookie jar, following redirects until the code reaches the redirect URI.
async function authorizationCode() {
  const jar = new Map();
  const params = new URLSearchParams({
    client_id: 'tokensync-post', response_type: 'code', redirect_uri: REDIRECT_URI,
    scope: 'openid offline_access', prompt: 'consent',
  });
  let url = `${base}/auth?${params}`;
  for (let i = 0; i < 10; i += 1) {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const r = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const at = pair.indexOf('=');
      jar.set(pair.slice(0, at), pair.slice(at + 1));
    }
    const location = r.headers.get('location');
    if (!location) throw new Error(`no redirect from ${url}: ${r.status} ${await r.text()}`);
    if (location.startsWith(REDIRECT_URI)) {
      const code = new URL(location).searchParams.get('code');
      if (!code) throw new Error(`no code: ${location}`);
      return code;
    }
    url = new URL(location, base).href;
  }
  throw new Error('too many redirects');
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  try {
    if (req.url.startsWith('/interaction/')) return await interaction(req, res);
    if (req.url === '/test/code') {
      const code = await authorizationCode();
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ code }));
    }
    return callback(req, res);
  } catch (err) {
    console.error(err);
    res.writeHead(500);
    return res.end(String(err));
  }
});
console.log(base);
