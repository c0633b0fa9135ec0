/**
 * The guide's socket, `/ws/{user_id}`, kept alive: the auth frame first, pings, subscriptions to
 * messages, and on any loss a reconnection with backoff and jitter, a fresh token from `getToken()`,
 * the subscriptions sent again and a `resync` event so the app refetches what it shows.
 *
 * Close codes: 4401 (token expired or refused) reconnects at once with a fresh token, then backs off;
 * 4408 (no auth in time), 4429 (fell too far behind), 1001/1006/1011/1012 and the rest reconnect with
 * backoff. Only `close()`, or a 4401 after `forbidden` / `invalid_user_id` (the wrong socket for this
 * caller), stop it for good.
 *
 * Works with the browser's WebSocket and with Node 20: the global WebSocket when there is one, else the
 * `ws` package (a dependency), or any constructor passed as `WebSocket`.
 */
import { Emitter } from "./emitter.js";
import type { ErrorFrame, Resync, WhatsschedEvents } from "./events.js";
import { EVENT_TYPES } from "./events.js";

/** The part of the WebSocket API this client uses (the browser's, Node's and `ws` all have it). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: never) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface BackoffOptions {
  /** First delay after a failure (ms). Default 500. */
  initialMs?: number;
  /** Longest delay (ms). Default 30 000. */
  maxMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
  /** Share of each delay drawn at random, 0 to 1 (0.5: between half and all of it). Default 0.5. */
  jitter?: number;
}

export interface SocketOptions {
  /** The API's base URL (`http://localhost:8000`, `https://api.example.com` or `ws(s)://...`). */
  baseUrl: string;
  /** Whose events: your user id (an admin may open another user's). */
  userId: string;
  /** A valid access token; called for every (re)connection and before the current token expires. */
  getToken: () => string | Promise<string>;
  /** A WebSocket constructor; default: globalThis.WebSocket, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** Send a ping this often (ms) and count the socket dead without an answer. 0 turns it off. Default 20 000. */
  pingIntervalMs?: number;
  /** How long to wait for the pong (or any frame) after a ping (ms). Default 10 000. */
  pongTimeoutMs?: number;
  /** Send a fresh token this long before the current one expires (ms; JWTs only). 0 turns it off. Default 60 000. */
  refreshBeforeExpiryMs?: number;
}

export type SocketState = "idle" | "connecting" | "authenticating" | "open" | "closed";

export interface SocketOpen {
  /** False for the first connection, true for every one after a loss. */
  reconnected: boolean;
}

export interface SocketClose {
  code: number;
  reason: string;
  /** When the next attempt starts (ms from now), or null when the socket stays closed. */
  reconnectInMs: number | null;
}

export interface ServerFrame {
  type: string;
  [key: string]: unknown;
}

/** What a socket emits: the relayed events by their type, plus its own life. */
export interface SocketEvents extends WhatsschedEvents {
  /** The server's error frames (`message_not_found`, `invalid_token`, `token_expired`, ...). */
  error: ErrorFrame;
  /** Authenticated (`auth_ok`); subscriptions are being sent again. */
  open: SocketOpen;
  /** The connection was lost or closed. */
  close: SocketClose;
  /** A fresh token was accepted on the open socket. */
  reauthenticated: Record<string, never>;
  /** Every frame the server sent, as parsed, known or not. */
  frame: ServerFrame;
}

const OPEN = 1;
const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_HEARTBEAT = 4000; // ours: no pong in time
const FATAL_AUTH_ERRORS = new Set(["forbidden", "invalid_user_id"]);
const RELAYED = new Set<string>(EVENT_TYPES);

/** The socket URL for an API base URL: http(s) becomes ws(s), then /ws/{userId}. */
export function socketUrl(baseUrl: string, userId: string): string {
  const url = new URL(baseUrl);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  const path = url.pathname.replace(/\/+$/, "");
  url.pathname = `${path}/ws/${encodeURIComponent(userId)}`;
  url.search = "";
  url.hash = "";
  return url.toString();
}

/** The `exp` of a JWT in ms since the epoch, or null when the token is not a JWT with one. */
export function tokenExpiry(token: string): number | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const claims = JSON.parse(atob(base64)) as { exp?: unknown };
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const native = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (native) return native;
  const name = "ws"; // a variable: bundlers for the browser leave it alone (browsers have WebSocket)
  const module = (await import(/* @vite-ignore */ /* webpackIgnore: true */ name)) as {
    default?: WebSocketConstructor;
    WebSocket?: WebSocketConstructor;
  };
  const found = module.WebSocket ?? module.default;
  if (!found) throw new Error("No WebSocket: install the `ws` package or pass `WebSocket`.");
  return found;
}

