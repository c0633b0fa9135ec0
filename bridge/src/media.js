// The attachments of POST /send: each file is fetched from the URL the backend names, streamed
// to a file under <BRIDGE_DATA_DIR>/media/<pid>-…, checked against the size and SHA-256 the
// backend gave (the size while it streams, both at the end), and kept for the next recipients:
// once per bridge process, not once per recipient. Sends of the same file share one download.
// A file nobody uses is dropped after an idle time, or sooner when the cache is over its cap;
// close() removes every file, and a new process removes what a dead one left behind.
//
// The bridge token goes only to the backend's own origin (that of BRIDGE_EVENTS_URL), checked
// at every redirect hop: a signed URL elsewhere never sees it.
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BridgeError } from './errors.js';

export const MEDIA_DIR = 'media'; // under BRIDGE_DATA_DIR; one folder per process inside it
export const DEFAULT_IDLE_MS = 5 * 60_000;
const MAX_REDIRECTS = 5;
const SOCKET_IDLE_MS = 30_000; // a download that stalls this long fails (a slow one does not)
const SWEEP_MS = 30_000;

/**
 * @typedef {{url: string, sha256: string, size: number, mime_type: string, filename: string, kind: string}} MediaRef
 *   what POST /send describes (validated by server.js)
 * @typedef {{path: string, sha256: string, size: number, mime_type: string, filename: string, kind: string}} MediaFile
 *   what a driver is handed: the same, with the checked file on disk instead of the URL
 */

export class MediaStore {
  #dir;
  #token;
  #tokenOrigin;
  #maxBytes;
  #idleMs;
  #now;
  #log;
  #entries = new Map(); // sha256 -> {sha256, size, path, users, lastUsed, done, ready}
  #requests = new Set(); // http requests in flight, destroyed by close()
  #sweeper;
  #closed = false;
  downloads = 0; // completed fetches, for tests and logs

