// Every protocol value the bridge speaks, in one place: whatsapp-web.js's event
// names and ack levels on one side, our statuses, delivery events and error
// codes on the other, and the single function that maps WhatsApp acks to ours.

import { readFileSync } from 'node:fs';

// The values the backend and the database check alike (the E.164 pattern, the longest message
// id, our connection statuses) are contracts/limits.json's, read once at startup: the bridge runs
// from the checkout (deploy/whatsched-bridge.service), so the file is always beside it.
const LIMITS = JSON.parse(readFileSync(new URL('../../contracts/limits.json', import.meta.url), 'utf8'));

// whatsapp-web.js Client event names (whatsapp-web.js src/util/Constants.js `Events`).
export const WA_EVENTS = Object.freeze({
  QR: 'qr',
  READY: 'ready',
  AUTHENTICATED: 'authenticated',
  AUTH_FAILURE: 'auth_failure',
  DISCONNECTED: 'disconnected',
  MESSAGE_ACK: 'message_ack',
  MESSAGE_RECEIVED: 'message', // a new message from someone else (not emitted for our own)
  CHANGE_STATE: 'change_state',
});

// whatsapp-web.js connection states (whatsapp-web.js `WAState`), reported as `raw_state`.
// whatsapp-web.js keeps a client in CONNECTED, OPENING, PAIRING or TIMEOUT; any other state
// makes it emit `disconnected` with that state as the reason (or "LOGOUT" on a logout).
export const WA_STATES = Object.freeze({
  CONFLICT: 'CONFLICT',
  CONNECTED: 'CONNECTED',
  DEPRECATED_VERSION: 'DEPRECATED_VERSION',
  OPENING: 'OPENING',
  PAIRING: 'PAIRING',
  PROXYBLOCK: 'PROXYBLOCK',
  SMB_TOS_BLOCK: 'SMB_TOS_BLOCK',
  TIMEOUT: 'TIMEOUT',
  TOS_BLOCK: 'TOS_BLOCK',
  UNLAUNCHED: 'UNLAUNCHED',
  UNPAIRED: 'UNPAIRED',
  UNPAIRED_IDLE: 'UNPAIRED_IDLE',
});
// The states in which whatsapp-web.js keeps the client (a page that stays in OPENING or
// TIMEOUT is frozen: sends go nowhere).
export const WA_KEPT_STATES = Object.freeze([WA_STATES.CONNECTED, WA_STATES.OPENING, WA_STATES.PAIRING, WA_STATES.TIMEOUT]);
// WhatsApp banned the number: reconnecting cannot help, a person must act.
export const WA_BANNED_STATES = Object.freeze([WA_STATES.TOS_BLOCK, WA_STATES.SMB_TOS_BLOCK]);
// The `disconnected` reason whatsapp-web.js gives when the phone logged the session out.
export const WA_LOGOUT_REASON = 'LOGOUT';

// whatsapp-web.js chat id suffixes (the `server` part of a Wid).
export const WID_USER = '@c.us'; // a person, by phone number: "56912345678@c.us"
export const WID_LID = '@lid'; // a person, by WhatsApp's privacy id: "123456789012345@lid" (no phone in it)
export const WID_GROUP = '@g.us';
export const STATUS_BROADCAST = 'status@broadcast';

// whatsapp-web.js MessageTypes whose body is words the sender typed: plain text, the
// caption of a photo/video/document, and the text of a tapped button or list row.
// Others (vcard text, a location's thumbnail, a poll's title, stickers, voice) are not replies.
export const INBOUND_TEXT_TYPES = Object.freeze(['chat', 'image', 'video', 'document', 'buttons_response', 'list_response', 'template_button_reply']);

// whatsapp-web.js message ack levels (whatsapp-web.js `MessageAck`).
export const ACK_ERROR = -1;
export const ACK_PENDING = 0;
export const ACK_SERVER = 1;
export const ACK_DEVICE = 2;
export const ACK_READ = 3;
export const ACK_PLAYED = 4;

