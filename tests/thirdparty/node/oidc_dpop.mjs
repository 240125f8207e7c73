// panva's oidc-provider with DPoP (RFC 9449) on and server nonces required, for the tests.
//
// Usage: node oidc_dpop.mjs CLIENT_ID CLIENT_SECRET LIFETIME [ALG ...]
// Prints `PORT <n>` once it listens on 127.0.0.1, then serves until killed. The token
// endpoint is `POST /token` (client_credentials only, client_secret_basic), the metadata
// `GET /.well-known/openid-configuration` (issuer `http://127.0.0.1:<n>`, with
// dpop_signing_alg_values_supported: the ALGs given, default oidc-provider's), introspection
// `POST /token/introspection` (the same client may introspect: a resource server in the
// tests does, to learn a token's cnf.jkt). Every token request must carry a DPoP proof with
// the server's current nonce: the first one is answered 400 use_dpop_nonce with a
// DPoP-Nonce header, as RFC 9449 §8 describes. A reused proof (jti) is refused. Tokens are
// opaque, LIFETIME seconds long, and bound to the proof's key (cnf.jkt).
//
// `GET /test/log` answers the token requests seen so far as JSON lines
// ({"status", "error", "dpop": true|false}): what the tests count.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const [, , clientId, clientSecret, lifetimeArg, ...algs] = process.argv;
const lifetime = Number(lifetimeArg);

const store = new Map();
class MemoryAdapter {
  constructor(name) { this.name = name; }
  key(id) { return `${this.name}:${id}`; }
  async upsert(id, payload) { store.set(this.key(id), payload); }
  async find(id) { return store.get(this.key(id)); }
  async findByUid(uid) { return [...store.values()].find((p) => p.uid === uid); }
  async findByUserCode(code) { return [...store.values()].find((p) => p.userCode === code); }
  async consume(id) { const p = store.get(this.key(id)); if (p) p.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const [k, v] of store) if (v.grantId === grantId) store.delete(k);
  }
}

const log = [];
const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    adapter: MemoryAdapter,
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'read write',
    }],
    scopes: ['read', 'write'],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      introspection: { enabled: true, allowedPolicy: async () => true },
      dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
    },
    ...(algs.length ? { enabledJWA: { dPoPSigningAlgValues: algs } } : {}),
    ttl: { ClientCredentials: lifetime },
  });
  provider.on('grant.error', (ctx, err) => {
    log.push({ status: err.statusCode ?? 400, error: err.error ?? String(err), dpop: Boolean(ctx.get('DPoP')) });
  });
  provider.on('grant.success', (ctx) => {
    log.push({ status: 200, error: null, dpop: Boolean(ctx.get('DPoP')) });
  });
  const callback = provider.callback();
  server.on('request', (req, res) => {
    if (req.method === 'GET' && req.url === '/test/log') {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.end(log.map((e) => JSON.stringify(e)).join('\n') + (log.length ? '\n' : ''));
      return;
    }
    callback(req, res);
  });
  process.stdout.write(`PORT ${port}\n`);
});
