// A deterministic fake WhatsApp for development and tests. Rules (also in README):
// - starts `initializing`, then `connected` as +15550000001 shortly after start();
// - a number whose last four digits are 0000 is not on WhatsApp -> not_registered;
// - sending while not connected -> not_connected;
// - `fail_next: n` makes the next n accepted sends fail with send_failed;
// - every sent message gets acks sent -> delivered -> read, ackDelayMs apart.
// - injectInbound() (POST /simulator/inbound) emits an incoming reply as `inbound`.
import { randomBytes } from 'node:crypto';
import { ACK_DEVICE, ACK_READ, ACK_SERVER, STATUS, ackToDelivery } from '../constants.js';
import { BridgeError } from '../errors.js';
import { qrToDataUrl } from '../qr.js';
import { BaseDriver } from './base.js';

export const SIMULATOR_PHONE = '+15550000001';
const INIT_MS = 20; // long enough for `initializing` to be observable, short enough for tests

export class SimulatorDriver extends BaseDriver {
  name = 'simulator';
  /** every message "sent", in order */
  outbox = [];
  #latencyMs;
  #ackDelayMs;
  #failNext = 0;
  #paired = true; // logout unpairs; forcing `connected` pairs again
  #timers = new Set();

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
  }

  async send(to, body, { idempotency_key = null } = {}) {
    if (this.#latencyMs > 0) await this.#sleep(this.#latencyMs);
    if (this.status().status !== STATUS.CONNECTED) {
      throw new BridgeError('not_connected', `WhatsApp is ${this.status().status}; cannot send now`);
    }
    if (to.endsWith('0000')) {
      throw new BridgeError('not_registered', `${to} is not on WhatsApp`, 'to');
    }
    if (this.#failNext > 0) {
      this.#failNext -= 1;
      throw new BridgeError('send_failed', 'simulated send failure (fail_next)');
    }
    const whatsapp_message_id = `true_${to.slice(1)}@c.us_${randomBytes(10).toString('hex').toUpperCase()}`;
    this.outbox.push({ to, body, idempotency_key, whatsapp_message_id, sent_at: new Date().toISOString() });
    this.#scheduleAcks(whatsapp_message_id);
    return { whatsapp_message_id };
  }

  async logout() {
    this.#paired = false;
    await this.#needQr();
    return this.status().status;
  }

  async restart() {
    this.#boot();
    return this.status().status;
  }

  /** POST /simulator/state: force a status, as if WhatsApp had changed it. */
  async forceStatus(status, reason = null) {
    if (status === STATUS.CONNECTED) {
      this.#paired = true;
      this._setStatus(STATUS.CONNECTED, { phone: SIMULATOR_PHONE, last_error: null });
    } else if (status === STATUS.QR_NEEDED) {
      this.#paired = false;
      await this.#needQr(reason);
    } else if (status === STATUS.DISCONNECTED) {
      this._setStatus(STATUS.DISCONNECTED, { last_error: reason ?? 'simulated disconnection' });
    } else {
      throw new BridgeError('bad_request', 'status must be connected, disconnected or qr_needed', 'status');
    }
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
    this.emit('inbound', inbound);
    return inbound;
  }

  /** POST /simulator/config */
  configure({ latency_ms, ack_delay_ms, fail_next } = {}) {
    if (latency_ms !== undefined) this.#latencyMs = latency_ms;
    if (ack_delay_ms !== undefined) this.#ackDelayMs = ack_delay_ms;
    if (fail_next !== undefined) this.#failNext = fail_next;
    return { latency_ms: this.#latencyMs, ack_delay_ms: this.#ackDelayMs, fail_next: this.#failNext };
  }

  #boot() {
    this._setStatus(STATUS.INITIALIZING);
    this.#later(INIT_MS, () => {
      if (this.#paired) this._setStatus(STATUS.CONNECTED, { phone: SIMULATOR_PHONE, last_error: null });
      else this.#needQr().catch(() => {});
    });
  }

  async #needQr(reason = null) {
    // A fresh payload each time, like WhatsApp rotating its QR.
    const qr = `2@simulator-${randomBytes(12).toString('base64url')},whatsched`;
    this._setStatus(STATUS.QR_NEEDED, { qr_code: await qrToDataUrl(qr), phone: null, last_error: reason });
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
