// The one error type the bridge answers with: a stable code the dispatcher can
// act on, a human message, and the request field at fault when there is one.
import { ERRORS } from './constants.js';

export class BridgeError extends Error {
  /**
   * @param {keyof typeof ERRORS} code
   * @param {string} message
   * @param {string} [field]
   */
  constructor(code, message, field) {
    super(message);
    if (!(code in ERRORS)) throw new Error(`unknown bridge error code ${code}`);
    this.name = 'BridgeError';
    this.code = code;
    this.field = field;
  }

  get httpStatus() {
    return ERRORS[this.code];
  }

  toJSON() {
    return this.field
      ? { code: this.code, message: this.message, field: this.field }
      : { code: this.code, message: this.message };
  }
}
