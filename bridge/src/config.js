// Reads the bridge's settings from the environment, with the defaults a
// developer needs to run `npm start` in the simulator without any setup.
import path from 'node:path';

export const DRIVERS = ['simulator', 'wwebjs'];
export const DEV_TOKEN = 'dev-bridge-token';

export class ConfigError extends Error {}

/**
 * @param {Record<string, string|undefined>} env
 * @param {string} cwd relative paths resolve against it
 */
export function loadConfig(env = process.env, cwd = process.cwd()) {
  const driver = env.WHATSAPP_DRIVER || 'simulator';
  if (!DRIVERS.includes(driver)) {
    throw new ConfigError(`WHATSAPP_DRIVER must be one of ${DRIVERS.join(', ')}, got "${driver}".`);
  }

  let token = env.BRIDGE_TOKEN || '';
  if (!token) {
    // The simulator sends nothing real, so a well-known token is harmless there.
    if (driver === 'simulator') token = DEV_TOKEN;
    else throw new ConfigError('BRIDGE_TOKEN is required when WHATSAPP_DRIVER=wwebjs; set it to a long random string shared with the backend.');
  }

  const numberId = env.BRIDGE_NUMBER_ID || null;
  if (numberId && !UUID_PATTERN.test(numberId)) {
    throw new ConfigError(`BRIDGE_NUMBER_ID must be the uuid of a WhatsApp number, got "${numberId}".`);
  }
  const publicUrl = env.BRIDGE_PUBLIC_URL || null;
  if (publicUrl && !isHttpUrl(publicUrl)) {
    throw new ConfigError(`BRIDGE_PUBLIC_URL must be an http:// or https:// URL, got "${publicUrl}".`);
  }

  return {
    host: env.BRIDGE_HOST || '127.0.0.1',
    port: intVar(env, 'BRIDGE_PORT', 3001, 0, 65535),
    token,
    driver,
    // The WhatsApp number this process drives (null: the deployment's default number).
    numberId: numberId?.toLowerCase() ?? null,
    // Where the backend reaches this bridge; null: http://127.0.0.1:<the port it listens on>.
    publicUrl: publicUrl?.replace(/\/+$/, '') ?? null,
    sessionPath: path.resolve(cwd, env.WHATSAPP_SESSION_PATH || '../.data/whatsapp-session'),
    puppeteerArgs: (env.WHATSAPP_PUPPETEER_ARGS ?? '--no-sandbox').split(/\s+/).filter(Boolean),
    chromePath: env.CHROME_PATH || '/usr/bin/chromium',
    // An explicitly empty BRIDGE_EVENTS_URL disables events, so `??` and not `||`.
    eventsUrl: env.BRIDGE_EVENTS_URL ?? 'http://127.0.0.1:8000/api/bridge/events',
    dataDir: path.resolve(cwd, env.BRIDGE_DATA_DIR || '../.data/bridge'),
    // The event queue's bound (on disk and in memory); superseded statuses are dropped first.
    eventsQueueMaxEvents: intVar(env, 'BRIDGE_EVENTS_QUEUE_MAX', 100_000, 1, 10_000_000),
    eventsQueueMaxMb: intVar(env, 'BRIDGE_EVENTS_QUEUE_MAX_MB', 64, 1, 4096),
    // Attachments fetched for POST /send, kept under <dataDir>/media while recipients may still need
    // them: at most this many MiB of files not in use, each dropped after this many idle seconds.
    mediaCacheMb: intVar(env, 'BRIDGE_MEDIA_CACHE_MB', 512, 1, 1_048_576),
    mediaCacheIdleS: intVar(env, 'BRIDGE_MEDIA_CACHE_IDLE_S', 300, 1, 86_400),
    simulatorLatencyMs: intVar(env, 'SIMULATOR_LATENCY_MS', 0, 0, 600_000),
    simulatorAckDelayMs: intVar(env, 'SIMULATOR_ACK_DELAY_MS', 50, 0, 600_000),
  };
}

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function isHttpUrl(value) {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && Boolean(url.host) && !url.search && !url.hash;
  } catch {
    return false;
  }
}

function intVar(env, name, fallback, min, max) {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer between ${min} and ${max}, got "${raw}".`);
  }
  return value;
}
