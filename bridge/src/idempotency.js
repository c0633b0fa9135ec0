// Remembers the result of every successful send by idempotency key, so a
// repeated or concurrent POST /send with the same key sends at most once, even
// across a bridge restart. Storage is an append-only JSON-lines file that is
// loaded at start and rewritten (compacted) when it holds too many dead lines.
import { appendFileSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const FILE_NAME = 'idempotency.jsonl';
const DAY_MS = 24 * 60 * 60 * 1000;

export class IdempotencyStore {
  #file;
  #maxAgeMs;
  #maxKeys;
  #done = new Map(); // key -> {whatsapp_message_id, at}, oldest first
  #byMessageId = new Map(); // whatsapp_message_id -> key, for ack events
  #inflight = new Map(); // key -> promise of the one send running for it
  #linesInFile = 0;

  /**
   * @param {string} dir created if missing
   * @param {{maxAgeMs?: number, maxKeys?: number, now?: () => number}} [opts]
   */
  constructor(dir, { maxAgeMs = 7 * DAY_MS, maxKeys = 200_000, now = Date.now } = {}) {
    mkdirSync(dir, { recursive: true });
    this.#file = path.join(dir, FILE_NAME);
    this.#maxAgeMs = maxAgeMs;
    this.#maxKeys = maxKeys;
    this.now = now;
    this.#load();
  }

  get size() {
    return this.#done.size;
  }

  /**
   * Run `send` once per key. Returns its result and whether it was replayed.
   * A failed send is not remembered, so the caller may retry it.
   * @param {string} key
   * @param {() => Promise<{whatsapp_message_id: string}>} send
   */
  async run(key, send) {
    const done = this.#done.get(key);
    if (done) return { result: { whatsapp_message_id: done.whatsapp_message_id }, replayed: true };
    const running = this.#inflight.get(key);
    if (running) return { result: await running, replayed: true };

    const promise = (async () => {
      const result = await send();
      this.#record(key, result.whatsapp_message_id, this.now()); // written before anyone is answered
      return { whatsapp_message_id: result.whatsapp_message_id };
    })();
    this.#inflight.set(key, promise);
    try {
      return { result: await promise, replayed: false };
    } finally {
      this.#inflight.delete(key);
    }
  }

  /** The idempotency key a message was sent with, or null if it was not sent through us. */
  keyFor(whatsapp_message_id) {
    return this.#byMessageId.get(whatsapp_message_id) ?? null;
  }

  /** Resolves once every send running now has finished (acks can beat sendMessage's reply). */
  async settled() {
    await Promise.allSettled([...this.#inflight.values()]);
  }

  #record(key, whatsapp_message_id, at) {
    appendFileSync(this.#file, JSON.stringify({ key, whatsapp_message_id, at }) + '\n');
    this.#linesInFile += 1;
    this.#remember(key, whatsapp_message_id, at);
    this.#prune();
    // Rewrite only when most of the file is dead lines, so appends stay cheap.
    if (this.#linesInFile > 2 * this.#done.size + 1000) this.#compact();
  }

  #remember(key, whatsapp_message_id, at) {
    this.#done.delete(key); // keep Map order = age order
    this.#done.set(key, { whatsapp_message_id, at });
    this.#byMessageId.set(whatsapp_message_id, key);
  }

  #prune() {
    const cutoff = this.now() - this.#maxAgeMs;
    for (const [key, entry] of this.#done) {
      if (entry.at >= cutoff && this.#done.size <= this.#maxKeys) break;
      this.#done.delete(key);
      this.#byMessageId.delete(entry.whatsapp_message_id);
    }
  }

  #load() {
    let text;
    try {
      text = readFileSync(this.#file, 'utf8');
    } catch (err) {
      if (err.code === 'ENOENT') return;
      throw err;
    }
    let lines = 0;
    for (const line of text.split('\n')) {
      if (!line) continue;
      lines += 1;
      try {
        const { key, whatsapp_message_id, at } = JSON.parse(line);
        if (typeof key === 'string' && typeof whatsapp_message_id === 'string' && Number.isFinite(at)) {
          this.#remember(key, whatsapp_message_id, at);
        }
      } catch {
        // a line cut short by a crash mid-write; the rest of the file is still good
      }
    }
    this.#linesInFile = lines;
    this.#prune();
    if (this.#linesInFile !== this.#done.size || !text.endsWith('\n')) this.#compact();
  }

  #compact() {
    const tmp = `${this.#file}.tmp`;
    let out = '';
    for (const [key, { whatsapp_message_id, at }] of this.#done) out += JSON.stringify({ key, whatsapp_message_id, at }) + '\n';
    writeFileSync(tmp, out);
    renameSync(tmp, this.#file); // atomic: a crash leaves either the old or the new file
    this.#linesInFile = this.#done.size;
  }
}
