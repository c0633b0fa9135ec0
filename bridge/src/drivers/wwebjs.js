// The real WhatsApp driver: one whatsapp-web.js Client (one headless Chromium)
// at a time, rebuilt with exponential backoff whenever it dies, and never left
// running as an orphan browser.
import path from 'node:path';
import { readFile, rm } from 'node:fs/promises';
import {
  E164_PATTERN,
  INBOUND_TEXT_TYPES,
  RESTRICTED_NEW_CHATS_ERROR,
  STATUS,
  STATUS_BROADCAST,
  WA_BANNED_STATES,
  WA_EVENTS,
  WA_STATES,
  WID_GROUP,
  WID_LID,
  WID_USER,
  ackToDelivery,
} from '../constants.js';
import { BridgeError } from '../errors.js';
import { qrToDataUrl } from '../qr.js';
import { BaseDriver } from './base.js';
import { findBrowserPids, killBrowserProcesses } from './browser-procs.js';

const DESTROY_TIMEOUT_MS = 10_000;
const LOOKUP_TIMEOUT_MS = 30_000; // getNumberId sends nothing, so timing it out is safe
const INBOUND_STOP_WAIT_MS = 2000;
const LID_CACHE_MAX = 10_000; // resolved LID -> phone pairs kept, so a chatty sender is looked up once
export const UNRESOLVED_SENDER_LINE = 'bridge: inbound message from an unresolved sender dropped';

/**
 * The part of an incoming whatsapp-web.js Message the bridge forwards, or null when it is
 * not a reply from a person: status updates, groups, channels, our own messages, and
 * messages without typed words are all skipped.
 * @param {object} msg a whatsapp-web.js Message (from, fromMe, isStatus, id, timestamp, body, type)
 * @returns {{sender: string, text: string, whatsapp_message_id: string, at: string}|null}
 */
export function inboundFromMessage(msg) {
  if (!msg || msg.fromMe || msg.id?.fromMe) return null;
  const sender = typeof msg.from === 'string' ? msg.from : '';
  if (msg.isStatus || sender === STATUS_BROADCAST || msg.id?.remote === STATUS_BROADCAST) return null;
  if (sender.endsWith(WID_GROUP)) return null; // a group's messages come `from` the group
  // Only people: this also leaves out channels (@newsletter) and broadcast lists.
  if (!sender.endsWith(WID_USER) && !sender.endsWith(WID_LID)) return null;
  if (!INBOUND_TEXT_TYPES.includes(msg.type)) return null;
  const text = typeof msg.body === 'string' ? msg.body : '';
  if (!text.trim()) return null; // a photo without a caption says nothing
  const whatsapp_message_id = msg.id?._serialized;
  if (typeof whatsapp_message_id !== 'string' || !whatsapp_message_id) return null;
  const seconds = Number(msg.timestamp);
  const at = Number.isFinite(seconds) && seconds > 0 ? new Date(seconds * 1000) : new Date();
  return { sender, text, whatsapp_message_id, at: at.toISOString() };
}

/** "+56912345678" from "56912345678@c.us", or null when that is not a phone number. */
export function phoneFromUserWid(wid) {
  if (typeof wid !== 'string' || !wid.endsWith(WID_USER)) return null;
  const phone = `+${wid.slice(0, -WID_USER.length)}`;
  return E164_PATTERN.test(phone) ? phone : null;
}

let messageMediaClass = null;

/** whatsapp-web.js's MessageMedia; the very class its sendMessage checks with instanceof. */
export async function loadMessageMedia() {
  messageMediaClass ??= (await import('whatsapp-web.js')).default.MessageMedia;
  return messageMediaClass;
}

/**
 * The default client factory: a real whatsapp-web.js Client with LocalAuth.
 * @returns {Promise<(opts: {sessionPath: string, chromePath: string, puppeteerArgs: string[]}) => any>}
 */
export async function realClientFactory() {
  const { default: wwebjs } = await import('whatsapp-web.js');
  return ({ sessionPath, chromePath, puppeteerArgs }) =>
    new wwebjs.Client({
      authStrategy: new wwebjs.LocalAuth({ dataPath: sessionPath }),
      puppeteer: {
        executablePath: chromePath,
        headless: true,
        args: puppeteerArgs,
        // We stop the browser ourselves on signals; puppeteer's own handler would exit(130).
        handleSIGINT: false,
        handleSIGTERM: false,
        handleSIGHUP: false,
      },
    });
}

