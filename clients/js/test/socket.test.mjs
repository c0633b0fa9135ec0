// The socket client's protocol and its recoveries, against a scripted server (the `ws` package's
// WebSocketServer) that speaks the guide's protocol and misbehaves on demand: close codes 4401, 4408,
// 4429, a server-side resync, a silent peer, a token about to expire, a refused caller.
import assert from "node:assert/strict";
import { once } from "node:events";
import { describe, test } from "node:test";
import { WebSocketServer } from "ws";

import { socketUrl, tokenExpiry, WhatsschedSocket } from "../dist/index.js";

const USER = "0b5c3a52-8f0e-4d7f-9a57-2f1f3c7f0a11";
const MESSAGE = "6f1c8a4e-1f3b-4a7e-8a41-1b2f3c4d5e6f";

/** A JWT-shaped token (unsigned: the scripted server only reads it) expiring in `seconds`. */
function jwt(seconds, extra = {}) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "none" })}.${part({ sub: USER, exp: Math.floor(Date.now() / 1000) + seconds, ...extra })}.x`;
}

/**
 * A server for the protocol. `script(conn)` runs for each connection, whose `frames` are what the
 * client sent; by default it answers auth with auth_ok, ping with pong, subscribe with a snapshot.
 */
async function server(script = () => undefined, { answerPings = true } = {}) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await once(wss, "listening");
  const connections = [];
  wss.on("connection", (ws, request) => {
    const conn = { ws, path: request.url, frames: [], tokens: [] };
    connections.push(conn);
    ws.on("message", (data) => {
      const frame = JSON.parse(String(data));
      conn.frames.push(frame);
      if (frame.type === "auth") {
        conn.tokens.push(frame.token);
        if (!conn.refuse) ws.send(JSON.stringify({ type: "auth_ok" }));
      } else if (frame.type === "ping" && answerPings) {
        ws.send(JSON.stringify({ type: "pong" }));
      } else if (frame.type === "subscribe_message") {
        const id = frame.message_id;
        ws.send(JSON.stringify({ type: "message_status_update", message_id: id, status: "sending", timestamp: "2025-01-27T10:00:00Z" }));
        ws.send(JSON.stringify({ type: "message_progress", message_id: id, sent: 1, total: 4, failed: 0 }));
      }
    });
    script(conn, connections.length);
  });
  const { port } = wss.address();
  return {
    url: `http://127.0.0.1:${port}`,
    connections,
    async close() {
      for (const client of wss.clients) client.terminate();
      await new Promise((done) => wss.close(done));
    },
  };
}

