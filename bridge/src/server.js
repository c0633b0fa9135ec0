// The bridge's HTTP API (node:http, no framework): authentication, request validation,
// idempotent sends (an attachment is fetched through the media store, media.js), session
// commands, and the simulator's admin routes (including a fake incoming reply and the ways it
// can be told to misbehave).
import http from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import {
  E164_PATTERN,
  MAX_BODY_CHARS,
  MAX_IDEMPOTENCY_KEY_CHARS,
  MAX_MEDIA_BYTES,
  MAX_MEDIA_NAME_CHARS,
  MAX_MEDIA_URL_CHARS,
  MAX_MESSAGE_ID_CHARS,
  MAX_REQUEST_BYTES,
  MEDIA_KINDS,
  SHA256_PATTERN,
  STATUS,
  WA_STATES,
} from './constants.js';
import { BridgeError } from './errors.js';
import { OPERATOR_PAGE } from './operator-page.js';

export const TOKEN_COOKIE = 'bridge_token';

/**
 * @param {object} deps
 * @param {{token: string, driver: string, numberId: string|null}} deps.config
 * @param {import('./drivers/base.js').BaseDriver} deps.driver
 * @param {import('./idempotency.js').IdempotencyStore} deps.store
 * @param {import('./media.js').MediaStore} deps.media
 * @param {(line: string) => void} [deps.log]
 * @returns {{httpServer: http.Server, listen: (port: number, host?: string) => Promise<string>, close: () => Promise<void>}}
 */
export function createServer({ config, driver, store, media, log = () => {} }) {
  const routes = buildRoutes({ config, driver, store, media });

  const httpServer = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://bridge.invalid');
      const byMethod = routes[url.pathname];
      const route = byMethod?.[req.method];
      if (route?.public) return await route.handle(req, res);
      // Authentication comes before 404, so an anonymous caller learns nothing about routes.
      if (!isAuthorized(req, config.token, { allowCookie: route?.cookieAuth })) {
        throw new BridgeError('unauthorized', 'missing or wrong bearer token');
      }
      if (!byMethod) throw new BridgeError('not_found', `no route ${url.pathname}`);
      if (!route) throw new BridgeError('method_not_allowed', `${req.method} is not allowed on ${url.pathname}`);
      await route.handle(req, res);
    } catch (err) {
      if (!(err instanceof BridgeError)) log(`bridge: ${req.method} ${req.url} failed: ${err.stack ?? err}`);
      const error = err instanceof BridgeError ? err : new BridgeError('send_failed', 'internal bridge error');
      // After a 413 the rest of the body is unread; closing beats reading megabytes to discard.
      if (error.code === 'payload_too_large') res.setHeader('Connection', 'close');
      if (!res.headersSent) sendJson(res, error.httpStatus, error.toJSON());
      else res.destroy();
    }
  });

  return {
    httpServer,
    listen(port, host = '127.0.0.1') {
      return new Promise((resolve, reject) => {
        httpServer.once('error', reject);
        httpServer.listen(port, host, () => {
          httpServer.off('error', reject);
          const { address, port: bound } = httpServer.address();
          resolve(`http://${address.includes(':') ? `[${address}]` : address}:${bound}`);
        });
      });
    },
    close() {
      return new Promise((resolve) => {
        if (!httpServer.listening) return resolve();
        httpServer.close(() => resolve());
        httpServer.closeAllConnections(); // keep-alive sockets would hold close() open
      });
    },
  };
}

