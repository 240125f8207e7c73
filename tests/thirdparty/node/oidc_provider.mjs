// panva's oidc-provider as a real third-party token endpoint, for the tests.
//
// Usage: node oidc_provider.mjs CLIENT_ID CLIENT_SECRET LIFETIME [CLIENT_ID CLIENT_SECRET]...
// Prints `PORT <n>` once it listens on 127.0.0.1, then serves until killed; the token
// endpoint is `POST /token`. Each client is registered with token_endpoint_auth_method
// client_secret_basic, which oidc-provider takes to mean "a client secret", so it accepts the
// secret in HTTP Basic (URL-decoded, `+` as a space) and in the form body alike. Only
// client_credentials is enabled; tokens are opaque, LIFETIME seconds long.
import http from 'node:http';
import Provider from 'oidc-provider';

const [, , ...args] = process.argv;
const lifetime = Number(args[2]);
const pairs = [[args[0], args[1]]];
for (let i = 3; i + 1 < args.length; i += 2) pairs.push([args[i], args[i + 1]]);

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
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
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
    },
    ttl: { ClientCredentials: lifetime },
  });
  server.on('request', provider.callback());
  process.stdout.write(`PORT ${port}\n`);
});