export class WwebjsDriver extends BaseDriver {
  name = 'wwebjs';
  #opts;
  #factory;
  #client = null;
  #initializing = null; // the in-flight client.initialize(), awaited before destroy
  #generation = 0; // events from an older client are ignored
  #attempt = 0;
  #retryTimer = null;
  #stopped = true;
  #lifecycle = Promise.resolve(); // stop/restart/logout run one at a time, or two clients could start
  #inbound = Promise.resolve(); // incoming messages are handled one at a time, in arrival order
  #lidPhones = new Map(); // "123@lid" -> "+569...", oldest first

  /**
   * @param {object} opts
   * @param {string} opts.sessionPath LocalAuth dataPath
   * @param {string} opts.chromePath
   * @param {string[]} opts.puppeteerArgs
   * @param {Function} [opts.clientFactory] (opts) => client; defaults to whatsapp-web.js
   * @param {{initialMs?: number, maxMs?: number}} [opts.backoff]
   * @param {(line: string) => void} [opts.log]
   */
  constructor(opts) {
    super();
    this.#opts = { backoff: {}, log: () => {}, ...opts };
    this.#opts.backoff = { initialMs: 1000, maxMs: 60_000, ...this.#opts.backoff };
  }

  /** The Chromium profile LocalAuth uses; identifies this session's browser processes. */
  get userDataDir() {
    return path.join(this.#opts.sessionPath, 'session');
  }

  /** Start the client; a second start while one runs does nothing (one browser per session). */
  start() {
    return this.#serial(async () => {
      if (!this.#stopped) return;
      this.#factory ??= this.#opts.clientFactory ?? (await realClientFactory());
      this.#stopped = false;
      this.#attempt = 0;
      this.#connect({ fresh: true });
    });
  }

  stop() {
    this.#stopped = true;
    return this.#serial(async () => {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      await this.#teardown();
      // Let messages already received reach the event queue before the bridge closes it
      // (with the browser gone, a pending LID lookup fails fast).
      await Promise.race([this.#inbound, new Promise((r) => setTimeout(r, INBOUND_STOP_WAIT_MS).unref())]);
    });
  }

  /**
   * @param {string} to E.164
   * @param {string} body the text, or the caption when there is media (may then be empty)
   * @param {{idempotency_key?: string, media?: import('../media.js').MediaFile|null}} [meta]
   */
  async send(to, body, { media = null } = {}) {
    const client = this.#client;
    if (!client || this.status().status !== STATUS.CONNECTED) {
      throw new BridgeError('not_connected', `WhatsApp is ${this.status().status}; cannot send now`);
    }
    let numberId;
    try {
      numberId = await withTimeout(client.getNumberId(to.slice(1)), LOOKUP_TIMEOUT_MS, 'getNumberId');
    } catch (err) {
      throw new BridgeError('send_failed', `could not check ${to} on WhatsApp: ${err.message}`);
    }
    if (!numberId) throw new BridgeError('not_registered', `${to} is not on WhatsApp`, 'to');
    let content = body;
    // sendSeen false: scheduling a message must not mark the operator's chat as read.
    let options = { sendSeen: false };
    if (media) {
      const MessageMedia = await loadMessageMedia();
      let data;
      try {
        // Read only now, for a recipient on WhatsApp; whatsapp-web.js takes base64 in memory.
        data = await readFile(media.path, { encoding: 'base64' });
      } catch (err) {
        throw new BridgeError('send_failed', `could not read the attachment: ${err.code ?? err.message}`);
      }
      content = new MessageMedia(media.mime_type, data, media.filename);
      options = { sendSeen: false, caption: body || undefined, sendMediaAsDocument: media.kind === 'document' };
    }
    try {
      const msg = await client.sendMessage(numberId._serialized, content, options);
      return { whatsapp_message_id: msg.id._serialized };
    } catch (err) {
      const reason = String(err?.message ?? err);
      if (RESTRICTED_NEW_CHATS_ERROR.test(reason)) {
        throw new BridgeError('restricted_new_chats', `WhatsApp refused a chat with ${to} (error 463: ${reason})`, 'to');
      }
      throw new BridgeError('send_failed', `WhatsApp refused the message: ${reason}`);
    }
  }

