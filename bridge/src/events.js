// Delivers signed events (status changes, message acks, replies) to the
// backend: a FIFO queue persisted under BRIDGE_DATA_DIR (see event-queue.js),
// drained by one worker that retries with backoff, so a slow or absent backend
// never blocks POST /send, and an accepted event survives a restart or a crash.
import { createHmac, randomUUID } from 'node:crypto';
import { SIGNATURE_HEADER, TIMESTAMP_HEADER } from './constants.js';
import { DurableEventQueue } from './event-queue.js';

/**
 * The signature of one event: hex HMAC-SHA256 of "<timestamp>.<raw body>" keyed with the token.
 * @param {string} token BRIDGE_TOKEN
 * @param {number|string} timestamp unix seconds, as sent in X-Bridge-Timestamp
 * @param {string} rawBody the exact bytes POSTed
 */
export function signEvent(token, timestamp, rawBody) {
  return 'sha256=' + createHmac('sha256', token).update(`${timestamp}.${rawBody}`).digest('hex');
}

export class EventPublisher {
  #url;
  #token;
  #numberId;
  #log;
  #backoff;
  #timeoutMs;
  #queue = null; // DurableEventQueue when enabled
  #started = false;
  #running = null; // the worker's promise while it drains the queue
  #closed = false;
  #wake = null; // cuts a backoff sleep short on close()
  #abort = new AbortController(); // cuts an in-flight POST short on close()

  /**
   * @param {object} opts
   * @param {string} opts.url empty disables publishing (and the journal)
   * @param {string} opts.token HMAC key (BRIDGE_TOKEN)
   * @param {string|null} [opts.numberId] BRIDGE_NUMBER_ID: added to every event as `number_id` when set
   * @param {string} [opts.dir] folder of the queue's journal (BRIDGE_DATA_DIR); required when url is set
   * @param {(line: string) => void} [opts.log]
   * @param {number} [opts.maxEvents] queue bound in events (superseded statuses are dropped first)
   * @param {number} [opts.maxBytes] queue bound in bytes of journal lines
   * @param {number} [opts.flushDelayMs] events arriving within it share one write and fdatasync
   * @param {{initialMs?: number, maxMs?: number}} [opts.backoff]
   * @param {number} [opts.timeoutMs] per POST
   */
  constructor({ url, token, numberId = null, dir, log = () => {}, maxEvents, maxBytes, flushDelayMs, backoff = {}, timeoutMs = 5000 }) {
    this.#url = url;
    this.#token = token;
    this.#numberId = numberId;
    this.#log = log;
    this.#backoff = { initialMs: 500, maxMs: 30_000, ...backoff };
    this.#timeoutMs = timeoutMs;
    if (url) {
      if (!dir) throw new TypeError('EventPublisher needs dir (BRIDGE_DATA_DIR) to keep its queue');
      this.#queue = new DurableEventQueue(dir, { log, maxEvents, maxBytes, flushDelayMs });
    }
  }

  get enabled() {
    return Boolean(this.#url);
  }

  get pending() {
    return this.#queue?.length ?? 0;
  }

  /**
   * Load the events an earlier run left queued and start delivering them, oldest
   * first. Called by the bridge once it listens (so a second bridge that cannot
   * get the port never touches the journal); publish() calls it too.
   * Throws an Error with code EJOURNAL when the journal cannot be read or rewritten.
   */
  start() {
    if (!this.enabled || this.#started || this.#closed) return;
    let replayed;
    try {
      replayed = this.#queue.open();
    } catch (err) {
      throw Object.assign(new Error(`cannot use the event journal ${this.#queue.file} (${err.code ?? err.message})`, { cause: err }), { code: 'EJOURNAL' });
    }
    this.#started = true;
    if (replayed) {
      this.#log(`bridge: ${replayed} event(s) queued before the last stop; delivering them first`);
      this.#kick();
    }
  }

  /**
   * Queue one event; returns at once. Each event gets an event_id so the backend can drop
   * retried duplicates, and the number_id of the number this bridge drives (when configured). The promise resolves true once the event is on disk (the point from which
   * it survives a crash), false when publishing is off or the publisher closed before the write.
   * @returns {Promise<boolean>}
   */
  publish(event) {
    if (!this.enabled || this.#closed) return Promise.resolve(false);
    this.start();
    const body = this.#numberId ? { event_id: randomUUID(), ...event, number_id: this.#numberId } : { event_id: randomUUID(), ...event };
    const durable = this.#queue.push(body);
    this.#kick();
    return durable;
  }

  /**
   * Stop delivering; waits up to `flushMs` for the queue to empty first. Whatever is
   * still queued stays in the journal and is delivered by the next start.
   */
  async close({ flushMs = 0 } = {}) {
    if (flushMs > 0 && this.#running) {
      await Promise.race([this.#running, new Promise((r) => setTimeout(r, flushMs).unref())]);
    }
    this.#closed = true;
    this.#wake?.();
    this.#abort.abort();
    await this.#running;
    if (!this.#queue) return;
    await this.#queue.close();
    if (this.#queue.length) {
      this.#log(`bridge: ${this.#queue.length} event(s) not delivered at shutdown; kept in ${this.#queue.file} for the next start`);
    }
  }

  #kick() {
    this.#running ??= this.#drain().finally(() => {
      this.#running = null;
    });
  }

  async #drain() {
    let attempt = 0;
    while (!this.#closed) {
      const event = this.#queue.first();
      if (!event) break;
      const { outcome, detail } = await this.#post(event.body);
      if (outcome === 'rejected') this.#log(`bridge: backend rejected ${event.type} event (${detail}); dropping it`);
      if (outcome === 'retry') {
        if (this.#closed) break;
        // One line per outage, not one per retry.
        if (attempt === 0) this.#log(`bridge: could not deliver ${event.type} event (${detail}); retrying with backoff`);
        const base = Math.min(this.#backoff.maxMs, this.#backoff.initialMs * 2 ** attempt);
        attempt += 1;
        await new Promise((resolve) => {
          const t = setTimeout(resolve, base / 2 + (Math.random() * base) / 2);
          this.#wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.#wake = null;
        continue;
      }
      // Delivered, or rejected for good: either way this event is done (a no-op if the bound dropped it meanwhile).
      this.#queue.done(event);
      if (attempt > 0) this.#log(`bridge: event delivery recovered after ${attempt} retries`);
      attempt = 0;
    }
  }

  /**
   * POST one event's exact JSON (as journaled, so a replay sends the same bytes and event_id).
   * @returns {Promise<{outcome: 'ok'|'retry'|'rejected', detail?: string}>}
   */
  async #post(body) {
    const timestamp = Math.floor(Date.now() / 1000);
    try {
      const res = await fetch(this.#url, {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json',
          [TIMESTAMP_HEADER]: String(timestamp),
          [SIGNATURE_HEADER]: signEvent(this.#token, timestamp, body),
        },
        body,
        signal: AbortSignal.any([this.#abort.signal, AbortSignal.timeout(this.#timeoutMs)]),
      });
      await res.arrayBuffer().catch(() => {}); // free the connection
      if (res.ok) return { outcome: 'ok' };
      // 4xx other than timeout/throttling will not get better by retrying the same bytes.
      const permanent = res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429;
      return { outcome: permanent ? 'rejected' : 'retry', detail: `HTTP ${res.status}` };
    } catch (err) {
      return { outcome: 'retry', detail: err.cause?.code ?? err.message };
    }
  }
}