/** Resolves with the next event of `type` the socket emits (or rejects after `ms`). */
function next(socket, type, ms = 5_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} within ${ms} ms`)), ms);
    socket.once(type, (event) => {
      clearTimeout(timer);
      resolve(event);
    });
  });
}

function until(predicate, ms = 5_000) {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (predicate()) return resolve();
      if (Date.now() > deadline) return reject(new Error("condition not met in time"));
      setTimeout(tick, 10);
    };
    tick();
  });
}

const fast = { initialMs: 20, maxMs: 200, factor: 2, jitter: 0.5 };

describe("WhatsschedSocket", () => {
  test("socketUrl and tokenExpiry", () => {
    assert.equal(socketUrl("http://localhost:8000", USER), `ws://localhost:8000/ws/${USER}`);
    assert.equal(socketUrl("https://api.example.com/base/", USER), `wss://api.example.com/base/ws/${USER}`);
    assert.equal(socketUrl("ws://h:1", "a b"), "ws://h:1/ws/a%20b");
    const token = jwt(60);
    assert.ok(Math.abs(tokenExpiry(token) - (Date.now() + 60_000)) < 2_000);
    assert.equal(tokenExpiry("opaque"), null);
  });

  test("sends auth first, then the subscriptions; emits typed events; answers pings", async () => {
    const srv = await server();
    const socket = new WhatsschedSocket({ baseUrl: srv.url, userId: USER, getToken: () => "t1", backoff: fast });
    socket.subscribe(MESSAGE); // before connecting: sent once authenticated
    const statuses = [];
    const progress = [];
    socket.on("message_status_update", (e) => statuses.push(e));
    socket.on("message_progress", (e) => progress.push(e));
    try {
      socket.connect();
      assert.deepEqual(await next(socket, "open"), { reconnected: false });
      await until(() => progress.length === 1);
      const [conn] = srv.connections;
      assert.equal(conn.path, `/ws/${USER}`);
      assert.deepEqual(conn.frames.slice(0, 2), [
        { type: "auth", token: "t1" },
        { type: "subscribe_message", message_id: MESSAGE },
      ]);
      assert.equal(statuses[0].status, "sending");
      assert.deepEqual(progress[0], { type: "message_progress", message_id: MESSAGE, sent: 1, total: 4, failed: 0 });

      const events = [];
      for (const type of ["new_notification", "import_progress", "whatsapp_status", "reply_received", "resync"]) {
        socket.on(type, (e) => events.push(e.type));
      }
      for (const frame of [
        { type: "new_notification", notification: { id: "n", type: "info", title: "t", message: "m", timestamp: "x" } },
        { type: "import_progress", import_id: "i", stage: "importing", processed: 1, total: 2 },
        { type: "whatsapp_status", status: "qr_needed", qr_code: "data:image/png;base64,AAAA" },
        { type: "reply_received", reply: { id: "r", contact_id: "c", phone: "+56912345678", text: "STOP", kind: "opt_out", message_id: null, received_at: "x" } },
        { type: "resync", reason: "events_may_have_been_missed" },
        { type: "something_new", value: 1 },
      ]) {
        conn.ws.send(JSON.stringify(frame));
      }
      await until(() => events.length === 5);
      assert.deepEqual(events, ["new_notification", "import_progress", "whatsapp_status", "reply_received", "resync"]);

      socket.unsubscribe(MESSAGE);
      await until(() => conn.frames.some((f) => f.type === "unsubscribe_message"));
      assert.equal(socket.subscriptions.size, 0);
    } finally {
      socket.close();
      await srv.close();
    }
  });

  test("4401 token_expired: reconnects at once with a fresh token, re-subscribes and emits resync", async () => {
    const srv = await server((conn, n) => {
      if (n === 1) {
        setTimeout(() => {
          conn.ws.send(JSON.stringify({ type: "error", code: "token_expired", message: "The access token expired" }));
          conn.ws.close(4401, "access token expired");
        }, 100);
      }
    });
    let calls = 0;
    const socket = new WhatsschedSocket({ baseUrl: srv.url, userId: USER, getToken: () => `t${++calls}`, backoff: fast });
    socket.subscribe(MESSAGE);
    const closes = [];
    const resyncs = [];
    const errors = [];
    socket.on("close", (e) => closes.push(e));
    socket.on("resync", (e) => resyncs.push(e));
    socket.on("error", (e) => errors.push(e.code));
    try {
      socket.connect();
      await next(socket, "open");
      assert.deepEqual(await next(socket, "open"), { reconnected: true });
      assert.deepEqual(closes, [{ code: 4401, reason: "access token expired", reconnectInMs: 0 }]);
      assert.deepEqual(errors, ["token_expired"]);
      assert.deepEqual(resyncs, [{ type: "resync", reason: "reconnected" }]);
      const second = srv.connections[1];
      await until(() => second.frames.length >= 2);
      assert.deepEqual(second.frames.slice(0, 2), [
        { type: "auth", token: "t2" },
        { type: "subscribe_message", message_id: MESSAGE },
      ]);
    } finally {
      socket.close();
      await srv.close();
    }
  });

  for (const [code, reason] of [
    [4429, "send queue full (256 frames): the client reads too slowly"],
    [4408, "Send an auth frame within 10 s."],
    [1012, "service restart"],
  ]) {
    test(`close ${code}: reconnects after a jittered backoff`, async () => {
      const srv = await server((conn, n) => {
        if (n === 1) setTimeout(() => conn.ws.close(code, reason), 50);
      });
      const socket = new WhatsschedSocket({ baseUrl: srv.url, userId: USER, getToken: () => "t", backoff: { ...fast, initialMs: 100 } });
      try {
        socket.connect();
        await next(socket, "open");
        const closed = await next(socket, "close");
        assert.equal(closed.code, code);
        assert.ok(closed.reconnectInMs >= 50 && closed.reconnectInMs <= 100, String(closed.reconnectInMs));
        assert.deepEqual(await next(socket, "open"), { reconnected: true });
        assert.equal(srv.connections.length, 2);
      } finally {
        socket.close();
        await srv.close();
      }
    });
  }

  test("backoff grows while the server is down, capped, and resets once connected", async () => {
    const srv = await server();
    const url = srv.url;
    await srv.close(); // nothing listens: every attempt fails
    const socket = new WhatsschedSocket({
      baseUrl: url,
      userId: USER,
      getToken: () => "t",
      backoff: { initialMs: 10, maxMs: 40, factor: 2, jitter: 0 },
    });
    const delays = [];
    socket.on("close", (e) => delays.push(e.reconnectInMs));
    try {
      socket.connect();
      await until(() => delays.length >= 5);
      assert.deepEqual(delays.slice(0, 5), [10, 20, 40, 40, 40]);
    } finally {
      socket.close();
    }
    assert.equal(socket.state, "closed");
  });

  test("a refused caller (forbidden, then 4401) is not retried", async () => {
    const srv = await server((conn) => {
      conn.refuse = true;
      conn.ws.on("message", () => {
        conn.ws.send(JSON.stringify({ type: "error", code: "forbidden", message: "This socket belongs to another user." }));
        conn.ws.close(4401, "This socket belongs to another user.");
      });
    });
    const socket = new WhatsschedSocket({ baseUrl: srv.url, userId: USER, getToken: () => "t", backoff: fast });
    try {
      socket.connect();
      const closed = await next(socket, "close");
      assert.equal(closed.code, 4401);
      assert.equal(closed.reconnectInMs, null);
      assert.equal(socket.state, "closed");
      await new Promise((done) => setTimeout(done, 150));
      assert.equal(srv.connections.length, 1);
    } finally {
      socket.close();
      await srv.close();
    }
  });

  test("message_not_found drops the subscription, so reconnections do not ask again", async () => {
    const srv = await server((conn) => {
      conn.ws.on("message", (data) => {
        const frame = JSON.parse(String(data));
        if (frame.type === "subscribe_message" && frame.message_id === "gone") {
          conn.ws.send(JSON.stringify({ type: "error", code: "message_not_found", message: "No such message", message_id: "gone" }));
        }
      });
    });
    const socket = new WhatsschedSocket({ baseUrl: srv.url, userId: USER, getToken: () => "t", backoff: fast });
    try {
      socket.connect();
      await socket.ready();
      socket.subscribe("gone");
      const error = await next(socket, "error");
      assert.equal(error.code, "message_not_found");
      assert.equal(socket.subscriptions.has("gone"), false);
    } finally {
      socket.close();
      await srv.close();
    }
  });

  test("a peer that stops answering pings is dropped and reconnected", async () => {
    const srv = await server(() => undefined, { answerPings: false });
    const socket = new WhatsschedSocket({
      baseUrl: srv.url,
      userId: USER,
      getToken: () => "t",
      backoff: fast,
      pingIntervalMs: 50,
      pongTimeoutMs: 100,
    });
    try {
      socket.connect();
      await next(socket, "open");
      const closed = await next(socket, "close", 2_000);
      assert.equal(closed.code, 4000);
      assert.equal(closed.reason, "no answer to ping");
      assert.ok(closed.reconnectInMs !== null);
      assert.deepEqual(await next(socket, "open"), { reconnected: true });
      assert.ok(srv.connections[0].frames.some((f) => f.type === "ping"));
    } finally {
      socket.close();
      await srv.close();
    }
  });

  test("sends a fresh token on the open socket before the current one expires", async () => {
    const srv = await server();
    const tokens = [jwt(3), jwt(3600)];
    let calls = 0;
    const socket = new WhatsschedSocket({
      baseUrl: srv.url,
      userId: USER,
      getToken: () => tokens[Math.min(calls++, tokens.length - 1)],
      refreshBeforeExpiryMs: 2_000,
    });
    try {
      socket.connect();
      await next(socket, "open");
      await next(socket, "reauthenticated", 4_000);
      const [conn] = srv.connections;
      assert.deepEqual(conn.tokens, tokens);
      assert.equal(srv.connections.length, 1, "the same connection, re-authenticated");
    } finally {
      socket.close();
      await srv.close();
    }
  });

  test("getToken failing (the API is down) is retried with backoff", async () => {
    const srv = await server();
    let calls = 0;
    const socket = new WhatsschedSocket({
      baseUrl: srv.url,
      userId: USER,
      getToken: async () => {
        if (++calls < 3) throw new Error("cannot refresh now");
        return "t";
      },
      backoff: fast,
    });
    const closes = [];
    socket.on("close", (e) => closes.push(e));
    try {
      socket.connect();
      await next(socket, "open");
      assert.equal(calls, 3);
      assert.equal(closes.length, 2);
      assert.match(closes[0].reason, /cannot refresh now/);
    } finally {
      socket.close();
      await srv.close();
    }
  });
});