export class WhatsschedSocket extends Emitter<SocketEvents> {
  readonly url: string;
  readonly #options: SocketOptions;
  readonly #subscriptions = new Set<string>();
  #state: SocketState = "idle";
  #ws: WebSocketLike | null = null;
  #stopped = true;
  #everOpen = false;
  #failures = 0; // attempts since the last auth_ok
  #authRefusals = 0; // 4401 closes in a row
  #lastError: string | null = null;
  #token: string | null = null;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #pingTimer: ReturnType<typeof setInterval> | undefined;
  #pongTimer: ReturnType<typeof setTimeout> | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #generation = 0; // bumps on every new connection: late callbacks of an old one are ignored

  constructor(options: SocketOptions) {
    super();
    this.#options = options;
    this.url = socketUrl(options.baseUrl, options.userId);
  }

  get state(): SocketState {
    return this.#state;
  }

  /** The messages this socket follows (sent again after every reconnection). */
  get subscriptions(): ReadonlySet<string> {
    return this.#subscriptions;
  }

  /** Connect, and keep connecting until `close()`. Calling it again while running does nothing. */
  connect(): this {
    if (!this.#stopped) return this;
    this.#stopped = false;
    void this.#open();
    return this;
  }

  /** Close for good: no reconnection. `connect()` starts again. */
  close(code = 1000, reason = "client closed"): void {
    this.#stopped = true;
    this.#clearTimers();
    const ws = this.#ws;
    this.#ws = null;
    this.#generation++;
    if (ws) {
      this.#detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    if (this.#state !== "closed") {
      this.#state = "closed";
      this.emit("close", { code, reason, reconnectInMs: null });
    }
  }

  /** Resolves once the socket is authenticated (at once if it is). */
  ready(timeoutMs = 30_000): Promise<void> {
    if (this.#state === "open") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new Error(`the socket did not open within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.once("open", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Follow a message: its progress comes to subscribers only. The server answers at once with its
   * current status and counts, and again after every reconnection. */
  subscribe(messageId: string): void {
    this.#subscriptions.add(messageId);
    if (this.#state === "open") this.#send({ type: "subscribe_message", message_id: messageId });
  }

  unsubscribe(messageId: string): void {
    this.#subscriptions.delete(messageId);
    if (this.#state === "open") this.#send({ type: "unsubscribe_message", message_id: messageId });
  }

  /** Send a fresh token on the open socket (done by itself before the current one expires). */
  async reauthenticate(): Promise<void> {
    const generation = this.#generation;
    const token = await this.#options.getToken();
    if (generation !== this.#generation || this.#state !== "open") return;
    if (token === this.#token) return; // nothing new: the server will close with 4401 and we reconnect
    this.#token = token;
    this.#send({ type: "auth", token });
    this.#scheduleRefresh(token);
  }

  // -- the connection ------------------------------------------------------------------------------

  async #open(): Promise<void> {
    if (this.#stopped) return;
    const generation = ++this.#generation;
    this.#state = "connecting";
    this.#lastError = null;
    let ws: WebSocketLike;
    let token: string;
    try {
      const Socket = this.#options.WebSocket ?? (await defaultWebSocket());
      token = await this.#options.getToken();
      if (this.#stopped || generation !== this.#generation) return;
      ws = new Socket(this.url);
    } catch (error) {
      if (this.#stopped || generation !== this.#generation) return;
      this.#lost(0, `could not connect: ${error instanceof Error ? error.message : String(error)}`);
      return;
    }
    this.#ws = ws;
    this.#token = token;
    ws.onopen = () => {
      if (generation !== this.#generation) return;
      this.#state = "authenticating";
      this.#send({ type: "auth", token });
    };
    ws.onmessage = (event) => {
      if (generation === this.#generation) this.#receive(event.data);
    };
    ws.onclose = (event) => {
      if (generation === this.#generation) this.#lost(event.code, event.reason);
    };
    ws.onerror = () => {
      // a close event follows and decides what to do
    };
  }

  #receive(data: unknown): void {
    if (typeof data !== "string") return; // the server sends JSON text only
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    this.#alive();
    this.emit("frame", frame);
    switch (frame.type) {
      case "auth_ok":
        this.#authenticated();
        return;
      case "pong":
        return;
      case "error": {
        const error = frame as unknown as ErrorFrame;
        this.#lastError = error.code;
        if (error.code === "message_not_found" && error.message_id) this.#subscriptions.delete(error.message_id);
        this.emit("error", error);
        return;
      }
      case "resync":
        this.emit("resync", frame as unknown as Resync);
        return;
      default:
        if (RELAYED.has(frame.type)) {
          const type = frame.type as keyof WhatsschedEvents;
          this.emit(type, frame as unknown as WhatsschedEvents[typeof type]);
        }
    }
  }

  #authenticated(): void {
    if (this.#state === "open") {
      this.emit("reauthenticated", {});
      return;
    }
    this.#state = "open";
    const reconnected = this.#everOpen;
    this.#everOpen = true;
    this.#failures = 0;
    this.#authRefusals = 0;
    for (const id of this.#subscriptions) this.#send({ type: "subscribe_message", message_id: id });
    this.#startHeartbeat();
    if (this.#token) this.#scheduleRefresh(this.#token);
    this.emit("open", { reconnected });
    if (reconnected) this.emit("resync", { type: "resync", reason: "reconnected" });
  }

  #lost(code: number, reason: string): void {
    const ws = this.#ws;
    this.#ws = null;
    this.#generation++;
    this.#clearTimers();
    if (ws) this.#detach(ws);
    if (this.#stopped) {
      this.#state = "closed";
      this.emit("close", { code, reason, reconnectInMs: null });
      return;
    }
    if (code === CLOSE_UNAUTHORIZED && this.#lastError && FATAL_AUTH_ERRORS.has(this.#lastError)) {
      this.#stopped = true;
      this.#state = "closed";
      this.emit("close", { code, reason, reconnectInMs: null });
      return;
    }
    let delay: number;
    if (code === CLOSE_UNAUTHORIZED && this.#authRefusals++ === 0) {
      delay = 0; // the token expired: a fresh one now
    } else {
      delay = this.#backoff(this.#failures++);
    }
    this.#state = "connecting";
    this.emit("close", { code, reason, reconnectInMs: delay });
    this.#reconnectTimer = setTimeout(() => void this.#open(), delay);
  }

  #backoff(attempt: number): number {
    const { initialMs = 500, maxMs = 30_000, factor = 2, jitter = 0.5 } = this.#options.backoff ?? {};
    const ceiling = Math.min(maxMs, initialMs * factor ** attempt);
    const share = Math.min(1, Math.max(0, jitter));
    return Math.round(ceiling * (1 - share * Math.random()));
  }

  // -- heartbeat and token refresh -------------------------------------------------------------

  #startHeartbeat(): void {
    const every = this.#options.pingIntervalMs ?? 20_000;
    if (every <= 0) return;
    clearInterval(this.#pingTimer);
    this.#pingTimer = setInterval(() => {
      if (this.#state !== "open") return;
      this.#send({ type: "ping" });
      this.#pongTimer ??= setTimeout(() => this.#dead(), this.#options.pongTimeoutMs ?? 10_000);
    }, every);
  }

  /** Any frame proves the connection works. */
  #alive(): void {
    clearTimeout(this.#pongTimer);
    this.#pongTimer = undefined;
  }

  /** No answer to a ping: a half-open connection whose close event may never come. */
  #dead(): void {
    const ws = this.#ws;
    if (ws) {
      this.#detach(ws);
      try {
        ws.close(CLOSE_HEARTBEAT, "no pong");
      } catch {
        // already gone
      }
    }
    this.#lost(CLOSE_HEARTBEAT, "no answer to ping");
  }

  #scheduleRefresh(token: string): void {
    clearTimeout(this.#refreshTimer);
    const before = this.#options.refreshBeforeExpiryMs ?? 60_000;
    const expiry = tokenExpiry(token);
    if (before <= 0 || expiry === null) return;
    const left = expiry - Date.now();
    if (left <= 0) return; // already expired: the server closes 4401, we reconnect with a fresh one
    const delay = left > before + 1_000 ? left - before : Math.max(1_000, left / 2);
    this.#refreshTimer = setTimeout(() => void this.reauthenticate().catch(() => undefined), delay);
  }

  // -- plumbing ------------------------------------------------------------------------------------

  #send(frame: Record<string, unknown>): void {
    const ws = this.#ws;
    if (ws && ws.readyState === OPEN) ws.send(JSON.stringify(frame));
  }

  #detach(ws: WebSocketLike): void {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => undefined; // `ws` throws on an error event nobody listens to
  }

  #clearTimers(): void {
    clearTimeout(this.#reconnectTimer);
    clearInterval(this.#pingTimer);
    clearTimeout(this.#pongTimer);
    clearTimeout(this.#refreshTimer);
    this.#reconnectTimer = this.#pingTimer = this.#pongTimer = this.#refreshTimer = undefined;
  }
}

/** Create a socket and connect it. */
export function connectSocket(options: SocketOptions): WhatsschedSocket {
  return new WhatsschedSocket(options).connect();
}