function buildRoutes({ config, driver, store, media }) {
  const simulatorOnly = config.driver === 'simulator';
  const routes = {
    '/': {
      GET: {
        public: true, // the page holds no data; it asks for the token itself
        handle: (req, res) => {
          res.writeHead(200, {
            'Content-Type': 'text/html; charset=utf-8',
            'Cache-Control': 'no-store',
            // Everything is inline; nothing may load from anywhere else.
            'Content-Security-Policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
            'X-Content-Type-Options': 'nosniff',
          });
          res.end(OPERATOR_PAGE);
        },
      },
    },
    '/health': {
      GET: { public: true, handle: (req, res) => sendJson(res, 200, { ok: true, driver: config.driver, status: driver.status().status }) },
    },
    '/status': {
      GET: {
        cookieAuth: true,
        handle: (req, res) => sendJson(res, 200, { ...driver.status(), number_id: config.numberId ?? null, rss_bytes: driver.rssBytes() }),
      },
    },
    '/send': {
      POST: {
        handle: async (req, res) => {
          const send = validateSend(await readJson(req));
          const { to, body, idempotency_key } = send;
          // Inside store.run: a replayed key fetches nothing, and a failed fetch leaves the key retryable.
          const { result, replayed } = await store.run(idempotency_key, () =>
            send.media
              ? media.use(send.media, (file) => driver.send(to, body, { idempotency_key, media: file }))
              : driver.send(to, body, { idempotency_key, media: null }),
          );
          sendJson(res, 200, { whatsapp_message_id: result.whatsapp_message_id, replayed });
        },
      },
    },
  };
  // Session commands; each answers the status after it. /logout and /restart are their older names.
  const commands = {
    start: () => driver.startSession(),
    stop: () => driver.stopSession(),
    restart: () => driver.restartSession(),
    logout: () => driver.logoutSession(),
  };
  for (const [name, run] of Object.entries(commands)) {
    const route = { POST: { handle: async (req, res) => sendJson(res, 200, { status: await run() }) } };
    routes[`/session/${name}`] = route;
    if (name === 'restart' || name === 'logout') routes[`/${name}`] = route;
  }
  if (!simulatorOnly) return routes;

  routes['/simulator/outbox'] = {
    GET: { handle: (req, res) => sendJson(res, 200, { messages: driver.outbox }) },
    DELETE: {
      handle: (req, res) => {
        driver.outbox.length = 0;
        sendJson(res, 200, { messages: [] });
      },
    },
  };
  routes['/simulator/state'] = {
    POST: {
      handle: async (req, res) => {
        const { status, reason, raw_state } = await readJson(req);
        if (raw_state !== undefined) {
          // whatsapp-web.js's own state; the simulator derives our status from it (rules in simulator.js).
          if (status !== undefined) throw new BridgeError('bad_request', 'give status or raw_state, not both', 'raw_state');
          if (!Object.values(WA_STATES).includes(raw_state)) {
            throw new BridgeError('bad_request', `raw_state must be one of ${Object.values(WA_STATES).join(', ')}`, 'raw_state');
          }
          await driver.forceRawState(raw_state);
          return sendJson(res, 200, driver.status());
        }
        if (![STATUS.CONNECTED, STATUS.DISCONNECTED, STATUS.QR_NEEDED].includes(status)) {
          throw new BridgeError('bad_request', 'status must be connected, disconnected or qr_needed', 'status');
        }
        if (reason !== undefined && reason !== null && typeof reason !== 'string') {
          throw new BridgeError('bad_request', 'reason must be a string', 'reason');
        }
        await driver.forceStatus(status, reason ?? null);
        sendJson(res, 200, driver.status());
      },
    },
  };
  routes['/simulator/inbound'] = {
    POST: {
      handle: async (req, res) => {
        sendJson(res, 200, driver.injectInbound(validateInbound(await readJson(req))));
      },
    },
  };
  routes['/simulator/config'] = {
    POST: {
      handle: async (req, res) => {
        const input = await readJson(req);
        const changes = {};
        for (const field of ['latency_ms', 'ack_delay_ms', 'fail_next', 'memory_growth_mb_per_min']) {
          if (input[field] === undefined) continue;
          if (!Number.isInteger(input[field]) || input[field] < 0 || input[field] > 600_000) {
            throw new BridgeError('bad_request', `${field} must be an integer from 0 to 600000`, field);
          }
          changes[field] = input[field];
        }
        for (const field of ['pending_acks', 'restrict_new_chats']) {
          if (input[field] === undefined) continue;
          if (typeof input[field] !== 'boolean') throw new BridgeError('bad_request', `${field} must be true or false`, field);
          changes[field] = input[field];
        }
        sendJson(res, 200, driver.configure(changes));
      },
    },
  };
  return routes;
}

