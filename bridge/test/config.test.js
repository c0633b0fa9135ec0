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
