// A deterministic fake WhatsApp for development and tests. Rules (also in README):
// - starts `initializing` (raw state OPENING), then `connected` (CONNECTED) as +15550000001
//   shortly after start();
// - a number whose last four digits are 0000 is not on WhatsApp -> not_registered;
// - sending while not connected -> not_connected;
// - `fail_next: n` makes the next n accepted sends fail with send_failed;
// - every sent message gets acks sent -> delivered -> read, ackDelayMs apart.
// - a message with an attachment is recorded with `media: {sha256, size, mime_type, filename,
//   kind}`, sha256 and size computed here from the file handed over (tests check what was
//   sent, not what was claimed), and its caption as `body`; a text has `media: null`.
// - injectInbound() (POST /simulator/inbound) emits an incoming reply as `inbound`; its sender
//   now has a chat with us (see restrict_new_chats).
// Misbehaviour, per process (so per number), until set back:
// - `pending_acks: true` (POST /simulator/config): sends succeed but no ack ever comes, as when
//   WhatsApp Web shows connected while nothing leaves;
// - `restrict_new_chats: true`: a send to a recipient this simulator never sent to (nor heard
//   from) fails with restricted_new_chats (WhatsApp's error 463); known chats still work;
// - `memory_growth_mb_per_min: n`: rss_bytes grows by n MiB a minute from that moment, like a
//   leaking browser; a restart, stop or logout frees it (the count starts again from zero);
// - POST /simulator/state {raw_state}: whatsapp-web.js's state names. CONNECTED connects.
//   OPENING or TIMEOUT freeze the page: the status stays what it was (connected), sends are
//   accepted and never acked, until a restart (or stop/start) thaws it. Any other state
//   disconnects as whatsapp-web.js does: status `disconnected`, raw_state and
//   last_disconnect_reason that state. UNPAIRED also unpairs (a restart asks for a QR);
//   TOS_BLOCK and SMB_TOS_BLOCK are bans: a restart comes back to the same state, until the
//   state CONNECTED (or status connected) is forced.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { ACK_DEVICE, ACK_READ, ACK_SERVER, STATUS, WA_BANNED_STATES, WA_KEPT_STATES, WA_STATES, ackToDelivery } from '../constants.js';
import { BridgeError } from '../errors.js';
import { qrToDataUrl } from '../qr.js';
import { BaseDriver } from './base.js';
import { treeRssBytes } from './browser-procs.js';

export const SIMULATOR_PHONE = '+15550000001';
const INIT_MS = 20; // long enough for `initializing` to be observable, short enough for tests
const MIB = 1024 * 1024;

export class SimulatorDriver extends BaseDriver {
  name = 'simulator';
  /** every message "sent", in order */
  outbox = [];
  #latencyMs;
  #ackDelayMs;
  #failNext = 0;
  #paired = true; // logout unpairs; forcing `connected` pairs again
  #timers = new Set();
  #pendingAcks = false;
  #restrictNewChats = false;
  #chats = new Set(); // E.164 phones we have a chat with (sent to, or heard from)
  #frozen = false; // the page is stuck in OPENING/TIMEOUT
  #bannedAs = null; // TOS_BLOCK or SMB_TOS_BLOCK, sticky across restarts
  #growthMbPerMin = 0;
  #growthSince = Date.now();

  constructor({ latencyMs = 0, ackDelayMs = 50 } = {}) {
    super();
    this.#latencyMs = latencyMs;
    this.#ackDelayMs = ackDelayMs;
  }

  async start() {
    this.#boot();
  }

  async stop() {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    this.#thaw();
  }