/**
 * Validate a POST /send body {to, body, idempotency_key, media?}; throws BridgeError naming the
 * field at fault (`media.sha256`...). With `media`, `body` is its caption and may be empty.
 * @returns {{to: string, body: string, idempotency_key: string, media: import('./media.js').MediaRef|null}}
 */
export function validateSend(input) {
  const { to, body, idempotency_key } = input;
  if (typeof to !== 'string' || !E164_PATTERN.test(to)) {
    throw new BridgeError('invalid_number', 'to must be an E.164 number such as +56912345678', 'to');
  }
  const media = input.media === undefined || input.media === null ? null : validateMedia(input.media);
  const minBody = media ? 0 : 1;
  if (typeof body !== 'string' || body.length < minBody || body.length > MAX_BODY_CHARS) {
    const what = media ? 'a string (the caption, may be empty)' : 'a non-empty string';
    throw new BridgeError('bad_request', `body must be ${what} of at most ${MAX_BODY_CHARS} characters`, 'body');
  }
  if (typeof idempotency_key !== 'string' || idempotency_key.length === 0 || idempotency_key.length > MAX_IDEMPOTENCY_KEY_CHARS) {
    throw new BridgeError('bad_request', `idempotency_key must be a string of 1 to ${MAX_IDEMPOTENCY_KEY_CHARS} characters`, 'idempotency_key');
  }
  return { to, body, idempotency_key, media };
}

// type/subtype, optionally with parameters ("audio/ogg; codecs=opus").
const MIME_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]*\/[a-z0-9][a-z0-9!#$&^_.+-]*(\s*;\s*[a-z0-9!#$&^_.+-]+=("[^"]*"|[a-z0-9!#$&^_.+-]+))*$/i;
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

/** The `media` of POST /send: where to fetch the one attachment and what it must be. */
function validateMedia(media) {
  const bad = (field, message) => new BridgeError('bad_request', message, `media.${field}`);
  if (typeof media !== 'object' || Array.isArray(media)) {
    throw new BridgeError('bad_request', 'media must be an object {url, sha256, size, mime_type, filename, kind}', 'media');
  }
  const { url, sha256, size, mime_type, filename, kind } = media;
  if (typeof url !== 'string' || url.length > MAX_MEDIA_URL_CHARS || !isFetchableUrl(url)) {
    throw bad('url', `url must be an http:// or https:// URL (without user:password@) of at most ${MAX_MEDIA_URL_CHARS} characters`);
  }
  if (typeof sha256 !== 'string' || !SHA256_PATTERN.test(sha256)) {
    throw bad('sha256', 'sha256 must be the SHA-256 of the file as 64 lowercase hex digits');
  }
  if (!Number.isInteger(size) || size < 1 || size > MAX_MEDIA_BYTES) {
    throw bad('size', `size must be the file's size in bytes, an integer from 1 to ${MAX_MEDIA_BYTES}`);
  }
  if (typeof mime_type !== 'string' || mime_type.length > MAX_MEDIA_NAME_CHARS || !MIME_TYPE.test(mime_type)) {
    throw bad('mime_type', `mime_type must be a MIME type such as image/jpeg, at most ${MAX_MEDIA_NAME_CHARS} characters`);
  }
  if (typeof filename !== 'string' || filename.length === 0 || filename.length > MAX_MEDIA_NAME_CHARS ||
      /[\\/]/.test(filename) || CONTROL_CHARS.test(filename) || filename === '.' || filename === '..') {
    throw bad('filename', `filename must be a file name of 1 to ${MAX_MEDIA_NAME_CHARS} characters, without / or \\ or control characters`);
  }
  if (!MEDIA_KINDS.includes(kind)) {
    throw bad('kind', `kind must be one of ${MEDIA_KINDS.join(', ')}`);
  }
  return { url, sha256, size, mime_type, filename, kind };
}

function isFetchableUrl(value) {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && Boolean(url.hostname) && !url.username && !url.password;
  } catch {
    return false;
  }
}

