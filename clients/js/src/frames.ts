/**
 * The socket's own frames, which are not events of the catalog (contracts/events.json): they say
 * something about the connection, not about the user's data, and exist on no other channel.
 * Hand-written (the server's: backend/whatsched/realtime/protocol.py); src/events.ts re-exports them.
 */

/**
 * Events may have been missed: refetch what you show. Sent by the server when its event stream was
 * interrupted (reason `events_may_have_been_missed`; snapshots of your subscriptions follow), and
 * emitted by these clients themselves after they reconnected (reason `reconnected`).
 */
export interface Resync {
  type: "resync";
  reason: string;
}

/** The socket's answer to a frame it could not act on (`message_not_found`, `invalid_token`, ...). */
export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  message_id?: string;
}
