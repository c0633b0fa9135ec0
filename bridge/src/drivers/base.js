// The part every driver shares: the connection status snapshot served by
// GET /status, the `status` event emitted whenever that snapshot changes, and the
// session commands (POST /session/start|stop|restart|logout) built on each driver's own.
//
// Driver interface (see simulator.js and wwebjs.js):
//   start(), stop(), status(), send(to, body, meta) -> {whatsapp_message_id} or throws BridgeError
//   (meta: {idempotency_key, media}; media null for a text, else the checked file from media.js,
//   {path, sha256, size, mime_type, filename, kind}, with `body` its caption, possibly empty),
//   logout(), restart(), rssBytes(); events: 'status' (snapshot), 'ack' ({whatsapp_message_id, ack, at}),
//   'inbound' ({phone, text, whatsapp_message_id, at}: a reply from a person, phone in E.164).
import { EventEmitter } from 'node:events';
import { STATUS } from '../constants.js';
import { treeRssBytes } from './browser-procs.js';

const SNAPSHOT_FIELDS = ['status', 'qr_code', 'phone', 'last_error', 'raw_state', 'last_disconnect_reason'];

export class BaseDriver extends EventEmitter {
  #state = {
    status: STATUS.INITIALIZING,
    qr_code: null,
    phone: null,
    since: new Date().toISOString(),
    last_error: null,
    raw_state: null, // whatsapp-web.js's own state name (WA_STATES), null until it says one
    last_disconnect_reason: null, // the last `disconnected` reason (a WA_STATES name, "LOGOUT", or ours)
  };

  /**
   * @returns {{status: string, qr_code: string|null, phone: string|null, since: string, last_error: string|null,
   *   raw_state: string|null, last_disconnect_reason: string|null}}
   */
  status() {
    return { ...this.#state };
  }

  /** Resident memory of this process and its browser, in bytes. */
  rssBytes() {
    return treeRssBytes(this.userDataDir ?? null);
  }

  /** POST /session/start: bring a stopped session up; a running one is left alone. */
  async startSession() {
    if (this.status().status === STATUS.STOPPED) await this.start();
    return this.status().status;
  }

  /** POST /session/stop: close the client (and its browser) and stay `stopped` until started. */
  async stopSession() {
    await this.stop();
    this._setStatus(STATUS.STOPPED, { last_disconnect_reason: 'stopped' });
    return this.status().status;
  }

  /** POST /session/restart (and /restart): a stopped session is started instead. */
  async restartSession() {
    if (this.status().status === STATUS.STOPPED) return this.startSession();
    return this.restart();
  }

  /** POST /session/logout (and /logout): unpair the phone; a stopped session stays stopped. */
  async logoutSession() {
    const stopped = this.status().status === STATUS.STOPPED;
    await this.logout();
    if (stopped) {
      await this.stop();
      this._setStatus(STATUS.STOPPED, { phone: null });
    }
    return this.status().status;
  }

  /**
   * Move to `status`; `since` only moves when the status itself changes.
   * @param {string} status
   * @param {{qr_code?: string|null, phone?: string|null, last_error?: string|null, raw_state?: string|null,
   *   last_disconnect_reason?: string|null}} [fields]
   */
  _setStatus(status, fields = {}) {
    const prev = this.#state;
    const keep = (k) => (k in fields ? fields[k] : prev[k]);
    const next = {
      status,
      // A QR only means something while we are waiting for a scan.
      qr_code: status === STATUS.QR_NEEDED ? (fields.qr_code ?? prev.qr_code) : null,
      phone: keep('phone'),
      since: status === prev.status ? prev.since : new Date().toISOString(),
      last_error: keep('last_error'),
      raw_state: keep('raw_state'),
      last_disconnect_reason: keep('last_disconnect_reason'),
    };
    const changed = SNAPSHOT_FIELDS.some((k) => next[k] !== prev[k]);
    this.#state = next;
    if (changed) this.emit('status', this.status());
  }
}
