// The Realtime adapter's contract with supabase-js, against a scripted client: the channels it joins
// (private `user:<uuid>` and `whatsapp`), the broadcasts it listens to, the payloads it hands on, and
// joins that fail. (stack.test.mjs feeds it the database's real broadcasts.)
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { EVENT_TYPES, WhatsschedRealtime } from "../dist/index.js";

const USER = "0b5c3a52-8f0e-4d7f-9a57-2f1f3c7f0a11";

function scriptedClient({ statuses = {} } = {}) {
  const channels = [];
  const client = {
    setAuth: 0,
    removed: [],
    realtime: { setAuth: async () => void client.setAuth++ },
    channel(name, options) {
      const channel = {
        name,
        options,
        listeners: [],
        on(type, filter, callback) {
          channel.listeners.push({ type, event: filter.event, callback });
          return channel;
        },
        subscribe(callback, timeout) {
          channel.timeout = timeout;
          channel.status = callback;
          const [status, error] = statuses[name] ?? ["SUBSCRIBED"];
          setTimeout(() => callback(status, error), 1);
          return channel;
        },
        broadcast(event, payload) {
          for (const l of channel.listeners) if (l.event === event) l.callback({ type: "broadcast", event, payload });
        },
      };
      channels.push(channel);
      return channel;
    },
    async removeChannel(channel) {
      client.removed.push(channel.name);
      return "ok";
    },
  };
  return { client, channels };
}

describe("WhatsschedRealtime", () => {
  test("joins private user:<id> and whatsapp channels, listening to each event by name", async () => {
    const { client, channels } = scriptedClient();
    const realtime = new WhatsschedRealtime(client, { userId: USER, timeoutMs: 1234 });
    await realtime.subscribe();
    assert.equal(client.setAuth, 1);
    assert.deepEqual(
      channels.map((c) => [c.name, c.options, c.timeout]),
      [
        [`user:${USER}`, { config: { private: true } }, 1234],
        ["whatsapp", { config: { private: true } }, 1234],
      ],
    );
    assert.deepEqual(channels[0].listeners.map((l) => [l.type, l.event]), EVENT_TYPES.map((e) => ["broadcast", e]));
    assert.deepEqual(channels[1].listeners.map((l) => l.event), ["whatsapp_status"]);

    const got = [];
    realtime.on("message_progress", (e) => got.push(e));
    realtime.on("whatsapp_status", (e) => got.push(e));
    // Supabase Realtime adds an `id` to what the database sent; the adapter hands on the socket's shape.
    channels[0].broadcast("message_progress", { type: "message_progress", message_id: "m", sent: 2, total: 3, failed: 1, id: "x" });
    channels[1].broadcast("whatsapp_status", { status: "connected", id: "y" });
    assert.deepEqual(got, [
      { type: "message_progress", message_id: "m", sent: 2, total: 3, failed: 1 },
      { type: "whatsapp_status", status: "connected" },
    ]);

    await realtime.unsubscribe();
    assert.deepEqual(client.removed, [`user:${USER}`, "whatsapp"]);
  });

  test("whatsapp: false joins the user's channel only", async () => {
    const { client, channels } = scriptedClient();
    await new WhatsschedRealtime(client, { userId: USER, whatsapp: false }).subscribe();
    assert.deepEqual(channels.map((c) => c.name), [`user:${USER}`]);
  });

  test("a refused join rejects subscribe and is reported as a status", async () => {
    const refusal = new Error("Unauthorized: You do not have permissions to read from this Channel topic");
    const { client } = scriptedClient({ statuses: { whatsapp: ["CHANNEL_ERROR", refusal] } });
    const realtime = new WhatsschedRealtime(client, { userId: USER });
    const statuses = [];
    realtime.on("status", (s) => statuses.push([s.channel, s.status]));
    await assert.rejects(realtime.subscribe(), refusal);
    assert.deepEqual(statuses.sort(), [["whatsapp", "CHANNEL_ERROR"], [`user:${USER}`, "SUBSCRIBED"]].sort());
  });

  test("joining again after a loss emits resync", async () => {
    const { client, channels } = scriptedClient();
    const realtime = new WhatsschedRealtime(client, { userId: USER, whatsapp: false });
    const resyncs = [];
    realtime.on("resync", (e) => resyncs.push(e));
    await realtime.subscribe();
    channels[0].status("CLOSED");
    channels[0].status("SUBSCRIBED");
    assert.deepEqual(resyncs, [{ type: "resync", reason: "reconnected" }]);
  });
});