  logout() {
    return this.#serial(async () => {
      const client = this.#client;
      this.#generation += 1; // the LOGOUT `disconnected` event is ours, not a failure
      try {
        if (client) await withTimeout(client.logout(), DESTROY_TIMEOUT_MS, 'logout');
      } catch (err) {
        this.#opts.log(`bridge: logout through WhatsApp failed (${err.message}); removing the local session instead`);
      }
      await this.#teardown();
      // Without the session files the next client has to ask for a QR.
      await rm(this.userDataDir, { recursive: true, force: true, maxRetries: 3 });
      this._setStatus(STATUS.DISCONNECTED, { phone: null, last_error: 'logged out', last_disconnect_reason: 'logged out' });
      this.#attempt = 0;
      if (!this.#stopped) this.#scheduleRebuild();
      return this.status().status;
    });
  }

  restart() {
    return this.#serial(async () => {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      this.#attempt = 0;
      await this.#teardown();
      if (!this.#stopped) this.#connect({ fresh: true });
      return this.status().status;
    });
  }

  /** Resolve the sender's phone and emit `inbound`; a sender without a phone is dropped, text unlogged. */
  async #forwardInbound(client, { sender, text, whatsapp_message_id, at }) {
    let phone = null;
    try {
      phone = sender.endsWith(WID_LID) ? await this.#phoneForLid(client, sender) : phoneFromUserWid(sender);
    } catch {
      phone = null; // the page call failed: same as unknown
    }
    if (!phone) {
      this.#opts.log(UNRESOLVED_SENDER_LINE);
      return;
    }
    this.emit('inbound', { phone, text, whatsapp_message_id, at });
  }

  /**
   * whatsapp-web.js >= 1.34 `client.getContactLidAndPhone([lid])` -> [{lid, pn: "569...@c.us"}]:
   * the phone WhatsApp Web knows for this LID (asking the server when it has none), or no pn.
   * Successful answers are cached; lookups are not free (and in excess may draw WhatsApp's attention).
   */
  async #phoneForLid(client, lid) {
    const cached = this.#lidPhones.get(lid);
    if (cached) return cached;
    if (typeof client.getContactLidAndPhone !== 'function') return null;
    const answer = await withTimeout(client.getContactLidAndPhone([lid]), LOOKUP_TIMEOUT_MS, 'getContactLidAndPhone');
    const entry = Array.isArray(answer) ? answer.find((e) => e?.lid === lid) ?? answer[0] : null;
    const phone = phoneFromUserWid(entry?.pn);
    if (phone) {
      if (this.#lidPhones.size >= LID_CACHE_MAX) this.#lidPhones.delete(this.#lidPhones.keys().next().value);
      this.#lidPhones.set(lid, phone);
    }
    return phone;
  }

  #serial(operation) {
    const run = this.#lifecycle.then(operation);
    this.#lifecycle = run.catch(() => {});
    return run;
  }

  /** Build and initialize a client; a rebuild (not fresh) stays `disconnected` until it shows a QR or is ready. */
  #connect({ fresh = false } = {}) {
    const generation = ++this.#generation;
    const client = this.#factory({
      sessionPath: this.#opts.sessionPath,
      chromePath: this.#opts.chromePath,
      puppeteerArgs: this.#opts.puppeteerArgs,
    });
    this.#client = client;
    const current = () => generation === this.#generation && !this.#stopped;

    client.on(WA_EVENTS.QR, (qr) => {
      qrToDataUrl(qr).then((qr_code) => current() && this._setStatus(STATUS.QR_NEEDED, { qr_code, phone: null, raw_state: null }));
    });
    client.on(WA_EVENTS.AUTHENTICATED, () => current() && this.#opts.log('bridge: whatsapp authenticated'));
    client.on(WA_EVENTS.READY, () => {
      if (!current()) return;
      this.#attempt = 0;
      const user = client.info?.wid?.user;
      this._setStatus(STATUS.CONNECTED, { phone: user ? `+${user}` : null, last_error: null, raw_state: WA_STATES.CONNECTED });
    });
    client.on(WA_EVENTS.AUTH_FAILURE, (message) => current() && this.#fail(`auth_failure: ${message}`));
    // `reason` is a WA_STATES name (TOS_BLOCK, UNPAIRED, CONFLICT...) or "LOGOUT".
    client.on(WA_EVENTS.DISCONNECTED, (reason) => current() && this.#fail(`disconnected: ${reason}`, String(reason)));
    client.on(WA_EVENTS.CHANGE_STATE, (state) => {
      if (!current()) return;
      this.#opts.log(`bridge: whatsapp state ${state}`);
      // OPENING or TIMEOUT while `connected` is how a frozen page shows: reported, for the backend to judge.
      this._setStatus(this.status().status, { raw_state: String(state) });
    });
    client.on(WA_EVENTS.MESSAGE_ACK, (msg, ack) => {
      if (!current() || msg?.id?.fromMe === false) return;
      const delivery = ackToDelivery(ack);
      if (delivery) this.emit('ack', { whatsapp_message_id: msg.id._serialized, ack: delivery, at: new Date().toISOString() });
    });
    client.on(WA_EVENTS.MESSAGE_RECEIVED, (msg) => {
      if (!current()) return;
      const inbound = inboundFromMessage(msg);
      if (!inbound) return;
      // A chain, so a slow LID lookup cannot let a later message overtake an earlier one.
      this.#inbound = this.#inbound.then(() => this.#forwardInbound(client, inbound)).catch(() => {});
    });

    if (fresh) this._setStatus(STATUS.INITIALIZING, { raw_state: null });
    const init = Promise.resolve()
      .then(() => client.initialize())
      .catch((err) => current() && this.#fail(`initialize failed: ${err?.message ?? err}`));
    this.#initializing = init;
    init.finally(() => {
      if (this.#initializing === init) this.#initializing = null;
    });
  }

  /**
   * The client is unusable: report why, then rebuild it after a backoff; a banned number
   * (TOS_BLOCK, SMB_TOS_BLOCK) is not rebuilt, as reconnecting cannot help: a person must act,
   * then POST /session/restart.
   */
  #fail(reason, waReason = null) {
    const fields = { last_error: reason, last_disconnect_reason: waReason ?? reason };
    if (waReason && Object.values(WA_STATES).includes(waReason)) fields.raw_state = waReason;
    this._setStatus(STATUS.DISCONNECTED, fields);
    this.#generation += 1; // ignore whatever the dying client says next
    if (WA_BANNED_STATES.includes(waReason)) {
      this.#opts.log(`bridge: WhatsApp reports ${waReason}; not reconnecting until told to (POST /session/restart)`);
      this.#teardown().catch(() => {});
      return;
    }
    this.#scheduleRebuild();
  }

  #scheduleRebuild() {
    if (this.#stopped || this.#retryTimer) return;
    const { initialMs, maxMs } = this.#opts.backoff;
    const base = Math.min(maxMs, initialMs * 2 ** this.#attempt);
    const delay = Math.round(base / 2 + (Math.random() * base) / 2); // jitter: 50-100% of base
    this.#attempt += 1;
    this.#opts.log(`bridge: rebuilding the whatsapp client in ${delay} ms (attempt ${this.#attempt})`);
    // Destroy now so no browser idles during the wait; connect when the timer fires.
    const teardown = this.#teardown();
    const timer = setTimeout(async () => {
      await teardown;
      if (this.#retryTimer !== timer) return; // restart() or stop() took over meanwhile
      this.#retryTimer = null;
      if (!this.#stopped) this.#connect();
    }, delay);
    this.#retryTimer = timer;
  }

  /** Destroy the current client and make sure its Chromium is gone. */
  async #teardown() {
    const client = this.#client;
    const initializing = this.#initializing;
    this.#client = null;
    if (!client) return;
    client.removeAllListeners();
    // Destroying while puppeteer is still launching would miss the browser it is about to create.
    if (initializing) {
      const settled = await withTimeout(initializing, DESTROY_TIMEOUT_MS, 'initialize').then(() => true, () => false);
      if (!settled) initializing.then(() => this.#destroy(client)); // a launch that returns late is destroyed then
    }
    await this.#destroy(client);
  }

  async #destroy(client) {
    try {
      await withTimeout(client.destroy(), DESTROY_TIMEOUT_MS, 'destroy');
    } catch (err) {
      this.#opts.log(`bridge: client.destroy failed (${err.message}); killing its browser`);
      try {
        client.pupBrowser?.process()?.kill('SIGKILL');
      } catch {
        // the browser was already gone
      }
    }
    // Only a real client owns a profile directory with browsers in it; never touch the next client's.
    if (!this.#opts.clientFactory && !this.#client && findBrowserPids(this.userDataDir).length > 0) {
      const killed = killBrowserProcesses(this.userDataDir);
      this.#opts.log(`bridge: killed ${killed} leftover chromium process(es)`);
    }
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
