// The bridge ends with its supervisor (`whatsched dev`), however the supervisor ends: here it
// is SIGKILLed, so it can stop nothing itself, and the bridge must notice and stop on its own.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { findBrowserPids, killBrowserProcesses } from '../src/drivers/browser-procs.js';
import { SUPERVISOR_ENV, supervisorPid, watchParent } from '../src/parent-watch.js';
import { BRIDGE_DIR, CHROMIUM, NO_CHROMIUM, waitFor } from '../test-support/helpers.js';

const BROWSER_ARGS = '--no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync';

test('supervisorPid reads a positive pid and nothing else', () => {
  assert.equal(supervisorPid({ [SUPERVISOR_ENV]: '4242' }), 4242);
  for (const raw of [undefined, '', '0', '-3', '12x', ' 7', '1.5']) {
    assert.equal(supervisorPid({ [SUPERVISOR_ENV]: raw }), null, JSON.stringify(raw));
  }
});

test('watchParent calls onGone once, when the parent changes, and not before', async () => {
  let ppid = 100;
  let gone = 0;
  const stop = watchParent({ expected: 100, intervalMs: 5, getPpid: () => ppid, onGone: () => (gone += 1) });
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(gone, 0, 'the parent is still there');
  ppid = 1; // re-parented: the supervisor died
  await waitFor(() => gone === 1, { what: 'onGone' });
  ppid = 100;
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(gone, 1, 'called once only');
  stop();
});

test('watchParent notices at once a parent that is already gone, and watches nothing unsupervised', () => {
  let gone = 0;
  watchParent({ expected: 100, getPpid: () => 1, onGone: () => (gone += 1) });
  assert.equal(gone, 1);
  const stop = watchParent({ expected: null, getPpid: () => 1, onGone: () => (gone += 1) });
  stop();
  assert.equal(gone, 1);
});

/** Alive and not a zombie (a zombie has exited; only its parent's wait is missing). */
function alive(pid) {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return true; // no /proc: kill(0) said it exists
  }
}

// A stand-in for `whatsched dev`: starts the bridge with its own pid in WHATSCHED_SUPERVISOR_PID,
// its output to a file (the supervisor's pipes die with it), prints the bridge's pid and waits.
const SUPERVISOR = `
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const log = fs.openSync(process.env.TEST_BRIDGE_LOG, 'a');
const bridge = spawn(process.execPath, ['src/main.js'], {
  cwd: process.env.TEST_BRIDGE_DIR,
  env: { ...process.env, ${SUPERVISOR_ENV}: String(process.pid) },
  stdio: ['ignore', log, log],
});
console.log(bridge.pid);
setInterval(() => {}, 1000);
`;

async function superviseBridge(t, env) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'bridge-parent-'));
  const logPath = path.join(dataDir, 'bridge.log');
  const supervisor = spawn(process.execPath, ['-e', SUPERVISOR], {
    env: {
      PATH: process.env.PATH,
      BRIDGE_HOST: '127.0.0.1',
      BRIDGE_PORT: '0',
      BRIDGE_EVENTS_URL: '',
      BRIDGE_DATA_DIR: dataDir,
      WHATSAPP_SESSION_PATH: path.join(dataDir, 'session'), // Chromium's profile: <this>/session
      TEST_BRIDGE_LOG: logPath,
      TEST_BRIDGE_DIR: BRIDGE_DIR,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  supervisor.stdout.on('data', (d) => (out += d));
  const exited = new Promise((resolve) => supervisor.on('exit', resolve));
  const log = () => {
    try {
      return readFileSync(logPath, 'utf8');
    } catch {
      return '';
    }
  };
  const sessionPath = path.join(dataDir, 'session');
  let bridgePid = null;
  // Whatever happened: kill every survivor (supervisor, bridge, its Chromium), then remove the folder.
  t.after(async () => {
    if (supervisor.exitCode === null && supervisor.signalCode === null) supervisor.kill('SIGKILL');
    if (bridgePid && alive(bridgePid)) process.kill(bridgePid, 'SIGKILL');
    killBrowserProcesses(path.join(sessionPath, 'session'));
    await exited;
    rmSync(dataDir, { recursive: true, force: true, maxRetries: 3 });
  });
  bridgePid = Number(await waitFor(() => /^(\d+)\n/.exec(out)?.[1], { timeoutMs: 10_000, what: 'the bridge pid' }));
  await waitFor(() => log().includes('listening on'), { timeoutMs: 10_000, what: `the bridge to listen:\n${log()}` });
  return { supervisor, exited, bridgePid, log, sessionPath };
}

test('a bridge whose supervisor is SIGKILLed stops by itself, saying why', { timeout: 30_000 }, async (t) => {
  const s = await superviseBridge(t, { WHATSAPP_DRIVER: 'simulator' });
  assert.ok(alive(s.bridgePid));
  s.supervisor.kill('SIGKILL');
  await s.exited;
  await waitFor(() => !alive(s.bridgePid), { timeoutMs: 10_000, intervalMs: 50, what: `the bridge to exit:\n${s.log()}` });
  assert.match(s.log(), new RegExp(`the supervisor \\(pid ${s.supervisor.pid}\\) is gone; stopping`));
});

test('a bridge with Chromium whose supervisor is SIGKILLed leaves no Chromium behind', { skip: NO_CHROMIUM, timeout: 90_000 }, async (t) => {
  const s = await superviseBridge(t, {
    WHATSAPP_DRIVER: 'wwebjs',
    BRIDGE_TOKEN: 'parent-watch-token',
    CHROME_PATH: CHROMIUM,
    WHATSAPP_PUPPETEER_ARGS: BROWSER_ARGS,
  });
  const userDataDir = path.join(s.sessionPath, 'session');
  await waitFor(() => findBrowserPids(userDataDir).length > 0, { timeoutMs: 30_000, intervalMs: 20, what: 'chromium to start' });
  s.supervisor.kill('SIGKILL');
  await s.exited;
  await waitFor(() => !alive(s.bridgePid), { timeoutMs: 30_000, intervalMs: 50, what: `the bridge to exit:\n${s.log()}` });
  await waitFor(() => findBrowserPids(userDataDir).length === 0, { timeoutMs: 10_000, what: 'no chromium left for this session' });
  assert.match(s.log(), /is gone; stopping/);
});
