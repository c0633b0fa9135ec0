// Shared test helpers: start a real bridge on port 0, call it over HTTP, spawn
// `node src/main.js` as a real process, and collect signed events.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBridge } from '../src/bridge.js';
import { loadConfig } from '../src/config.js';
import { signEvent } from '../src/events.js';

export const BRIDGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const TOKEN = 'test-token-0123456789';
export const CHROMIUM = '/usr/bin/chromium';
export const NO_CHROMIUM = existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (apt-get install -y chromium)`;

/** A temporary directory removed when the test ends. */
export function tempDir(t, prefix = 'bridge-test-') {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  // node:test runs `after` hooks in the order they were added, so this one may run before the hook
  // that stops what writes here: retry a while, and never let a leftover folder fail the test (a
  // failed hook would skip the hooks after it, such as closing a browser).
  t.after(() => {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    } catch (err) {
      console.error(`test cleanup: could not remove ${dir}: ${err.code}`);
    }
  });
  return dir;
}

/**
 * Start a bridge in this process on 127.0.0.1:0; stopped when the test ends.
 * @param {import('node:test').TestContext} t
 * @param {Record<string, string>} [env] extra environment for loadConfig
 * @param {object} [opts] passed to createBridge (clientFactory, backoff, ...)
 */
export async function startBridge(t, env = {}, opts = {}) {
  const dataDir = tempDir(t);
  const config = loadConfig({
    BRIDGE_TOKEN: TOKEN,
    BRIDGE_EVENTS_URL: '',
    BRIDGE_DATA_DIR: dataDir,
    WHATSAPP_SESSION_PATH: path.join(dataDir, 'session'),
    SIMULATOR_ACK_DELAY_MS: '0',
    ...env,
  });
  const lines = [];
  const bridge = createBridge(config, { log: (line) => lines.push(line), ...opts });
  const url = await bridge.start({ port: 0, host: '127.0.0.1' });
  t.after(() => bridge.stop());
  const call = (method, route, body, headers) => request(url, method, route, body, headers);
  return { bridge, url, call, lines, dataDir, config };
}

/**
 * One HTTP call with the test token unless `headers.authorization` says otherwise.
 * `body` objects are sent as JSON, strings as-is.
 * @returns {Promise<{status: number, body: any, headers: Headers}>}
 */
export async function request(baseUrl, method, route, body, headers = {}) {
  const res = await fetch(baseUrl + route, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(15_000), // a hung bridge fails the test instead of hanging it
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON (the operator page)
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

/** Poll `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor(check, { timeoutMs = 5000, intervalMs = 10, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs + 1000);
  });
  const polling = poll(check, deadline, intervalMs, timeoutMs, what);
  polling.catch(() => {}); // if `expired` wins, polling ends by itself at its next deadline check
  try {
    return await Promise.race([polling, expired]); // bounded even if check() hangs
  } finally {
    clearTimeout(timer);
  }
}

async function poll(check, deadline, intervalMs, timeoutMs, what) {
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * A local HTTP server standing in for the backend's events endpoint. It checks
 * every event's HMAC signature the way the backend must, and records both.
 * @param {{token?: string, failFirst?: number, port?: number}} [opts] failFirst: answer 500 to the
 *   first n requests; port: listen on this one (an API that comes back where the bridge looks for it)
 */
export async function startEventsReceiver(t, { token = TOKEN, failFirst = 0, port = 0 } = {}) {
  const received = []; // {event, signatureValid, timestamp}
  let requests = 0;
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      requests += 1;
      if (requests <= failFirst) {
        res.writeHead(500).end();
        return;
      }
      const raw = Buffer.concat(chunks).toString('utf8');
      const timestamp = req.headers['x-bridge-timestamp'];
      const signature = req.headers['x-bridge-signature'];
      const signatureValid = signature === signEvent(token, timestamp, raw) && /^sha256=[0-9a-f]{64}$/.test(signature);
      received.push({ event: JSON.parse(raw), signatureValid, timestamp: Number(timestamp), contentType: req.headers['content-type'] });
      res.writeHead(204).end();
    });
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  return { url: `http://127.0.0.1:${server.address().port}/api/bridge/events`, received, requests: () => requests };
}

/**
 * Run `node src/main.js` as a real process with `env`; resolves once it listens.
 * The process is killed when the test ends if it is still running.
 */
export async function spawnBridge(t, env) {
  const child = spawn(process.execPath, ['src/main.js'], {
    cwd: BRIDGE_DIR,
    env: { PATH: process.env.PATH, BRIDGE_HOST: '127.0.0.1', BRIDGE_EVENTS_URL: '', SIMULATOR_ACK_DELAY_MS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    return Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  });
  const url = await Promise.race([
    waitFor(() => /listening on (http:\/\/\S+)/.exec(output)?.[1], { timeoutMs: 10_000, what: 'bridge to listen' }),
    exited.then(({ code }) => {
      throw new Error(`bridge exited with ${code} before listening:\n${output}`);
    }),
  ]);
  return { child, url, exited, output: () => output };
}

/** Run `node src/main.js` expecting it to exit; resolves with its exit code and output. */
export function runBridgeToExit(env, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['src/main.js'], {
      cwd: BRIDGE_DIR,
      env: { PATH: process.env.PATH, BRIDGE_EVENTS_URL: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`bridge did not exit within ${timeoutMs} ms:\n${stdout}${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A free port: bind to 0, read it, release it. */
export async function freePort() {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A local HTTP server standing in for where attachments live (the backend's API or a storage
 * service). `files` maps a path to a Buffer (served with Content-Length), or to
 * {body, chunked?: true (no Content-Length), status?, redirect?: absolute URL}. Every request is
 * recorded with its path and Authorization header; POSTs (the bridge's events) get 204.
 * @returns {Promise<{origin: string, url: (p: string) => string, files: Map, requests: {method: string, path: string, authorization: string|undefined}[], gets: (p: string) => number}>}
 */
export async function startFileServer(t, files = {}) {
  const served = new Map(Object.entries(files));
  const requests = [];
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, 'http://x');
    requests.push({ method: req.method, path: pathname, authorization: req.headers.authorization });
    if (req.method === 'POST') {
      req.resume();
      req.on('end', () => res.writeHead(204).end());
      return;
    }
    const entry = served.get(pathname);
    if (!entry) return res.writeHead(404).end('not found');
    const spec = Buffer.isBuffer(entry) ? { body: entry } : entry;
    if (spec.redirect) return res.writeHead(spec.status ?? 302, { location: spec.redirect }).end();
    if (spec.status && spec.status !== 200) return res.writeHead(spec.status).end('refused');
    const headers = { 'content-type': 'application/octet-stream' };
    if (!spec.chunked) headers['content-length'] = spec.body.length;
    res.writeHead(200, headers);
    res.end(spec.body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => {
    server.close(resolve);
    server.closeAllConnections();
  }));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    url: (p) => origin + p,
    files: served,
    requests,
    gets: (p) => requests.filter((r) => r.method === 'GET' && r.path === p).length,
  };
}
