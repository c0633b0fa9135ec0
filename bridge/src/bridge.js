// Wires the parts together: the configured driver, the idempotency store, the media store,
// the event publisher and the HTTP server, with start/stop in the right order.
import { EVENT_TYPES } from './constants.js';
import { SimulatorDriver } from './drivers/simulator.js';
import { WwebjsDriver } from './drivers/wwebjs.js';
import { EventPublisher } from './events.js';
import { IdempotencyStore } from './idempotency.js';
import { MediaStore } from './media.js';
import { createServer } from './server.js';

const ACK_WAIT_MS = 10_000;

/** http://127.0.0.1:<port> for a bridge listening on every address, else the address it listens on. */
export function defaultPublicUrl(listeningUrl) {
  const url = new URL(listeningUrl);
  if (url.hostname === '0.0.0.0' || url.hostname === '[::]') url.hostname = '127.0.0.1';
  return url.origin;
}

/**
 * @param {ReturnType<import('./config.js').loadConfig>} config
 * @param {object} [opts]
 * @param {(line: string) => void} [opts.log]
 * @param {Function} [opts.clientFactory] fake whatsapp-web.js client for tests
 * @param {{initialMs?: number, maxMs?: number}} [opts.backoff] wwebjs rebuild backoff
 * @param {{initialMs?: number, maxMs?: number}} [opts.eventBackoff] event retry backoff
 */
export function createBridge(config, { log = console.log, clientFactory, backoff, eventBackoff } = {}) {
  const store = new IdempotencyStore(config.dataDir);
  const driver =
    config.driver === 'simulator'
      ? new SimulatorDriver({ latencyMs: config.simulatorLatencyMs, ackDelayMs: config.simulatorAckDelayMs })
      : new WwebjsDriver({
          sessionPath: config.sessionPath,
          chromePath: config.chromePath,
          puppeteerArgs: config.puppeteerArgs,
          clientFactory,
          backoff,
          log,
        });
  const events = new EventPublisher({
    url: config.eventsUrl,
    token: config.token,
    numberId: config.numberId,
    dir: config.dataDir, // the queue's journal, events.jsonl
    maxEvents: config.eventsQueueMaxEvents,
    maxBytes: config.eventsQueueMaxMb * 1024 * 1024,
    log,
    backoff: eventBackoff,
  });
  const media = new MediaStore({
    dataDir: config.dataDir,
    token: config.token,
    eventsUrl: config.eventsUrl, // the token goes to this origin only
    maxBytes: config.mediaCacheMb * 1024 * 1024,
    idleMs: config.mediaCacheIdleS * 1000,
    log,
  });
  const server = createServer({ config, driver, store, media, log });

  let url = null;
  let publicUrl = config.publicUrl;
  // Where the backend finds this number's bridge (Postgres keeps it): at start, and again with
  // every status, so a backend that lost it (or a bridge that moved) is set right soon.
  const register = () => publicUrl && events.publish({ type: EVENT_TYPES.BRIDGE_REGISTERED, url: publicUrl });

  driver.on('status', (s) => {
    const details = [
      s.phone && `phone=${s.phone}`,
      s.last_error && `error="${s.last_error}"`,
      s.qr_code && 'qr=ready',
      s.raw_state && `state=${s.raw_state}`,
    ];
    log(['bridge: status', s.status, ...details.filter(Boolean)].join(' '));
    events.publish({ type: EVENT_TYPES.WHATSAPP_STATUS, ...s });
    register();
  });

  // One chain keeps acks in order while an early ack waits for its send to be recorded.
  let acks = Promise.resolve();
  driver.on('ack', (a) => {
    acks = acks.then(async () => {
      let key = store.keyFor(a.whatsapp_message_id);
      if (!key) {
        // WhatsApp can ack before sendMessage() has returned the id; wait for it, but not forever.
        await Promise.race([store.settled(), new Promise((r) => setTimeout(r, ACK_WAIT_MS).unref())]);
        key = store.keyFor(a.whatsapp_message_id);
      }
      events.publish({ type: EVENT_TYPES.MESSAGE_ACK, whatsapp_message_id: a.whatsapp_message_id, idempotency_key: key, ack: a.ack, at: a.at });
    });
  });

  // A reply from a person. Its text is personal data: it goes to the API and nowhere else (no log line).
  driver.on('inbound', (m) => {
    events.publish({ type: EVENT_TYPES.INBOUND_MESSAGE, phone: m.phone, text: m.text, whatsapp_message_id: m.whatsapp_message_id, at: m.at });
  });

  return {
    config,
    driver,
    store,
    media,
    events,
    server,
    get url() {
      return url;
    },
    get publicUrl() {
      return publicUrl;
    },
    /** Listen first, so a busy port fails before any browser is launched. */
    async start({ port = config.port, host = config.host } = {}) {
      url = await server.listen(port, host);
      publicUrl ??= defaultPublicUrl(url);
      const number = config.numberId ? ` number=${config.numberId}` : '';
      log(`bridge: listening on ${url} driver=${config.driver}${number} public=${publicUrl} events=${config.eventsUrl || 'off'}`);
      // Only once the port is ours: a second bridge that cannot listen leaves the journal alone.
      events.start(); // replays what an earlier run left queued, before any new event
      register();
      await driver.start();
      return url;
    },
    async stop() {
      await driver.stop();
      await server.close();
      await media.close(); // no attachment outlives the process
      await acks;
      await events.close({ flushMs: 2000 });
    },
  };
}
