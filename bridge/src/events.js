// Delivers signed events (status changes, message acks) to the backend: an
// in-memory FIFO queue drained by one worker that retries with backoff, so a
// slow or absent backend never blocks POST /send.
import { createHmac, randomUUID } from 'node:crypto';
import { SIGNATURE_HEADER, TIMESTAMP_HEADER } from './constants.js';

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
  #log;
  #maxQueue;
  #backoff;
  #timeoutMs;
  #queue = [];
  #running = null; // the worker's promise while it drains the queue
  #closed = false;
  #wake = null; // cuts a backoff sleep short on close()
  #abort = new AbortController(); // cuts an in-flight POST short on close()

  /**
   * @param {object} opts
   * @param {string} opts.url empty disables publishing
   * @param {string} opts.token HMAC key (BRIDGE_TOKEN)
   * @param {(line: string) => void} [opts.log]
   * @param {number} [opts.maxQueue] oldest events are dropped beyond it
   * @param {{initialMs?: number, maxMs?: number}} [opts.backoff]
   * @param {number} [opts.timeoutMs] per POST
   */
  constructor({ url, token, log = () => {}, maxQueue = 10_000, backoff = {}, timeoutMs = 5000 }) {
    this.#url = url;
    this.#token = token;
    this.#log = log;
    this.#maxQueue = maxQueue;
    this.#backoff = { initialMs: 500, maxMs: 30_000, ...backoff };
    this.#timeoutMs = timeoutMs;
  }

  get enabled() {
    return Boolean(this.#url);
  }

  get pending() {
    return this.#queue.length;
  }

  /** Queue one event; returns at once. Each event gets an event_id so the backend can drop retried duplicates. */
  publish(event) {
    if (!this.enabled || this.#closed) return;
    if (this.#queue.length >= this.#maxQueue) {
      const dropped = this.#queue.shift();
      this.#log(`bridge: event queue full (${this.#maxQueue}); dropped oldest ${dropped.type} event ${dropped.event_id}`);
    }
    this.#queue.push({ event_id: randomUUID(), ...event });
    this.#running ??= this.#drain().finally(() => {
      this.#running = null;
    });
  }

  /** Stop delivering; waits up to `flushMs` for the queue to empty first. */
  async close({ flushMs = 0 } = {}) {
    if (flushMs > 0 && this.#running) {
      await Promise.race([this.#running, new Promise((r) => setTimeout(r, flushMs).unref())]);
    }
    this.#closed = true;
    this.#wake?.();
    this.#abort.abort();
    await this.#running;
    if (this.#queue.length) this.#log(`bridge: ${this.#queue.length} event(s) not delivered at shutdown`);
  }

  async #drain() {
    let attempt = 0;
    while (this.#queue.length && !this.#closed) {
      const event = this.#queue[0];
      const { outcome, detail } = await this.#post(event);
      if (outcome === 'rejected') this.#log(`bridge: backend rejected ${event.type} event (${detail}); dropping it`);
      if (outcome === 'retry') {
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
      // Delivered, or rejected for good: either way this event is done.
      if (this.#queue[0] === event) this.#queue.shift();
      if (attempt > 0) this.#log(`bridge: event delivery recovered after ${attempt} retries`);
      attempt = 0;
    }
  }

  /** @returns {Promise<{outcome: 'ok'|'retry'|'rejected', detail?: string}>} */
  async #post(event) {
    const body = JSON.stringify(event);
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
