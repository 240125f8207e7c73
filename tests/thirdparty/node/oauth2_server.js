'use strict';
// @node-oauth/oauth2-server as a real third-party token endpoint, for the tests.
//
// Usage: node oauth2_server.js CLIENT_ID CLIENT_SECRET LIFETIME [CLIENT_ID CLIENT_SECRET]...
// Prints `PORT <n>` once it listens on 127.0.0.1, then serves `POST /token` until killed.
// The library does the OAuth: it parses HTTP Basic (with the `basic-auth` package, which
// does not URL-decode), refuses a body that is not application/x-www-form-urlencoded, and
// refuses an id or secret outside RFC 6749's VSCHAR (printable ASCII). The model is the
// smallest in-memory one the client_credentials grant needs.
const http = require('node:http');
const crypto = require('node:crypto');
const OAuth2Server = require('@node-oauth/oauth2-server');

const [, , ...args] = process.argv;
const lifetime = Number(args[2]);
const clients = new Map([[args[0], args[1]]]);
for (let i = 3; i + 1 < args.length; i += 2) clients.set(args[i], args[i + 1]);

function same(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

const model = {
  async getClient(clientId, clientSecret) {
    const secret = clients.get(clientId);
    if (secret === undefined || !same(secret, clientSecret)) return null;
    return { id: clientId, grants: ['client_credentials'], accessTokenLifetime: lifetime };
  },
  async getUserFromClient(client) {
    return { id: `service:${client.id}` };
  },
  async saveToken(token, client, user) {
    return { ...token, client, user };
  },
  async getAccessToken() {
    return null; // nothing authenticates with the tokens here
  },
};

const oauth = new OAuth2Server({ model, accessTokenLifetime: lifetime });

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', async () => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (req.method !== 'POST' || url.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    const raw = Buffer.concat(chunks).toString('utf8');
    let body = {};
    if ((req.headers['content-type'] || '').startsWith('application/json')) {
      try { body = JSON.parse(raw); } catch { body = {}; }
    } else {
      body = Object.fromEntries(new URLSearchParams(raw));
    }
    const request = new OAuth2Server.Request({
      method: req.method, headers: req.headers, query: Object.fromEntries(url.searchParams), body,
    });
    const response = new OAuth2Server.Response();
    let status = 200;
    let answer;
    try {
      await oauth.token(request, response);
      answer = response.body;
    } catch (e) {
      // As the library's own express adapter (express-oauth-server) answers an error.
      status = e.code || 500;
      answer = { error: e.name, error_description: e.message };
    }
    const headers = { ...response.headers, 'content-type': 'application/json', 'cache-control': 'no-store' };
    res.writeHead(status, headers).end(JSON.stringify(answer));
  });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
