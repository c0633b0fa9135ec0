// A stand-in for supabase-js's Realtime side, fed by the database itself. No Supabase Realtime runs
// here (it needs Docker), but the events it would carry leave Postgres the same way: realtime.send
// (our bootstrap's copy of Supabase's) both stores the broadcast and does pg_notify('realtime',
// {topic, event, payload, private}), which this LISTENs to. Each notification goes to the joined
// private channels of its topic, with the `id` Supabase Realtime adds, as `{type, event, payload}`.
// Not emulated: Realtime's own authorisation (the RLS policies on realtime.messages).
import { randomUUID } from "node:crypto";
import pg from "pg";

export class FakeSupabase {
  #client;
  #channels = new Set();
  authCalls = 0;

  constructor(databaseUrl) {
    this.#client = new pg.Client({ connectionString: databaseUrl });
    this.realtime = { setAuth: async () => void this.authCalls++ };
  }

  async start() {
    await this.#client.connect();
    this.#client.on("notification", (note) => {
      if (note.channel !== "realtime" || !note.payload) return;
      const { topic, event, payload, private: isPrivate } = JSON.parse(note.payload);
      for (const channel of this.#channels) channel.deliver(topic, event, { ...payload, id: randomUUID() }, isPrivate);
    });
    await this.#client.query("listen realtime");
    return this;
  }

  async stop() {
    await this.#client.end();
  }

  channel(name, options = {}) {
    const channel = new FakeChannel(name, Boolean(options.config?.private));
    this.#channels.add(channel);
    return channel;
  }

  async removeChannel(channel) {
    channel.leave();
    this.#channels.delete(channel);
    return "ok";
  }

  /** What supabase-js does after its socket dropped and came back: every channel joins again. */
  rejoinAll() {
    for (const channel of this.#channels) channel.rejoin();
  }
}

class FakeChannel {
  #listeners = [];
  #status = null;
  joined = false;

  constructor(topic, isPrivate) {
    this.topic = topic;
    this.private = isPrivate;
  }

  on(type, filter, callback) {
    if (type === "broadcast") this.#listeners.push({ event: filter.event, callback });
    return this;
  }

  subscribe(callback) {
    this.#status = callback ?? (() => undefined);
    setTimeout(() => this.#join(), 5);
    return this;
  }

  #join() {
    this.joined = true;
    this.#status("SUBSCRIBED");
  }

  rejoin() {
    if (!this.joined) return;
    this.joined = false;
    this.#status("CLOSED");
    setTimeout(() => this.#join(), 5);
  }

  leave() {
    this.joined = false;
  }

  deliver(topic, event, payload, isPrivate) {
    if (!this.joined || topic !== this.topic || isPrivate !== this.private) return;
    for (const listener of this.#listeners) {
      if (listener.event === event) listener.callback({ type: "broadcast", event, payload });
    }
  }
}
