/**
 * The events a user receives in real time, the same on our socket (`/ws/{user_id}`, the `type`
 * field) and on Supabase Realtime (the broadcast's `event` name, the payload being the same JSON).
 * Shapes: supabase/migrations/*_realtime_events.sql, *_replies_and_opt_out.sql,
 * backend/whatsched/imports/progress.py and backend/whatsched/realtime/protocol.py.
 */

/** What a message can be; the guide's list. */
export type MessageStatus = "draft" | "scheduled" | "sending" | "sent" | "paused" | "cancelled" | "failed";

export interface MessageStatusUpdate {
  type: "message_status_update";
  message_id: string;
  status: MessageStatus;
  /** ISO 8601, UTC, with Z. */
  timestamp: string;
}

/** `sent` counts delivered recipients; the last one of a message carries its final counts. */
export interface MessageProgress {
  type: "message_progress";
  message_id: string;
  sent: number;
  total: number;
  failed: number;
}

export interface NotificationEvent {
  id: string;
  type: "success" | "error" | "warning" | "info";
  title: string;
  message: string;
  timestamp: string;
  related_entity_type?: string | null;
  related_entity_id?: string | null;
}

export interface NewNotification {
  type: "new_notification";
  notification: NotificationEvent;
}

export interface ImportProgress {
  type: "import_progress";
  import_id: string;
  stage: "reading" | "importing" | "done" | "failed";
  processed: number;
  total: number;
}

export type WhatsAppConnection = "connected" | "disconnected" | "qr_needed" | "initializing";

export interface WhatsAppStatus {
  type: "whatsapp_status";
  status: WhatsAppConnection;
  /** Only while `status` is `qr_needed`: the QR code to scan (a data URL); the default number's only. */
  qr_code?: string | null;
  /** Which WhatsApp number (GET /api/whatsapp/numbers) the status is of. */
  number_id?: string;
  /** The number's own status, when its health paused it (`paused`) or a person resumed it. */
  number_status?: "stopped" | "starting" | "qr_needed" | "connected" | "failed" | "paused" | "blocked";
  /** Why health paused it: the facts counted and the latest one. */
  reason?: string;
}

export interface ReplyEvent {
  id: string;
  contact_id: string;
  phone: string;
  text: string;
  kind: "reply" | "opt_out" | "opt_in";
  message_id: string | null;
  received_at: string;
}

export interface ReplyReceived {
  type: "reply_received";
  reply: ReplyEvent;
}

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

/** Everything the server relays from the database, by type. */
export interface WhatsschedEvents {
  message_status_update: MessageStatusUpdate;
  message_progress: MessageProgress;
  new_notification: NewNotification;
  import_progress: ImportProgress;
  whatsapp_status: WhatsAppStatus;
  reply_received: ReplyReceived;
  resync: Resync;
}

export type WhatsschedEvent = WhatsschedEvents[keyof WhatsschedEvents];

/** The event names relayed from the database (the Realtime broadcast names). */
export const EVENT_TYPES = [
  "message_status_update",
  "message_progress",
  "new_notification",
  "import_progress",
  "whatsapp_status",
  "reply_received",
] as const satisfies readonly (keyof WhatsschedEvents)[];

export type RelayedEventType = (typeof EVENT_TYPES)[number];
