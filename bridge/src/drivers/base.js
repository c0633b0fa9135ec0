// The part every driver shares: the connection status snapshot served by
// GET /status, and the `status` event emitted whenever that snapshot changes.
//
// Driver interface (see simulator.js and wwebjs.js):
//   start(), stop(), status(), send(to, body, meta) -> {whatsapp_message_id} or throws BridgeError,
//   logout(), restart(); events: 'status' (snapshot), 'ack' ({whatsapp_message_id, ack, at}),
//   'inbound' ({phone, text, whatsapp_message_id, at}: a reply from a person, phone in E.164).
import { EventEmitter } from 'node:events';
import { STATUS } from '../constants.js';

export class BaseDriver extends EventEmitter {
  #state = { status: STATUS.INITIALIZING, qr_code: null, phone: null, since: new Date().toISOString(), last_error: null };

  /** @returns {{status: string, qr_code: string|null, phone: string|null, since: string, last_error: string|null}} */
  status() {
    return { ...this.#state };
  }

  /**
   * Move to `status`; `since` only moves when the status itself changes.
   * @param {string} status
   * @param {{qr_code?: string|null, phone?: string|null, last_error?: string|null}} [fields]
   */
  _setStatus(status, fields = {}) {
    const prev = this.#state;
    const next = {
      status,
      // A QR only means something while we are waiting for a scan.
      qr_code: status === STATUS.QR_NEEDED ? (fields.qr_code ?? prev.qr_code) : null,
      phone: 'phone' in fields ? fields.phone : prev.phone,
      since: status === prev.status ? prev.since : new Date().toISOString(),
      last_error: 'last_error' in fields ? fields.last_error : prev.last_error,
    };
    const changed = ['status', 'qr_code', 'phone', 'last_error'].some((k) => next[k] !== prev[k]);
    this.#state = next;
    if (changed) this.emit('status', this.status());
  }
}
