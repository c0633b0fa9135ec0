// The real whatsapp-web.js with the real /usr/bin/chromium on a machine with no
// route to WhatsApp: the bridge must come up, say `disconnected` with the reason,
// keep retrying, and leave no Chromium behind when stopped.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { findBrowserPids, processRssBytes } from '../src/drivers/browser-procs.js';
import { CHROMIUM, NO_CHROMIUM, request, spawnBridge, startBridge, tempDir, waitFor } from '../test-support/helpers.js';

const BROWSER_ARGS = '--no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync';

test('offline, the real client reports disconnected with the reason, retries, and stop leaves no chromium', { skip: NO_CHROMIUM, timeout: 90_000 }, async (t) => {
  const b = await startBridge(
    t,
    { WHATSAPP_DRIVER: 'wwebjs', CHROME_PATH: CHROMIUM, WHATSAPP_PUPPETEER_ARGS: BROWSER_ARGS },
    { backoff: { initialMs: 200, maxMs: 1000 } },
  );
  const userDataDir = path.join(b.config.sessionPath, 'session');

  const down = await waitFor(async () => {
    const s = (await b.call('GET', '/status')).body;
    return s.status === 'disconnected' && s;
  }, { timeoutMs: 60_000, intervalMs: 100, what: 'disconnected' });
  assert.ok(down.last_error, 'last_error says why');
  assert.match(down.last_error, /initialize failed|disconnected/);
  assert.equal(down.phone, null);

  // It keeps rebuilding the client, and /status keeps saying disconnected meanwhile.
  await waitFor(() => b.lines.some((l) => l.includes('(attempt 3)')), { timeoutMs: 60_000, intervalMs: 100, what: 'a third rebuild' });
  assert.equal((await b.call('GET', '/status')).body.status, 'disconnected');
  const send = await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: 'offline' });
  assert.equal(send.status, 503);
  assert.equal(send.body.code, 'not_connected');

  await b.bridge.stop();
  await waitFor(() => findBrowserPids(userDataDir).length === 0, { timeoutMs: 10_000, what: 'no chromium left for this session' });
  assert.deepEqual(findBrowserPids(userDataDir), []);
});

test('a real `node src/main.js` with the wwebjs driver stops on SIGTERM with exit 0 and no chromium left', { skip: NO_CHROMIUM, timeout: 90_000 }, async (t) => {
  const dataDir = tempDir(t);
  const sessionPath = path.join(dataDir, 'session');
  const userDataDir = path.join(sessionPath, 'session');
  const proc = await spawnBridge(t, {
    WHATSAPP_DRIVER: 'wwebjs',
    BRIDGE_TOKEN: 'real-process-token',
    BRIDGE_PORT: '0',
    BRIDGE_DATA_DIR: dataDir,
    WHATSAPP_SESSION_PATH: sessionPath,
    CHROME_PATH: CHROMIUM,
    WHATSAPP_PUPPETEER_ARGS: BROWSER_ARGS,
  });
  const auth = { authorization: 'Bearer real-process-token' };
  // Chromium is running for this session at some point while it tries.
  await waitFor(() => findBrowserPids(userDataDir).length > 0, { timeoutMs: 30_000, intervalMs: 20, what: 'chromium to start' });
  const down = await waitFor(async () => {
    const s = (await request(proc.url, 'GET', '/status', undefined, auth)).body;
    return s.status === 'disconnected' && s;
  }, { timeoutMs: 60_000, intervalMs: 100, what: 'disconnected' });
  assert.ok(down.last_error);
  assert.match(proc.output(), /bridge: status disconnected error="/);

  proc.child.kill('SIGTERM');
  assert.deepEqual(await proc.exited, { code: 0, signal: null });
  await waitFor(() => findBrowserPids(userDataDir).length === 0, { timeoutMs: 10_000, what: 'no chromium left for this session' });
});

test('rss_bytes counts the real Chromium, and /session/stop leaves none running and builds none', { skip: NO_CHROMIUM, timeout: 90_000 }, async (t) => {
  const b = await startBridge(
    t,
    { WHATSAPP_DRIVER: 'wwebjs', CHROME_PATH: CHROMIUM, WHATSAPP_PUPPETEER_ARGS: BROWSER_ARGS },
    { backoff: { initialMs: 200, maxMs: 1000 } },
  );
  const userDataDir = path.join(b.config.sessionPath, 'session');
  // While a browser runs, the bridge's figure is well above this process's own.
  await waitFor(async () => {
    if (findBrowserPids(userDataDir).length === 0) return false;
    const { rss_bytes } = (await b.call('GET', '/status')).body;
    return rss_bytes > processRssBytes(process.pid) + 20 * 1024 * 1024;
  }, { timeoutMs: 60_000, intervalMs: 50, what: 'rss_bytes to include chromium' });

  const stopped = await b.call('POST', '/session/stop');
  assert.deepEqual(stopped.body, { status: 'stopped' });
  assert.deepEqual(findBrowserPids(userDataDir), [], 'stop answers once the browser is gone');
  await new Promise((r) => setTimeout(r, 1500)); // past the rebuild backoff
  assert.deepEqual(findBrowserPids(userDataDir), [], 'and no browser is started again');
  assert.equal((await b.call('GET', '/status')).body.status, 'stopped');
});
