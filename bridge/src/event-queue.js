// The event publisher's queue, kept on disk so that an event the bridge has
// accepted survives a restart or a crash (kill -9) and is delivered later:
// at-least-once, in order, with its original event_id.
//
// Storage: BRIDGE_DATA_DIR/events.jsonl, an append-only journal of JSON lines,
//   {"event": {...}}        an accepted event, exactly the body that will be POSTed
//   {"done": ["<id>", ...]} events delivered, rejected for good, or dropped by the bound
// Replaying the journal (adds minus dones, in file order) gives the queue.
//
// Why an append-only journal with one fdatasync per batch (and not a rewrite
// or an fsync per event): an append costs one write whatever the queue's
// length, and a batch of events that arrive within a few ms (or while the
// previous fsync is still running) shares a single fdatasync (group commit).
// Both run on libuv's thread pool, so the event loop never waits for the disk.
// A `publish()` is acknowledged (its promise resolves) only after the batch
// holding it has been fdatasync'ed: fdatasync also flushes the file size, which
// is all the metadata an append needs. "done" lines are appended without a
// sync of their own: losing one in an OS crash only means that event is sent
// again, which at-least-once already allows (the API must treat a repeated
// event_id, or a repeated ack or reply, as already seen). A crash mid-write leaves at most a cut-short last line, which
// loading skips with one log line; the file is then rewritten clean before
// anything is appended, so no new line is ever glued onto a broken one.
//
// Compaction: when most of the file is dead (delivered events and done lines)
// it is rewritten from memory to a temporary file, fsynced, renamed over the
// journal and the folder fsynced: a crash leaves either the old or the new file.
//
// Bound: at most `maxEvents` events and `maxBytes` bytes of journal lines are
// kept (memory holds the same lines). Past either, the queue is cut to 99% of
// the bound, dropping first the whatsapp_status (and bridge_registered) events that a newer
// one supersedes, then message_ack events, then the oldest of the rest; one log line
// says how many of each type were dropped (never an event's contents).
import {
  accessSync,
  closeSync,
  constants as fsConstants,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { open, rename } from 'node:fs/promises';
import path from 'node:path';
import { EVENT_TYPES } from './constants.js';

export const FILE_NAME = 'events.jsonl';
const EVENT_PREFIX = '{"event":';
const EVENT_SUFFIX = '}\n';
const LINE_OVERHEAD = EVENT_PREFIX.length + EVENT_SUFFIX.length;
const MIB = 1024 * 1024;
// Replies' text and senders' phones wait here until delivered: readable by the bridge's user only.
const FILE_MODE = 0o600;

export class DurableEventQueue {
  #dir;
  #file;
  #log;
  #maxEvents;
  #maxBytes;
  #flushDelayMs;
  #compactMinBytes;
  #items = []; // {event_id, type, body, bytes}, oldest first
  #liveBytes = 0; // sum of the items' journal line bytes
  #journalBytes = 0; // size of the journal file (what we wrote to it)
  #opened = false;
  #closing = false;
  // The batch being gathered for the next write.
  #lines = [];
  #doneIds = [];
  #needsSync = false;
  #batch = null; // {promise, resolve}: resolves (true) once this batch is durable
  #timer = null;
  #writing = null; // the writer's promise while it runs
  #fh = null; // the journal, opened for appending
  #rewriteNeeded = false; // after a failed write: rewrite the whole file from memory
  #wakeWriter = null;

  /**
   * @param {string} dir created if missing; must be writable
   * @param {object} [opts]
   * @param {(line: string) => void} [opts.log]
   * @param {number} [opts.maxEvents]
   * @param {number} [opts.maxBytes] of journal lines (≈ memory held)
   * @param {number} [opts.flushDelayMs] how long a batch gathers events before its write
   * @param {number} [opts.compactMinBytes] dead bytes tolerated before a compaction
   */
  constructor(dir, { log = () => {}, maxEvents = 100_000, maxBytes = 64 * MIB, flushDelayMs = 2, compactMinBytes = MIB } = {}) {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, fsConstants.R_OK | fsConstants.W_OK); // a read-only folder fails here, at startup
    this.#dir = dir;
    this.#file = path.join(dir, FILE_NAME);
    this.#log = log;
    this.#maxEvents = maxEvents;
    this.#maxBytes = maxBytes;
    this.#flushDelayMs = flushDelayMs;
    this.#compactMinBytes = compactMinBytes;
  }

  get file() {
    return this.#file;
  }

  get length() {
    return this.#items.length;
  }

  /** The oldest queued event: {event_id, type, body} (body: the exact JSON to POST), or undefined. */
  first() {
    return this.#items[0];
  }

  /**
   * Load the journal (skipping unreadable lines with one log line), apply the
   * bound, and leave a clean file to append to. Synchronous: done once at start.
   * @returns {number} events replayed from the journal
   */
  open() {
    if (this.#opened) return this.#items.length;
    rmSync(`${this.#file}.tmp`, { force: true }); // a compaction cut short by a crash
    let text = '';
    let missing = false;
    try {
      text = readFileSync(this.#file, 'utf8');
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
      missing = true; // created below through the rewrite, so that its folder entry is synced too
    }
    const byId = new Map();
    let bad = 0;
    let lines = 0;
    for (const line of text.split('\n')) {
      if (!line) continue;
      lines += 1;
      let record;
      try {
        record = JSON.parse(line);
      } catch {
        bad += 1; // cut short by a crash mid-write (or damaged): the rest is still good
        continue;
      }
      const event = record?.event;
      if (event && typeof event === 'object' && typeof event.event_id === 'string' && typeof event.type === 'string') {
        if (!byId.has(event.event_id)) byId.set(event.event_id, entry(event.event_id, event.type, JSON.stringify(event)));
      } else if (Array.isArray(record?.done)) {
        for (const id of record.done) byId.delete(id);
      } else {
        bad += 1;
      }
    }
    if (bad) this.#log(`bridge: event journal ${this.#file}: skipped ${bad} unreadable line(s) (a write cut short by a crash?)`);
    this.#items = [...byId.values()];
    this.#liveBytes = this.#items.reduce((sum, e) => sum + e.bytes, 0);
    const dropped = this.#enforceBound();
    const clean = !missing && bad === 0 && dropped === 0 && lines === this.#items.length && (text === '' || text.endsWith('\n'));
    if (clean) {
      this.#journalBytes = Buffer.byteLength(text);
    } else {
      this.#rewriteSync();
    }
    this.#doneIds = []; // the rewrite already left out whatever the bound dropped
    this.#opened = true;
    return this.#items.length;
  }

  /**
   * Queue one event (it must carry event_id and type). Returns at once; the
   * promise resolves true once the event is on disk (fdatasync'ed), false if
   * it could not be written before close().
   * @returns {Promise<boolean>}
   */
  push(event) {
    this.open();
    const item = entry(event.event_id, event.type, JSON.stringify(event));
    this.#items.push(item);
    this.#liveBytes += item.bytes;
    // After a failed write the next one rewrites the whole file from memory, which covers this event.
    if (!this.#rewriteNeeded) this.#lines.push(EVENT_PREFIX + item.body + EVENT_SUFFIX);
    this.#needsSync = true;
    const durable = this.#schedule();
    this.#enforceBound();
    return durable;
  }

  /** The event was delivered or rejected for good: forget it (a "done" line, no sync needed). */
  done(item) {
    const i = this.#items[0] === item ? 0 : this.#items.indexOf(item);
    if (i === -1) return; // already dropped by the bound
    this.#items.splice(i, 1);
    this.#liveBytes -= item.bytes;
    if (!this.#rewriteNeeded) this.#doneIds.push(item.event_id);
    this.#schedule();
  }

  /** Write out whatever is waiting now (no batching delay). */
  async flush() {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (!this.#writing && this.#hasWork()) this.#startWriter();
    await this.#writing;
  }

  /** Flush (one attempt if the disk is failing) and close the file. Events still queued stay in it. */
  async close() {
    this.#closing = true;
    this.#wakeWriter?.();
    await this.flush();
    this.#batch?.resolve(false); // could not be written
    this.#batch = null;
    await this.#fh?.close().catch(() => {});
    this.#fh = null;
  }

  #hasWork() {
    return this.#lines.length > 0 || this.#doneIds.length > 0 || this.#rewriteNeeded;
  }

  #schedule() {
    if (!this.#batch) {
      let resolve;
      const promise = new Promise((r) => (resolve = r));
      this.#batch = { promise, resolve };
    }
    if (!this.#writing && !this.#timer && !this.#closing) {
      // Gather what else arrives within a few ms into the same write and fdatasync.
      this.#timer = setTimeout(() => {
        this.#timer = null;
        if (!this.#writing) this.#startWriter();
      }, this.#flushDelayMs);
    }
    return this.#batch.promise;
  }

  #startWriter() {
    this.#writing = this.#writeLoop().finally(() => {
      this.#writing = null;
      // Work that arrived between the loop's last check and now.
      if (this.#hasWork() && !this.#closing) this.#schedule();
    });
  }

  async #writeLoop() {
    let failures = 0;
    while (this.#hasWork()) {
      // Everything queued up to here is one batch; later pushes gather into the next one (group commit).
      const data = this.#lines.join('') + (this.#doneIds.length ? JSON.stringify({ done: this.#doneIds }) + '\n' : '');
      const sync = this.#needsSync;
      const batch = this.#batch;
      this.#lines = [];
      this.#doneIds = [];
      this.#needsSync = false;
      this.#batch = null;
      try {
        const dataBytes = Buffer.byteLength(data);
        if (this.#rewriteNeeded || this.#journalBytes + dataBytes > 2 * this.#liveBytes + this.#compactMinBytes) {
          await this.#rewrite(); // every queued event, including this batch's
        } else {
          this.#fh ??= await open(this.#file, 'a', FILE_MODE);
          await this.#fh.appendFile(data); // loops over short writes
          this.#journalBytes += dataBytes;
          if (sync) await this.#fh.datasync();
        }
        batch?.resolve(true);
        if (failures) this.#log('bridge: event journal writable again');
        failures = 0;
      } catch (err) {
        // A failed append may have left half a line: next time, rewrite the whole file from memory
        // (which covers this batch). Meanwhile events are still delivered from memory.
        this.#rewriteNeeded = true;
        this.#lines = [];
        this.#doneIds = [];
        if (batch) {
          if (this.#batch) this.#batch.promise.then(batch.resolve);
          else this.#batch = batch;
        }
        if (failures === 0) this.#log(`bridge: cannot write the event journal ${this.#file} (${err.code ?? err.message}); retrying, events kept in memory meanwhile`);
        failures += 1;
        if (this.#closing) return;
        await new Promise((resolve) => {
          const t = setTimeout(resolve, Math.min(30_000, 500 * 2 ** failures));
          this.#wakeWriter = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.#wakeWriter = null;
      }
    }
  }

  /** Replace the journal with the queued events only (tmp file, fsync, rename, fsync the folder). */
  async #rewrite() {
    const data = this.#serialize(); // synchronous snapshot: later pushes are appended after it
    this.#rewriteNeeded = false; // so those later pushes do go to the next batch (a failure sets it again)
    const tmp = `${this.#file}.tmp`;
    const fh = await open(tmp, 'w', FILE_MODE);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.#file);
    await this.#fh?.close().catch(() => {});
    this.#fh = null;
    await syncDir(this.#dir);
    this.#fh = await open(this.#file, 'a', FILE_MODE);
    this.#journalBytes = Buffer.byteLength(data);
  }

  #rewriteSync() {
    const data = this.#serialize();
    const tmp = `${this.#file}.tmp`;
    writeFileSync(tmp, data, { mode: FILE_MODE });
    const fd = openSync(tmp, 'r+');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.#file);
    syncDirSync(this.#dir);
    this.#journalBytes = Buffer.byteLength(data);
  }

  #serialize() {
    let out = '';
    for (const item of this.#items) out += EVENT_PREFIX + item.body + EVENT_SUFFIX;
    return out;
  }

  /**
   * Past maxEvents or maxBytes, cut the queue to 99% of the bound: superseded
   * whatsapp_status and bridge_registered events first, then message_ack, then the oldest of the rest.
   * @returns {number} events dropped
   */
  #enforceBound() {
    if (this.#items.length <= this.#maxEvents && this.#liveBytes <= this.#maxBytes) return 0;
    // Drop a little more than needed, so a full queue logs one line per 1% of its bound, not one per event.
    const countTarget = Math.max(1, this.#maxEvents - Math.ceil(this.#maxEvents / 100));
    const bytesTarget = this.#maxBytes - Math.ceil(this.#maxBytes / 100);
    let count = this.#items.length;
    let bytes = this.#liveBytes;
    const over = () => count > countTarget || bytes > bytesTarget;
    const drop = new Set();
    const take = (item) => {
      drop.add(item);
      count -= 1;
      bytes -= item.bytes;
    };
    // A status, or a registration, says all there is to say: only the newest of each counts.
    const superseding = [EVENT_TYPES.WHATSAPP_STATUS, EVENT_TYPES.BRIDGE_REGISTERED];
    const newest = new Map();
    for (let i = this.#items.length - 1; i >= 0 && newest.size < superseding.length; i--) {
      const { type } = this.#items[i];
      if (superseding.includes(type) && !newest.has(type)) newest.set(type, this.#items[i]);
    }
    const passes = [
      (item) => superseding.includes(item.type) && newest.get(item.type) !== item, // superseded by a newer one
      (item) => item.type === EVENT_TYPES.MESSAGE_ACK,
      () => true,
    ];
    for (const matches of passes) {
      for (const item of this.#items) {
        if (!over()) break;
        if (!drop.has(item) && matches(item)) take(item);
      }
    }
    const byType = new Map();
    for (const item of drop) byType.set(item.type, (byType.get(item.type) ?? 0) + 1);
    this.#items = this.#items.filter((item) => !drop.has(item));
    this.#liveBytes = bytes;
    for (const item of drop) this.#doneIds.push(item.event_id); // written with the batch being gathered
    const detail = [...byType].map(([type, n]) => `${n} ${type}`).join(', ');
    this.#log(
      `bridge: event queue full (${this.#maxEvents} events or ${formatBytes(this.#maxBytes)}); dropped ${drop.size} event(s), superseded statuses first: ${detail}`,
    );
    return drop.size;
  }
}

function entry(event_id, type, body) {
  return { event_id, type, body, bytes: Buffer.byteLength(body) + LINE_OVERHEAD };
}

function formatBytes(n) {
  return n >= MIB ? `${Math.round((n / MIB) * 10) / 10} MiB` : `${n} bytes`;
}

// A rename is durable only once the folder holding it is synced. Not every
// platform can fsync a directory (Windows): there it is best effort.
async function syncDir(dir) {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // best effort
  } finally {
    await fh?.close().catch(() => {});
  }
}

function syncDirSync(dir) {
  let fd;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // best effort
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
