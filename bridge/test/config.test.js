import assert from 'node:assert/strict';
import http from 'node:http';
import path from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../src/config.js';
import { runBridgeToExit, tempDir } from '../test-support/helpers.js';

test('defaults run the simulator with the dev token and paths beside the repo', () => {
  const config = loadConfig({}, '/repo/bridge');
  assert.equal(config.driver, 'simulator');
  assert.equal(config.token, 'dev-bridge-token');
  assert.equal(config.host, '127.0.0.1');
  assert.equal(config.port, 3001);
  assert.equal(config.sessionPath, path.resolve('/repo/.data/whatsapp-session'));
  assert.equal(config.dataDir, path.resolve('/repo/.data/bridge'));
  assert.deepEqual(config.puppeteerArgs, ['--no-sandbox']);
  assert.equal(config.chromePath, '/usr/bin/chromium');
  assert.equal(config.eventsUrl, 'http://127.0.0.1:8000/api/bridge/events');
  assert.equal(config.simulatorLatencyMs, 0);
  assert.equal(config.simulatorAckDelayMs, 50);
  assert.equal(config.eventsQueueMaxEvents, 100_000);
  assert.equal(config.eventsQueueMaxMb, 64);
  assert.equal(config.mediaCacheMb, 512);
  assert.equal(config.mediaCacheIdleS, 300);
});

test('an empty BRIDGE_EVENTS_URL disables events and puppeteer args split on spaces', () => {
  const config = loadConfig({ BRIDGE_EVENTS_URL: '', WHATSAPP_PUPPETEER_ARGS: '--no-sandbox  --disable-gpu' }, '/x');
  assert.equal(config.eventsUrl, '');
  assert.deepEqual(config.puppeteerArgs, ['--no-sandbox', '--disable-gpu']);
});

test('bad numbers and unknown drivers are rejected with one sentence', () => {
  assert.throws(() => loadConfig({ BRIDGE_PORT: 'abc' }), /BRIDGE_PORT must be an integer/);
  assert.throws(() => loadConfig({ WHATSAPP_DRIVER: 'baileys' }), /WHATSAPP_DRIVER must be one of simulator, wwebjs/);
  assert.throws(() => loadConfig({ BRIDGE_EVENTS_QUEUE_MAX: '0' }), /BRIDGE_EVENTS_QUEUE_MAX must be an integer between 1 and/);
  assert.equal(loadConfig({ BRIDGE_EVENTS_QUEUE_MAX_MB: '8' }).eventsQueueMaxMb, 8);
  assert.throws(() => loadConfig({ BRIDGE_MEDIA_CACHE_MB: '0' }), /BRIDGE_MEDIA_CACHE_MB must be an integer between 1 and/);
  assert.throws(() => loadConfig({ BRIDGE_MEDIA_CACHE_IDLE_S: '1.5' }), /BRIDGE_MEDIA_CACHE_IDLE_S must be an integer/);
  assert.equal(loadConfig({ BRIDGE_MEDIA_CACHE_MB: '64', BRIDGE_MEDIA_CACHE_IDLE_S: '60' }).mediaCacheMb, 64);
});

test('the wwebjs driver without BRIDGE_TOKEN exits 1 with one clear sentence', async (t) => {
  const { code, stdout, stderr } = await runBridgeToExit({ WHATSAPP_DRIVER: 'wwebjs', BRIDGE_DATA_DIR: tempDir(t) });
  assert.equal(code, 1);
  assert.equal(stdout, '');
  assert.equal(stderr.trim().split('\n').length, 1);
  assert.match(stderr, /^bridge: BRIDGE_TOKEN is required when WHATSAPP_DRIVER=wwebjs/);
});

test('a busy port exits 1 saying which port and what to set', async (t) => {
  const blocker = http.createServer();
  await new Promise((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => blocker.close(resolve)));
  const port = blocker.address().port;
  const { code, stderr } = await runBridgeToExit({ BRIDGE_PORT: String(port), BRIDGE_HOST: '127.0.0.1', BRIDGE_DATA_DIR: tempDir(t) });
  assert.equal(code, 1);
  assert.match(stderr, new RegExp(`^bridge: port ${port} is already in use; set BRIDGE_PORT$`, 'm'));
});

test('BRIDGE_NUMBER_ID is an optional uuid and BRIDGE_PUBLIC_URL an optional http(s) URL', () => {
  const id = '3F2B8C1E-7A4D-4E2B-9C1F-0123456789AB';
  const config = loadConfig({ BRIDGE_NUMBER_ID: id, BRIDGE_PUBLIC_URL: 'https://bridge-2.example.net:3101/' }, '/x');
  assert.equal(config.numberId, id.toLowerCase());
  assert.equal(config.publicUrl, 'https://bridge-2.example.net:3101', 'no trailing slash');
  const defaults = loadConfig({ BRIDGE_NUMBER_ID: '', BRIDGE_PUBLIC_URL: '' }, '/x');
  assert.equal(defaults.numberId, null, 'unset: the default number');
  assert.equal(defaults.publicUrl, null, 'unset: http://127.0.0.1:<port>, known once listening');
  for (const bad of ['42', 'not-a-uuid', `${id}0`, '3f2b8c1e7a4d4e2b9c1f0123456789ab']) {
    assert.throws(() => loadConfig({ BRIDGE_NUMBER_ID: bad }), /BRIDGE_NUMBER_ID must be the uuid of a WhatsApp number/, bad);
  }
  for (const bad of ['bridge-2:3101', 'ftp://bridge-2/', 'http://', 'http://bridge-2:3101/?x=1']) {
    assert.throws(() => loadConfig({ BRIDGE_PUBLIC_URL: bad }), /BRIDGE_PUBLIC_URL must be an http/, bad);
  }
});

test('a bad BRIDGE_NUMBER_ID exits 1 with one sentence', async (t) => {
  const { code, stderr } = await runBridgeToExit({ BRIDGE_NUMBER_ID: 'number-one', BRIDGE_DATA_DIR: tempDir(t) });
  assert.equal(code, 1);
  assert.match(stderr, /^bridge: BRIDGE_NUMBER_ID must be the uuid of a WhatsApp number, got "number-one"\.$/m);
});