const ISO_DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;

/**
 * Validate a POST /simulator/inbound body {from, text, whatsapp_message_id?, at?};
 * throws a 400 BridgeError naming the field at fault. `at` comes back normalized to UTC ISO.
 */
export function validateInbound(input) {
  const { from, text, whatsapp_message_id, at } = input;
  if (typeof from !== 'string' || !E164_PATTERN.test(from)) {
    throw new BridgeError('bad_request', 'from must be an E.164 number such as +56912345678', 'from');
  }
  if (typeof text !== 'string' || !text.trim()) {
    throw new BridgeError('bad_request', 'text must be a non-empty string', 'text');
  }
  if (whatsapp_message_id !== undefined && whatsapp_message_id !== null &&
      (typeof whatsapp_message_id !== 'string' || whatsapp_message_id.length === 0 || whatsapp_message_id.length > MAX_MESSAGE_ID_CHARS)) {
    throw new BridgeError('bad_request', `whatsapp_message_id must be a string of 1 to ${MAX_MESSAGE_ID_CHARS} characters`, 'whatsapp_message_id');
  }
  let when = null;
  if (at !== undefined && at !== null) {
    // Only full ISO 8601 date-times: Date.parse alone would take "1" or "March 3".
    const ms = typeof at === 'string' && ISO_DATE_TIME.test(at) ? Date.parse(at) : NaN;
    if (Number.isNaN(ms)) throw new BridgeError('bad_request', 'at must be an ISO 8601 date-time such as 2025-01-27T14:30:00Z', 'at');
    when = new Date(ms).toISOString();
  }
  return { phone: from, text, whatsapp_message_id: whatsapp_message_id ?? null, at: when };
}

function isAuthorized(req, token, { allowCookie = false } = {}) {
  const header = req.headers.authorization ?? '';
  const match = /^Bearer (.+)$/i.exec(header);
  if (match) return sameSecret(match[1].trim(), token);
  if (allowCookie) {
    const cookie = parseCookies(req.headers.cookie)[TOKEN_COOKIE];
    if (cookie) return sameSecret(cookie, token);
  }
  return false;
}

// Hashing first gives equal-length inputs, so timingSafeEqual leaks neither content nor length.
function sameSecret(given, expected) {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

function parseCookies(header = '') {
  const out = {};
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i < 0) continue;
    try {
      out[part.slice(0, i).trim()] = decodeURIComponent(part.slice(i + 1).trim());
    } catch {
      // a malformed cookie is simply not a token
    }
  }
  return out;
}

/** Read and parse a JSON object body of at most MAX_REQUEST_BYTES. */
async function readJson(req) {
  const raw = await readBody(req);
  let value;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new BridgeError('bad_request', 'request body must be valid JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new BridgeError('bad_request', 'request body must be a JSON object');
  }
  return value;
}

// Listeners rather than `for await`: leaving that loop early destroys the socket
// and the caller would never see the 413.
function readBody(req) {
  return new Promise((resolve, reject) => {
    if (Number(req.headers['content-length'] ?? 0) > MAX_REQUEST_BYTES) return reject(tooLarge());
    const chunks = [];
    let size = 0;
    const onData = (chunk) => {
      size += chunk.length;
      if (size > MAX_REQUEST_BYTES) {
        req.off('data', onData); // chunked bodies have no Content-Length to check up front
        return reject(tooLarge());
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function tooLarge() {
  return new BridgeError('payload_too_large', `request body exceeds ${MAX_REQUEST_BYTES} bytes`);
}

function sendJson(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}
