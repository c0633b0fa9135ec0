/**
 * The same events over Supabase Realtime, for a frontend talking to Supabase directly (no API
 * process in the path): private broadcast channels `user:<uuid>` (your events) and `whatsapp` (the
 * WhatsApp connection), each broadcast named like the event's `type`, its payload the same JSON the
 * socket sends. Takes a supabase-js client (v2); supabase-js reconnects and rejoins by itself, and
 * refreshes the channels' token when the session refreshes.
 *
 * Realtime keeps no history and sends no snapshot: read what you show once you are subscribed, and
 * again on every `resync` (emitted here whenever a channel joins again after a loss).
 */
import { Emitter } from "./emitter.js";
import type { WhatsschedEvents } from "./events.js";
import { EVENT_TYPES } from "./events.js";

export type ChannelStatus = "SUBSCRIBED" | "TIMED_OUT" | "CLOSED" | "CHANNEL_ERROR";

/** The part of a supabase-js RealtimeChannel this uses. */
export interface RealtimeChannelLike {
  on(
    type: "broadcast",
    filter: { event: string },
    callback: (message: { event: string; payload?: unknown; [key: string]: unknown }) => void,
  ): RealtimeChannelLike;
  subscribe(callback?: (status: `${ChannelStatus}`, error?: Error) => void, timeout?: number): RealtimeChannelLike;
}

/** The part of a supabase-js client this uses (`createClient<Database>(url, anonKey)` has it). */
export interface SupabaseRealtimeLike {
  realtime: { setAuth(token?: string | null): Promise<void> | void };
  channel(name: string, options?: { config?: { private?: boolean } }): RealtimeChannelLike;
  removeChannel(channel: RealtimeChannelLike): Promise<unknown>;
}

export interface RealtimeOptions {
  /** Whose events: your user id (an admin may follow another user's topic). */
  userId: string;
  /** Also join the shared `whatsapp` channel for `whatsapp_status`. Default true. */
  whatsapp?: boolean;
  /** How long joining may take (ms). Default 10 000. */
  timeoutMs?: number;
}

export interface ChannelStatusEvent {
  channel: string;
  status: ChannelStatus;
  error?: Error;
}

export interface RealtimeEvents extends WhatsschedEvents {
  /** A channel's state changed (joined, timed out, closed, refused). */
  status: ChannelStatusEvent;
}

const WHATSAPP_TOPIC = "whatsapp";

export class WhatsschedRealtime extends Emitter<RealtimeEvents> {
  readonly topics: readonly string[];
  readonly #supabase: SupabaseRealtimeLike;
  readonly #options: RealtimeOptions;
  #channels: RealtimeChannelLike[] = [];
  readonly #joinedBefore = new Set<string>();

  constructor(supabase: SupabaseRealtimeLike, options: RealtimeOptions) {
    super();
    this.#supabase = supabase;
    this.#options = options;
    this.topics = [`user:${options.userId}`, ...(options.whatsapp === false ? [] : [WHATSAPP_TOPIC])];
  }

  /** Join the channels; resolves when all are joined, rejects if one is refused or times out. */
  async subscribe(): Promise<void> {
    if (this.#channels.length) return;
    await this.#supabase.realtime.setAuth(); // private channels are authorised with the user's JWT
    const joins = this.topics.map((topic) => this.#join(topic));
    await Promise.all(joins);
  }

  /** Leave the channels. */
  async unsubscribe(): Promise<void> {
    const channels = this.#channels;
    this.#channels = [];
    this.#joinedBefore.clear();
    await Promise.all(channels.map((channel) => this.#supabase.removeChannel(channel)));
  }

  #join(topic: string): Promise<void> {
    const channel = this.#supabase.channel(topic, { config: { private: true } });
    const events = topic === WHATSAPP_TOPIC ? (["whatsapp_status"] as const) : EVENT_TYPES;
    for (const event of events) {
      channel.on("broadcast", { event }, (message) => this.#deliver(event, message.payload));
    }
    this.#channels.push(channel);
    return new Promise((resolve, reject) => {
      let settled = false;
      channel.subscribe((status, error) => {
        const event: ChannelStatusEvent = { channel: topic, status: status as ChannelStatus };
        if (error) event.error = error;
        this.emit("status", event);
        if (status === "SUBSCRIBED") {
          if (this.#joinedBefore.has(topic)) this.emit("resync", { type: "resync", reason: "reconnected" });
          this.#joinedBefore.add(topic);
          if (!settled) {
            settled = true;
            resolve();
          }
        } else if (!settled && (status === "CHANNEL_ERROR" || status === "TIMED_OUT")) {
          settled = true;
          reject(error ?? new Error(`joining ${topic}: ${status}`));
        }
      }, this.#options.timeoutMs ?? 10_000);
    });
  }

  #deliver<K extends keyof WhatsschedEvents>(type: K, payload: unknown): void {
    if (!payload || typeof payload !== "object") return;
    // Realtime adds an `id` to each stored broadcast; the socket's frames have none.
    const { id: _id, ...rest } = payload as Record<string, unknown>;
    this.emit(type, { ...rest, type } as RealtimeEvents[K]);
  }
}

/** Create the channels' listener and join them. */
export async function subscribeRealtime(
  supabase: SupabaseRealtimeLike,
  options: RealtimeOptions,
): Promise<WhatsschedRealtime> {
  const realtime = new WhatsschedRealtime(supabase, options);
  await realtime.subscribe();
  return realtime;
}