  async send(to, body, { idempotency_key = null, media = null } = {}) {
    if (this.#latencyMs > 0) await this.#sleep(this.#latencyMs);
    if (this.status().status !== STATUS.CONNECTED) {
      throw new BridgeError('not_connected', `WhatsApp is ${this.status().status}; cannot send now`);
    }
    if (to.endsWith('0000')) {
      throw new BridgeError('not_registered', `${to} is not on WhatsApp`, 'to');
    }
    if (this.#restrictNewChats && !this.#chats.has(to)) {
      throw new BridgeError('restricted_new_chats', `WhatsApp refused a new chat with ${to} (error 463); existing chats still work`, 'to');
    }
    if (this.#failNext > 0) {
      this.#failNext -= 1;
      throw new BridgeError('send_failed', 'simulated send failure (fail_next)');
    }
    const attachment = media ? { ...(await digestFile(media.path)), mime_type: media.mime_type, filename: media.filename, kind: media.kind } : null;
    const whatsapp_message_id = `true_${to.slice(1)}@c.us_${randomBytes(10).toString('hex').toUpperCase()}`;
    this.outbox.push({ to, body, media: attachment, idempotency_key, whatsapp_message_id, sent_at: new Date().toISOString() });
    this.#chats.add(to);
    if (!this.#pendingAcks && !this.#frozen) this.#scheduleAcks(whatsapp_message_id);
    return { whatsapp_message_id };
  }

  async logout() {
    this.#paired = false;
    this.#thaw();
    await this.#needQr(null, { last_disconnect_reason: 'LOGOUT' });
    return this.status().status;
  }

  async restart() {
    this.#thaw();
    this.#boot();
    return this.status().status;
  }

  /** rss_bytes: this process, plus the simulated leak (memory_growth_mb_per_min). */
  rssBytes() {
    const minutes = (Date.now() - this.#growthSince) / 60_000;
    return treeRssBytes() + Math.round(this.#growthMbPerMin * minutes * MIB);
  }

  /** POST /simulator/state: force a status, as if WhatsApp had changed it. */
  async forceStatus(status, reason = null) {
    if (status === STATUS.CONNECTED) {
      this.#paired = true;
      this.#bannedAs = null;
      this.#frozen = false;
      this._setStatus(STATUS.CONNECTED, { phone: SIMULATOR_PHONE, last_error: null, raw_state: WA_STATES.CONNECTED });
    } else if (status === STATUS.QR_NEEDED) {
      this.#paired = false;
      await this.#needQr(reason);
    } else if (status === STATUS.DISCONNECTED) {
      this._setStatus(STATUS.DISCONNECTED, { last_error: reason ?? 'simulated disconnection', last_disconnect_reason: reason ?? 'simulated disconnection' });
    } else {
      throw new BridgeError('bad_request', 'status must be connected, disconnected or qr_needed', 'status');
    }
  }

  /** POST /simulator/state {raw_state}: whatsapp-web.js reports this state (rules at the top). */
  async forceRawState(state) {
    if (!Object.values(WA_STATES).includes(state)) {
      throw new BridgeError('bad_request', `raw_state must be one of ${Object.values(WA_STATES).join(', ')}`, 'raw_state');
    }
    if (state === WA_STATES.CONNECTED) return this.forceStatus(STATUS.CONNECTED);
    if (WA_KEPT_STATES.includes(state)) {
      // whatsapp-web.js keeps the client: our status does not move, the page just stops working.
      this.#frozen = state === WA_STATES.OPENING || state === WA_STATES.TIMEOUT;
      this._setStatus(this.status().status, { raw_state: state });
      return;
    }
    if (WA_BANNED_STATES.includes(state)) this.#bannedAs = state;
    if (state === WA_STATES.UNPAIRED || state === WA_STATES.UNPAIRED_IDLE) this.#paired = false;
    this.#disconnectAs(state);
  }

  /**
   * POST /simulator/inbound: someone replied. Emits the same `inbound` event the wwebjs driver does.
   * @param {{phone: string, text: string, whatsapp_message_id?: string|null, at?: string|null}} message validated by the server
   * @returns {{phone: string, text: string, whatsapp_message_id: string, at: string}} what was emitted
   */
  injectInbound({ phone, text, whatsapp_message_id = null, at = null }) {
    const inbound = {
      phone,
      text,
      // The shape of an incoming whatsapp-web.js id: false_<chat>_<message>.
      whatsapp_message_id: whatsapp_message_id ?? `false_${phone.slice(1)}@c.us_${randomBytes(10).toString('hex').toUpperCase()}`,
      at: at ?? new Date().toISOString(),
    };
    this.#chats.add(phone); // they wrote first: no longer a new chat
    this.emit('inbound', inbound);
    return inbound;
  }

  /** POST /simulator/config */
  configure({ latency_ms, ack_delay_ms, fail_next, pending_acks, restrict_new_chats, memory_growth_mb_per_min } = {}) {
    if (latency_ms !== undefined) this.#latencyMs = latency_ms;
    if (ack_delay_ms !== undefined) this.#ackDelayMs = ack_delay_ms;
    if (fail_next !== undefined) this.#failNext = fail_next;
    if (pending_acks !== undefined) this.#pendingAcks = pending_acks;
    if (restrict_new_chats !== undefined) this.#restrictNewChats = restrict_new_chats;
    if (memory_growth_mb_per_min !== undefined) {
      this.#growthMbPerMin = memory_growth_mb_per_min;
      this.#growthSince = Date.now();
    }
    return {
      latency_ms: this.#latencyMs,
      ack_delay_ms: this.#ackDelayMs,
      fail_next: this.#failNext,
      pending_acks: this.#pendingAcks,
      restrict_new_chats: this.#restrictNewChats,
      memory_growth_mb_per_min: this.#growthMbPerMin,
    };
  }

  #boot() {
    this._setStatus(STATUS.INITIALIZING, { raw_state: WA_STATES.OPENING });
    this.#later(INIT_MS, () => {
      if (this.#bannedAs) this.#disconnectAs(this.#bannedAs);
      else if (this.#paired) this._setStatus(STATUS.CONNECTED, { phone: SIMULATOR_PHONE, last_error: null, raw_state: WA_STATES.CONNECTED });
      else this.#needQr().catch(() => {});
    });
  }

  /** A restart frees a frozen page and a leaking browser. */
  #thaw() {
    this.#frozen = false;
    this.#growthSince = Date.now();
  }

  #disconnectAs(state) {
    // As whatsapp-web.js: `disconnected` with the state as its reason (wwebjs.js words last_error the same).
    this._setStatus(STATUS.DISCONNECTED, { last_error: `disconnected: ${state}`, raw_state: state, last_disconnect_reason: state });
  }

  async #needQr(reason = null, fields = {}) {
    // A fresh payload each time, like WhatsApp rotating its QR.
    const qr = `2@simulator-${randomBytes(12).toString('base64url')},whatsched`;
    this._setStatus(STATUS.QR_NEEDED, { qr_code: await qrToDataUrl(qr), phone: null, last_error: reason, raw_state: null, ...fields });
  }

  #scheduleAcks(whatsapp_message_id) {
    const emit = (ack) => this.emit('ack', { whatsapp_message_id, ack: ackToDelivery(ack), at: new Date().toISOString() });
    // Acks always come after send() resolves, as they would from the network.
    this.#later(0, () => emit(ACK_SERVER));
    this.#later(this.#ackDelayMs, () => emit(ACK_DEVICE));
    this.#later(2 * this.#ackDelayMs, () => emit(ACK_READ));
  }

  #later(ms, fn) {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  #sleep(ms) {
    // Not tracked by #later: stop() must not leave a send waiting forever.
    return new Promise((resolve) => setTimeout(resolve, ms));
  }
}

/** The SHA-256 and size of a file, read as a stream. */
async function digestFile(file) {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(file)) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { sha256: hash.digest('hex'), size };
}