  /**
   * @param {object} opts
   * @param {string} opts.dataDir BRIDGE_DATA_DIR; files live in <dataDir>/media/<pid>-<random>
   * @param {string} opts.token the bridge token, sent only to `eventsUrl`'s origin
   * @param {string} [opts.eventsUrl] BRIDGE_EVENTS_URL; empty: the token is sent nowhere
   * @param {number} opts.maxBytes soft cap on cached files (files in use are never dropped)
   * @param {number} [opts.idleMs] a file unused this long is dropped
   * @param {() => number} [opts.now]
   * @param {(line: string) => void} [opts.log]
   */
  constructor({ dataDir, token, eventsUrl = '', maxBytes, idleMs = DEFAULT_IDLE_MS, now = Date.now, log = () => {} }) {
    const root = path.join(dataDir, MEDIA_DIR);
    mkdirSync(root, { recursive: true });
    removeDeadProcessFolders(root, log);
    this.#dir = mkdtempSync(path.join(root, `${process.pid}-`));
    this.#token = token;
    this.#tokenOrigin = originOf(eventsUrl);
    this.#maxBytes = maxBytes;
    this.#idleMs = idleMs;
    this.#now = now;
    this.#log = log;
    this.#sweeper = setInterval(() => this.#evict(), Math.min(idleMs, SWEEP_MS));
    this.#sweeper.unref();
    // A process.exit() that skips close() (a stuck stop) still leaves nothing behind.
    process.on('exit', this.#removeNow);
  }

  #removeNow = () => {
    try {
      rmSync(this.#dir, { recursive: true, force: true });
    } catch {
      // exiting anyway; the next process removes it
    }
  };

  /** This process's folder (removed by close()). */
  get dir() {
    return this.#dir;
  }

  /** Bytes of the files held now (in use, idle, or still downloading). */
  get bytes() {
    let total = 0;
    for (const entry of this.#entries.values()) total += entry.size;
    return total;
  }

  /**
   * Fetch `media` (or reuse the file already here), run `fn` with it, and release it.
   * @template T
   * @param {MediaRef} media
   * @param {(file: MediaFile) => Promise<T>} fn
   * @returns {Promise<T>}
   * @throws {BridgeError} media_mismatch, media_unavailable
   */
  async use(media, fn) {
    const entry = await this.#acquire(media);
    try {
      const { sha256, size, mime_type, filename, kind } = media;
      return await fn({ path: entry.path, sha256, size, mime_type, filename, kind });
    } finally {
      entry.users -= 1;
      entry.lastUsed = this.#now();
      this.#evict();
    }
  }

  /** Stop fetching and remove every file; later use() calls fail with media_unavailable. */
  async close() {
    this.#closed = true;
    clearInterval(this.#sweeper);
    process.off('exit', this.#removeNow);
    for (const req of this.#requests) req.destroy(new Error('the bridge is stopping'));
    await Promise.allSettled([...this.#entries.values()].map((e) => e.ready));
    this.#entries.clear();
    await rm(this.#dir, { recursive: true, force: true, maxRetries: 3 });
  }

  async #acquire(media) {
    if (this.#closed) throw new BridgeError('media_unavailable', 'the bridge is stopping', 'media.url');
    let entry = this.#entries.get(media.sha256);
    if (entry && entry.size !== media.size) {
      // The file with this SHA-256 is here and checked: it cannot also have another size.
      throw new BridgeError('media_mismatch', `a file with this sha256 has ${entry.size} bytes, not ${media.size}`, 'media.size');
    }
    if (!entry) {
      this.#evict(media.size);
      // A new name per download, so removing an evicted copy never races a fresh one.
      const file = path.join(this.#dir, `${media.sha256}-${randomBytes(4).toString('hex')}`);
      entry = { sha256: media.sha256, size: media.size, path: file, users: 0, lastUsed: this.#now(), done: false, ready: null };
      const created = entry;
      created.ready = this.#download(media, file).then(
        () => {
          created.done = true;
          this.downloads += 1;
        },
        (err) => {
          if (this.#entries.get(created.sha256) === created) this.#entries.delete(created.sha256);
          throw err;
        },
      );
      created.ready.catch(() => {}); // awaited below and by close(); never unhandled
      this.#entries.set(media.sha256, entry);
    }
    entry.users += 1;
    try {
      await entry.ready;
    } catch (err) {
      entry.users -= 1;
      throw err;
    }
    return entry;
  }

  /** Drop idle files past their time, then least recently used ones until `incoming` more bytes fit. */
  #evict(incoming = 0) {
    const now = this.#now();
    const idle = [...this.#entries.values()].filter((e) => e.done && e.users === 0).sort((a, b) => a.lastUsed - b.lastUsed);
    let total = this.bytes;
    for (const entry of idle) {
      const expired = now - entry.lastUsed >= this.#idleMs;
      if (!expired && total + incoming <= this.#maxBytes) continue;
      this.#entries.delete(entry.sha256);
      total -= entry.size;
      rm(entry.path, { force: true }).catch((err) => this.#log(`bridge: could not remove cached media ${entry.path}: ${err.code}`));
    }
  }

  /** Stream `media.url` into `file`, checking size and SHA-256; the file is removed on any failure. */
  async #download(media, file) {
    const res = await this.#get(new URL(media.url), 0);
    const declared = Number(res.headers['content-length']);
    if (Number.isInteger(declared) && declared !== media.size) {
      res.destroy();
      throw new BridgeError('media_mismatch', `${describe(media.url)} has ${declared} bytes, not ${media.size}`, 'media.size');
    }
    const hash = createHash('sha256');
    let received = 0;
    const check = new Transform({
      transform(chunk, _encoding, callback) {
        received += chunk.length;
        // Checked while streaming: a larger file stops here, before it fills the disk.
        if (received > media.size) {
          return callback(new BridgeError('media_mismatch', `${describe(media.url)} is larger than ${media.size} bytes`, 'media.size'));
        }
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    try {
      await pipeline(res, check, createWriteStream(file, { mode: 0o600 }));
    } catch (err) {
      await rm(file, { force: true });
      if (err instanceof BridgeError) throw err;
      throw new BridgeError('media_unavailable', `could not fetch ${describe(media.url)}: ${err.code ?? err.message}`, 'media.url');
    }
    const problem =
      received !== media.size
        ? new BridgeError('media_mismatch', `${describe(media.url)} has ${received} bytes, not ${media.size}`, 'media.size')
        : hash.digest('hex') !== media.sha256
          ? new BridgeError('media_mismatch', `${describe(media.url)} does not have the sha256 given`, 'media.sha256')
          : null;
    if (problem) {
      await rm(file, { force: true });
      throw problem;
    }
  }

  /** GET `url`, following up to MAX_REDIRECTS redirects; resolves with a 2xx response. */
  #get(url, hops) {
    return new Promise((resolve, reject) => {
      const unavailable = (why) => new BridgeError('media_unavailable', `could not fetch ${describe(url)}: ${why}`, 'media.url');
      const headers = { accept: '*/*', 'accept-encoding': 'identity' };
      // The origin of each hop decides, so a redirect elsewhere loses the token.
      if (this.#tokenOrigin && url.origin === this.#tokenOrigin) headers.authorization = `Bearer ${this.#token}`;
      const lib = url.protocol === 'https:' ? https : http;
      let req;
      try {
        req = lib.get(url, { headers, timeout: SOCKET_IDLE_MS });
      } catch (err) {
        return reject(unavailable(err.code ?? err.message));
      }
      this.#requests.add(req);
      const done = () => this.#requests.delete(req);
      req.on('timeout', () => req.destroy(new Error(`no data for ${SOCKET_IDLE_MS} ms`)));
      req.on('error', (err) => {
        done();
        reject(unavailable(err.code ?? err.message));
      });
      req.on('response', (res) => {
        res.on('close', done);
        const status = res.statusCode ?? 0;
        if (status >= 300 && status < 400 && res.headers.location) {
          res.resume();
          if (hops >= MAX_REDIRECTS) return reject(unavailable(`more than ${MAX_REDIRECTS} redirects`));
          let next;
          try {
            next = new URL(res.headers.location, url);
          } catch {
            return reject(unavailable('a redirect to an invalid URL'));
          }
          if (next.protocol !== 'http:' && next.protocol !== 'https:') return reject(unavailable(`a redirect to ${next.protocol}`));
          return this.#get(next, hops + 1).then(resolve, reject);
        }
        if (status < 200 || status >= 300) {
          res.resume();
          return reject(unavailable(`HTTP ${status}`));
        }
        resolve(res);
      });
    });
  }
}

function originOf(url) {
  try {
    return url ? new URL(url).origin : null;
  } catch {
    return null; // no valid events URL: the token is sent nowhere
  }
}

/** The URL without its query (a signed URL's query is a credential) for messages and logs. */
function describe(url) {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

/** Remove <root>/<pid>-… folders whose process is gone (a crash or kill -9 leaves them). */
function removeDeadProcessFolders(root, log) {
  for (const name of readdirSync(root)) {
    const pid = Number(/^(\d+)-/.exec(name)?.[1]);
    if (!pid || pid === process.pid || isAlive(pid)) continue;
    try {
      rmSync(path.join(root, name), { recursive: true, force: true });
      log(`bridge: removed media left by process ${pid}`);
    } catch (err) {
      log(`bridge: could not remove media left by process ${pid}: ${err.code}`);
    }
  }
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM'; // alive, someone else's
  }
}
