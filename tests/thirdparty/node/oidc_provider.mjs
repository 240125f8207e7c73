// panva's oidc-provider as a real third-party token endpoint, for the tests.
//
// Usage: node oidc_provider.mjs CLIENT_ID CLIENT_SECRET LIFETIME [CLIENT_ID CLIENT_SECRET]...
// Prints `PORT <n>` once it listens on 127.0.0.1, then serves until killed; the token
// endpoint is `POST /token`, the metadata `GET /.well-known/openid-configuration` (issuer
// `http://127.0.0.1:<n>`). Each client given on the command line is registered with
// token_endpoint_auth_method client_secret_basic, which oidc-provider takes to mean "a
// client secret", so it accepts the secret in HTTP Basic (URL-decoded, `+` as a space) and
// in the form body alike. Only client_credentials is enabled; tokens are opaque, LIFETIME
// seconds long.
//
// Key-based clients (tests/test_keyauth.py) are registered, and registered again with new
// keys, while it runs: `PUT /test/clients/<client_id>` with the client's metadata as JSON,
// e.g. {"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [<public JWK>]}}
// or {"token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=x"}
// (grant_types, response_types and redirect_uris are filled in). They live in this
// process's memory adapter, which oidc-provider looks clients up in after the static ones.
//
// tls_client_auth (RFC 8705) needs the client certificate, which a TLS-terminating proxy
// in front of this plain-HTTP server passes on, as such proxies do: `X-Client-Cert` (the
// PEM, URL-encoded) and `X-Client-Verify: SUCCESS` once the proxy has verified it
// (tests/thirdparty/tls_front.py).
import http from 'node:http';
import { X509Certificate } from 'node:crypto';
import Provider from 'oidc-provider';

const [, , ...args] = process.argv;
const lifetime = Number(args[2]);
const pairs = [[args[0], args[1]]];
for (let i = 3; i + 1 < args.length; i += 2) pairs.push([args[i], args[i + 1]]);

// Everything oidc-provider stores (tokens, replay detection, registered clients): memory.
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

function subjectDn(pem) {
  // Node gives "CN=a\nO=b"; RFC 4514 order is the reverse, comma-separated.
  return new X509Certificate(pem).subject.split('\n').reverse().join(',');
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    adapter: MemoryAdapter,
    clients: pairs.map(([clientId, clientSecret]) => ({
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'read write',
    })),
    scopes: ['read', 'write'],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'none'],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      mTLS: {
        enabled: true,
        tlsClientAuth: true,
        getCertificate(ctx) {
          const pem = ctx.get('x-client-cert');
          return pem ? decodeURIComponent(pem) : undefined;
        },
        certificateAuthorized(ctx) { return ctx.get('x-client-verify') === 'SUCCESS'; },
        certificateSubjectMatches(ctx, property, expected) {
          if (property !== 'tls_client_auth_subject_dn') return false;
          return subjectDn(decodeURIComponent(ctx.get('x-client-cert'))) === expected;
        },
      },
    },
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS256', 'RS384', 'PS256', 'ES256', 'ES384', 'ES512', 'EdDSA'],
    },
    ttl: { ClientCredentials: lifetime },
  });
  const callback = provider.callback();
  const clients = new MemoryAdapter('Client');
  server.on('request', (req, res) => {
    const match = req.method === 'PUT' && req.url.match(/^\/test\/clients\/([^/?]+)$/);
    if (!match) { callback(req, res); return; }
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', async () => {
      const clientId = decodeURIComponent(match[1]);
      const metadata = {
        client_id: clientId,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: 'read write',
        ...JSON.parse(body),
      };
      await clients.upsert(clientId, metadata);
      res.writeHead(204).end();
    });
  });
  process.stdout.write(`PORT ${port}\n`);
});