// Our WhatsApp connection statuses, as reported by GET /status and events: contracts/limits.json's
// connection_states, each named in capitals (CONNECTED, DISCONNECTED, QR_NEEDED, INITIALIZING, and
// STOPPED: after POST /session/stop, no client, no browser, until /session/start).
export const STATUS = Object.freeze(Object.fromEntries(LIMITS.connection_states.map((s) => [s.toUpperCase(), s])));

// Our delivery events for a sent message (the `ack` field of message_ack events).
export const DELIVERY = Object.freeze({
  SENT: 'sent',
  DELIVERED: 'delivered',
  READ: 'read',
  FAILED: 'failed',
});

// Our event types POSTed to BRIDGE_EVENTS_URL.
export const EVENT_TYPES = Object.freeze({
  WHATSAPP_STATUS: 'whatsapp_status',
  MESSAGE_ACK: 'message_ack',
  INBOUND_MESSAGE: 'inbound_message',
  // {type, number_id, url}: where the bridge of a number listens; at start and with every status.
  BRIDGE_REGISTERED: 'bridge_registered',
});

// Our error codes with the HTTP status each is answered with.
export const ERRORS = Object.freeze({
  bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  invalid_number: 422,
  not_registered: 422,
  // WhatsApp's error 463: this number may not start new chats for now (existing chats still
  // work). Transient for the delivery (the recipient is fine; it waits while the number's
  // health pauses it), and evidence of a coming restriction for the backend.
  restricted_new_chats: 403,
  rate_limited: 429,
  send_failed: 502,
  not_connected: 503,
  // POST /send with `media`: the file at the URL is not the one described (its size or SHA-256
  // differ). Permanent: fetching the same URL again gives the same bytes; nothing was sent.
  media_mismatch: 422,
  // The file could not be fetched (network error, timeout, a non-2xx answer, too many
  // redirects, the bridge's disk). Transient: a retry (with a fresh signed URL) may succeed.
  media_unavailable: 502,
});

// How whatsapp-web.js reports that error when sendMessage fails: the page's error names the
// code (463) or WhatsApp's words ("Your account has been restricted"); the wwebjs driver answers
// such a failure with restricted_new_chats, not send_failed, so the backend counts it as health.
export const RESTRICTED_NEW_CHATS_ERROR = /\b463\b|\brestricted\b/i;

// Request limits of POST /send.
export const E164_PATTERN = new RegExp(LIMITS.e164_pattern);
export const MAX_BODY_CHARS = 4096;
export const MAX_IDEMPOTENCY_KEY_CHARS = 200;
export const MAX_REQUEST_BYTES = 64 * 1024;
// POST /send `media`: what the backend describes of the one attachment (the bridge fetches the bytes).
export const MEDIA_KINDS = Object.freeze(['image', 'video', 'audio', 'document']);
export const MAX_MEDIA_BYTES = 100 * 1024 * 1024; // WhatsApp's own limit for documents
export const MAX_MEDIA_URL_CHARS = 2000;
export const MAX_MEDIA_NAME_CHARS = 255; // mime_type and filename
export const SHA256_PATTERN = /^[0-9a-f]{64}$/;
// POST /simulator/inbound: the longest whatsapp_message_id accepted (the backend's and the database's).
export const MAX_MESSAGE_ID_CHARS = LIMITS.whatsapp_message_id_max_chars;

// Headers of the signed events sent to the backend.
export const SIGNATURE_HEADER = 'X-Bridge-Signature';
export const TIMESTAMP_HEADER = 'X-Bridge-Timestamp';

/**
 * Map a whatsapp-web.js ack value to our delivery event.
 * @param {number} ack whatsapp-web.js MessageAck value
 * @returns {'sent'|'delivered'|'read'|'failed'|null} null when nothing happened yet
 */
export function ackToDelivery(ack) {
  switch (ack) {
    case ACK_ERROR:
      return DELIVERY.FAILED;
    case ACK_PENDING:
      return null;
    case ACK_SERVER:
      return DELIVERY.SENT;
    case ACK_DEVICE:
      return DELIVERY.DELIVERED;
    case ACK_READ:
    case ACK_PLAYED: // a played voice note has also been read
      return DELIVERY.READ;
    default:
      return null; // unknown future levels are ignored rather than guessed
  }
}
