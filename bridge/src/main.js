// Entry point (`npm start`): load config, start the bridge, stop it cleanly on
// SIGINT/SIGTERM or when its supervisor (`whatsched dev`) is gone, and turn the usual
// startup mistakes into one clear sentence.
import { ConfigError, loadConfig } from './config.js';
import { createBridge } from './bridge.js';
import { killBrowserProcesses } from './drivers/browser-procs.js';
import { supervisorPid, watchParent } from './parent-watch.js';

const STOP_DEADLINE_MS = 30_000; // past it, stopping is stuck: kill our browsers and exit

// Whoever read our output may be gone (the supervisor died): a write error must not kill us
// before we have closed Chromium.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

function fail(sentence) {
  console.error(`bridge: ${sentence}`);
  process.exit(1);
}

let config;
try {
  config = loadConfig();
} catch (err) {
  if (err instanceof ConfigError) fail(err.message);
  throw err;
}

let bridge;
try {
  bridge = createBridge(config);
} catch (err) {
  fail(`cannot use BRIDGE_DATA_DIR ${config.dataDir} (${err.code ?? err.message}); point it at a writable directory`);
}

let stopping = false;
async function shutdown(reason) {
  if (stopping) return;
  stopping = true;
  console.log(`bridge: ${reason}; stopping`);
  setTimeout(() => {
    console.error(`bridge: still stopping after ${STOP_DEADLINE_MS} ms; killing our browsers and exiting`);
    if (bridge.driver.userDataDir) killBrowserProcesses(bridge.driver.userDataDir);
    process.exit(1);
  }, STOP_DEADLINE_MS).unref();
  try {
    await bridge.stop();
  } catch (err) {
    console.error(`bridge: error while stopping: ${err.stack ?? err}`);
    process.exit(1);
  }
  process.exit(0);
}
process.on('SIGINT', () => shutdown('SIGINT received'));
process.on('SIGTERM', () => shutdown('SIGTERM received'));
const supervisor = supervisorPid();
watchParent({ expected: supervisor, onGone: () => shutdown(`the supervisor (pid ${supervisor}) is gone`) });
// whatsapp-web.js can reject from its own page callbacks; log it rather than die with a browser open.
process.on('unhandledRejection', (err) => console.error(`bridge: unhandled rejection: ${err?.stack ?? err}`));

try {
  await bridge.start();
} catch (err) {
  if (err.code === 'EADDRINUSE') fail(`port ${config.port} is already in use; set BRIDGE_PORT`);
  if (err.code === 'EJOURNAL') fail(`${err.message}; point BRIDGE_DATA_DIR at a writable directory`);
  if (err.code === 'EACCES') fail(`not allowed to listen on ${config.host}:${config.port}; set BRIDGE_PORT or BRIDGE_HOST`);
  await bridge.stop().catch(() => {});
  throw err;
}
