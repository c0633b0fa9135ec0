// The package against the real stack (database, API, worker, simulator bridge): log in, create a
// group with contacts, schedule a message and follow it to its final counts through the socket
// client, in Node and in headless Chromium, across an API restart, and over the Realtime adapter.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { Webhook } from "standardwebhooks";

import { createApiClient, login, unwrap, uploadMedia, WhatsschedRealtime, WhatsschedSocket } from "../dist/index.js";
import { follow, prepareCampaign, scheduleNow } from "./support/campaign.mjs";
import { FakeSupabase } from "./support/fake-supabase.mjs";
import { PACKAGE, eventually, phones, startStack } from "./support/stack.mjs";

const EMAIL = "frontend@example.com";
const PASSWORD = "a long password for tests";
const CHROMIUM = process.env.CHROME_PATH || "/usr/bin/chromium";

let stack;
let session;
let api;
let frontend; // the frontend's page server: http://localhost:3000 (the guide's), or a free port if taken
let stranger; // a page server on an origin the API does not allow

/** Run a test body; on failure, show what the processes logged. */
async function withLogs(body) {
  try {
    await body();
  } catch (error) {
    error.message += `\n\n${stack?.logs?.() ?? "(no stack)"}`;
    throw error;
  }
}

describe("@whatsched/client against the real stack", { timeout: 240_000 }, () => {
  before(async () => {
    frontend = await pageServer([3000, 0]);
    stranger = await pageServer([0]);
    stack = await startStack({ allowedOrigins: frontend.origin, latencyMs: 250 });
    stack.createUser(EMAIL, PASSWORD);
    session = await login(createApiClient({ baseUrl: stack.apiUrl }), EMAIL, PASSWORD);
    api = createApiClient({ baseUrl: stack.apiUrl, getToken: () => session.access_token });
  });

  after(async () => {
    await stack?.stop();
    frontend?.close();
    stranger?.close();
  });

  test("logs in and reads the typed API", () =>
    withLogs(async () => {
      assert.equal(session.user.email, EMAIL);
      const me = unwrap(await api.GET("/api/auth/me"));
      assert.equal(me.id, session.user.id);
      const page = unwrap(await api.GET("/api/messages", { params: { query: { page: 1, page_size: 5 } } }));
      assert.deepEqual(page.items, []);
      const refused = await createApiClient({ baseUrl: stack.apiUrl }).GET("/api/messages");
      assert.equal(refused.response.status, 401);
      assert.equal(refused.error?.code, "unauthenticated");
    }));

  test("registers a webhook and its receiver verifies the signed ping with the Standard Webhooks library", () =>
    withLogs(async () => {
      const received = [];
      const receiver = createServer((request, response) => {
        const chunks = [];
        request.on("data", (c) => chunks.push(c));
        request.on("end", () => {
          received.push({ headers: request.headers, body: Buffer.concat(chunks).toString("utf8") });
          response.writeHead(204).end();
        });
      });
      await new Promise((done) => receiver.listen(0, "127.0.0.1", done));
      try {
        const url = `http://127.0.0.1:${receiver.address().port}/hooks`;
        const created = unwrap(await api.POST("/api/webhooks", { body: { url, event_types: ["new_notification"] } }));
        assert.ok(created.secret.startsWith("whsec_"));
        const listed = unwrap(await api.GET("/api/webhooks"));
        assert.deepEqual(listed.map((h) => h.id), [created.id]);
        assert.equal("secret" in listed[0], false);
        const ping = unwrap(await api.POST("/api/webhooks/{endpoint_id}/test", { params: { path: { endpoint_id: created.id } } }));
        await eventually(() => received.length === 1, { what: "the ping at the receiver" });
        const [{ headers, body }] = received;
        const event = new Webhook(created.secret).verify(body, headers);
        assert.equal(event.type, "webhook_test");
        assert.equal(headers["webhook-id"], ping.delivery_id);
        assert.throws(() => new Webhook(`whsec_${Buffer.alloc(32).toString("base64")}`).verify(body, headers));
        await eventually(
          async () =>
            unwrap(await api.GET("/api/webhooks/{endpoint_id}/deliveries", { params: { path: { endpoint_id: created.id } } }))
              .items[0]?.state === "delivered",
          { what: "the delivery log" },
        );
        unwrap(await api.DELETE("/api/webhooks/{endpoint_id}", { params: { path: { endpoint_id: created.id } } }));
      } finally {
        receiver.close();
      }
    }));

  test(
    "uploads an attachment with uploadMedia from Node and from headless Chromium",
    { skip: existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install chromium)` },
    () =>
      withLogs(async () => {
        const pdf = "%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n";
        // Node: a Blob whose own type lies; the API reads the bytes.
        const fromNode = await uploadMedia(api, new Blob([pdf], { type: "image/png" }), "carta.pdf");
        assert.deepEqual([fromNode.mime_type, fromNode.kind, fromNode.state, fromNode.original_name], [
          "application/pdf",
          "document",
          "ready",
          "carta.pdf",
        ]);
        assert.equal(fromNode.size_bytes, Buffer.byteLength(pdf));
        await assert.rejects(uploadMedia(api, new Blob([new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, ...new Array(200).fill(0)])]), "foto.jpg"), (error) => {
          assert.equal(error.status, 422);
          assert.equal(error.code, "media_type_mismatch");
          return true;
        });
        const { default: puppeteer } = await import("puppeteer-core");
        const browser = await puppeteer.launch({
          executablePath: CHROMIUM,
          headless: true,
          args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        });
        try {
          const page = await browser.newPage();
          await page.goto(frontend.origin + "/");
          const fromBrowser = await page.evaluate(
            async ({ apiUrl, email, password, pdf }) => {
              const { createApiClient, login, uploadMedia } = await import("/dist/index.js");
              const session = await login(createApiClient({ baseUrl: apiUrl }), email, password);
              const api = createApiClient({ baseUrl: apiUrl, getToken: () => session.access_token });
              const file = new File([pdf], "menú del día.pdf", { type: "application/pdf" });
              return await uploadMedia(api, file);
            },
            { apiUrl: stack.apiUrl, email: EMAIL, password: PASSWORD, pdf },
          );
          assert.deepEqual([fromBrowser.mime_type, fromBrowser.original_name, fromBrowser.sha256], [
            "application/pdf",
            "menú del día.pdf",
            fromNode.sha256,
          ]);
        } finally {
          await browser.close();
        }
        const listed = unwrap(await api.GET("/api/media"));
        assert.equal(listed.total, 2);
      }),
  );

  test("follows a campaign to its final counts over the socket and the Realtime channels", () =>
    withLogs(async () => {
      const numbers = phones(4, 1);
      const { message, added } = await prepareCampaign(api, { name: "Clientes socket", phones: numbers });
      assert.equal(added, numbers.length);

      const supabase = await new FakeSupabase(stack.database.url).start();
      const realtime = new WhatsschedRealtime(supabase, { userId: session.user.id });
      const viaRealtime = { statuses: [], progress: [], notifications: [] };
      realtime.on("message_status_update", (e) => e.message_id === message.id && viaRealtime.statuses.push(e));
      realtime.on("message_progress", (e) => e.message_id === message.id && viaRealtime.progress.push(e));
      realtime.on("new_notification", (e) => viaRealtime.notifications.push(e));
      const resyncs = [];
      realtime.on("resync", (e) => resyncs.push(e));
      await realtime.subscribe();
      assert.equal(supabase.authCalls, 1, "setAuth before joining private channels");

      const socket = new WhatsschedSocket({
        baseUrl: stack.apiUrl,
        userId: session.user.id,
        getToken: () => session.access_token,
      });
      const followed = follow(socket, message.id, numbers.length);
      const notifications = [];
      socket.on("new_notification", (e) => notifications.push(e));
      socket.connect();
      await socket.ready();
      socket.subscribe(message.id);
      try {
        const scheduled = await scheduleNow(api, message.id);
        assert.equal(scheduled.status, "scheduled");
        const seen = await followed.done;
        assert.deepEqual(seen.statuses.slice(0, 1), ["draft"], "the snapshot on subscribe comes first");
        assert.ok(seen.statuses.includes("sending"));
        assert.deepEqual(seen.progress.at(-1), { sent: numbers.length, total: numbers.length, failed: 0, at: 1 });
        await eventually(() => notifications.some((n) => n.notification.related_entity_id === message.id), {
          what: "the sent notification",
        });

        // The same events over the Realtime adapter, in the socket's shape (no `id` added by Realtime).
        await eventually(() => viaRealtime.statuses.some((e) => e.status === "sent"), { what: "sent over Realtime" });
        await eventually(() => viaRealtime.progress.at(-1)?.sent === numbers.length, { what: "final counts over Realtime" });
        assert.deepEqual(Object.keys(viaRealtime.progress.at(-1)).sort(), ["failed", "message_id", "sent", "total", "type"]);
        assert.equal(viaRealtime.statuses.at(-1).type, "message_status_update");
        assert.ok(viaRealtime.notifications.some((n) => n.notification.related_entity_id === message.id));
        supabase.rejoinAll(); // supabase-js rejoining after a drop: the app is told to refetch
        await eventually(() => resyncs.length === 2, { what: "a resync per channel rejoined" });
        assert.deepEqual(resyncs[0], { type: "resync", reason: "reconnected" });

        const stats = unwrap(await api.GET("/api/messages/{message_id}/stats", { params: { path: { message_id: message.id } } }));
        assert.equal(stats.total, numbers.length);
        const sent = unwrap(await api.GET("/api/messages", { params: { query: { status: ["sent"] } } }));
        assert.ok(sent.items.some((m) => m.id === message.id));
      } finally {
        socket.close();
        await realtime.unsubscribe();
        await supabase.stop();
      }
    }));

  test("survives an API restart mid-campaign: reconnects with a fresh token, re-subscribes, gets the final counts", () =>
    withLogs(async () => {
      const numbers = phones(30, 2); // 30 sends of 250 ms, one at a time: about 8 s
      const { message } = await prepareCampaign(api, { name: "Clientes reinicio", phones: numbers });
      let tokens = 0;
      let refreshes = 0;
      const getToken = async () => {
        if (tokens++ === 0) return session.access_token;
        // A fresh token for every reconnection, as supabase.auth.getSession() would give: while the
        // API is down this throws, and the socket tries again later.
        const fresh = unwrap(
          await createApiClient({ baseUrl: stack.apiUrl }).POST("/api/auth/refresh", {
            body: { refresh_token: session.refresh_token },
          }),
        );
        session = fresh;
        refreshes++;
        return fresh.access_token;
      };
      const socket = new WhatsschedSocket({
        baseUrl: stack.apiUrl,
        userId: session.user.id,
        getToken,
        backoff: { initialMs: 200, maxMs: 2_000 },
      });
      const followed = follow(socket, message.id, numbers.length, 90_000);
      socket.connect();
      await socket.ready();
      socket.subscribe(message.id);
      try {
        await scheduleNow(api, message.id);
        const midway = await eventually(() => {
          const last = followed.seen.progress.at(-1);
          return last && last.sent >= 3 && last;
        }, { what: "the campaign to be under way", within: 30_000 });
        assert.ok(midway.sent < numbers.length, "the restart happens mid-campaign");
        const restartedAt = followed.seen.progress.length;
        await stack.restartApi();
        const seen = await followed.done;

        assert.ok(seen.closes.length >= 1 && seen.closes[0].reconnectInMs !== null, JSON.stringify(seen.closes));
        assert.deepEqual(seen.opens.map((o) => o.reconnected), [false, true, ...seen.opens.slice(2).map(() => true)]);
        assert.ok(seen.resyncs.some((r) => r.reason === "reconnected"), "the app is told to refetch");
        assert.ok(refreshes >= 1, "the reconnection used a fresh token");
        const after = seen.progress.slice(restartedAt).filter((p) => p.at >= 2);
        assert.ok(after.length >= 1, "progress reaches the re-subscribed socket (subscribers only)");
        assert.deepEqual(seen.progress.at(-1), { sent: numbers.length, total: numbers.length, failed: 0, at: seen.opens.length });
        assert.equal(seen.statuses.at(-1), "sent");
        assert.ok(socket.subscriptions.has(message.id));
      } finally {
        socket.close();
      }
    }));

  test(
    "in headless Chromium from the frontend's origin: CORS, preflights and the browser's own WebSocket",
    { skip: existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install chromium)` },
    () =>
      withLogs(async () => {
        const { default: puppeteer } = await import("puppeteer-core");
        const browser = await puppeteer.launch({
          executablePath: CHROMIUM,
          headless: true,
          args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        });
        try {
          // The frontend's page, on its own origin (localhost:3000 unless taken), calling the API with the
          // browser's fetch and WebSocket. (Served by a real server on localhost: Chromium's local network
          // checks let a loopback page reach a loopback API.)
          const page = await browser.newPage();
          await page.goto(frontend.origin + "/");
          const network = await recordNetwork(page);
          const numbers = phones(3, 3);
          const result = await page.evaluate(
            async ({ apiUrl, email, password, numbers }) => {
              const { createApiClient, login, WhatsschedSocket } = await import("/dist/index.js");
              const { follow, prepareCampaign, scheduleNow } = await import("/test/support/campaign.mjs");
              const session = await login(createApiClient({ baseUrl: apiUrl }), email, password);
              const api = createApiClient({ baseUrl: apiUrl, getToken: () => session.access_token });
              const { message } = await prepareCampaign(api, { name: "Clientes navegador", phones: numbers });
              const socket = new WhatsschedSocket({ baseUrl: apiUrl, userId: session.user.id, getToken: () => session.access_token });
              const followed = follow(socket, message.id, numbers.length);
              socket.connect();
              await socket.ready();
              socket.subscribe(message.id);
              await scheduleNow(api, message.id);
              const seen = await followed.done;
              socket.close();
              return {
                origin: location.origin,
                nativeWebSocket: typeof WebSocket === "function",
                socketUrl: socket.url,
                statuses: seen.statuses,
                last: seen.progress.at(-1),
              };
            },
            { apiUrl: stack.apiUrl, email: EMAIL, password: PASSWORD, numbers },
          );
          assert.equal(result.origin, frontend.origin);
          assert.ok(result.nativeWebSocket);
          assert.ok(result.socketUrl.startsWith(stack.apiUrl.replace("http:", "ws:") + "/ws/"));
          assert.equal(result.statuses.at(-1), "sent");
          assert.deepEqual(result.last, { sent: numbers.length, total: numbers.length, failed: 0, at: 1 });

          // Preflights went out for the JSON POSTs with a token, and the API allowed our origin.
          const preflights = network.filter((r) => r.type === "Preflight" && r.url.startsWith(stack.apiUrl));
          assert.ok(preflights.length >= 1, `preflights: ${JSON.stringify(network.slice(0, 5))}`);
          for (const preflight of preflights) {
            assert.equal(preflight.method, "OPTIONS");
            assert.equal(preflight.status, 200, JSON.stringify(preflight));
            assert.equal(preflight.headers["access-control-allow-origin"], frontend.origin);
            assert.equal(preflight.headers["access-control-allow-credentials"], "true");
          }
          const upgrade = network.find((r) => r.url.startsWith(stack.apiUrl.replace("http:", "ws:") + "/ws/"));
          assert.ok(upgrade, "the page opened the socket itself");

          // Another origin: the API answers without Access-Control-Allow-Origin, so the browser refuses
          // to hand the answer to the page, for a simple GET and for a JSON POST (its preflight fails).
          const other = await browser.newPage();
          const complaints = [];
          other.on("console", (message) => complaints.push(message.text()));
          await other.goto(stranger.origin + "/");
          const refused = await other.evaluate(async (apiUrl) => {
            const attempt = async (init) => {
              try {
                await fetch(`${apiUrl}/api/health`, init);
                return "read";
              } catch (error) {
                return error.name;
              }
            };
            return {
              get: await attempt({}),
              post: await (async () => {
                try {
                  await fetch(`${apiUrl}/api/auth/login`, {
                    method: "POST",
                    headers: { "content-type": "application/json" },
                    body: JSON.stringify({ email: "x@example.com", password: "y" }),
                  });
                  return "read";
                } catch (error) {
                  return error.name;
                }
              })(),
            };
          }, stack.apiUrl);
          assert.deepEqual(refused, { get: "TypeError", post: "TypeError" });
          const cors = complaints.filter((text) => text.includes("blocked by CORS policy"));
          assert.equal(cors.length, 2, complaints.join("\n"));
          assert.ok(cors.every((text) => text.includes(`from origin '${stranger.origin}'`)));
          assert.ok(cors.every((text) => !text.includes("address space")), "refused by CORS, not by local network checks");
        } finally {
          await browser.close();
        }
      }),
  );
});

const CONTENT_TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json" };

/** A page server on localhost, the first of `ports` it can bind (0: any free one): the package's
 * dist, the campaign module, and openapi-fetch through an import map, as a bundler would resolve it. */
async function pageServer(ports) {
  const server = createServer((request, response) => {
    const path = new URL(request.url, "http://localhost").pathname;
    let file = null;
    if (path === "/vendor/openapi-fetch.mjs") file = join(PACKAGE, "node_modules/openapi-fetch/dist/index.mjs");
    else if (/^\/(dist\/[\w.-]+|test\/support\/campaign\.mjs)$/.test(path)) file = join(PACKAGE, path);
    if (path === "/") {
      response.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
    } else if (file && existsSync(file)) {
      const type = CONTENT_TYPES[file.slice(file.lastIndexOf("."))] ?? "application/octet-stream";
      response.writeHead(200, { "content-type": type }).end(readFileSync(file));
    } else {
      response.writeHead(404).end("not found");
    }
  });
  for (const port of ports) {
    const bound = await new Promise((done) => {
      server.once("error", () => done(false));
      server.listen(port, "localhost", () => done(true));
    });
    if (bound) {
      return { origin: `http://localhost:${server.address().port}`, close: () => server.close() };
    }
  }
  throw new Error(`could not bind a page server on ${ports}`);
}

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>whatsched frontend</title>
<script type="importmap">{"imports": {"openapi-fetch": "/vendor/openapi-fetch.mjs"}}</script>
</head><body>frontend</body></html>`;

/** Every request the page makes, preflights included, with the answer's status and headers. */
async function recordNetwork(page) {
  const requests = new Map();
  const cdp = await page.createCDPSession();
  await cdp.send("Network.enable");
  cdp.on("Network.requestWillBeSent", (e) => {
    requests.set(e.requestId, { url: e.request.url, method: e.request.method });
  });
  cdp.on("Network.responseReceived", (e) => {
    const entry = requests.get(e.requestId) ?? { url: e.response.url };
    const headers = Object.fromEntries(Object.entries(e.response.headers).map(([k, v]) => [k.toLowerCase(), v]));
    requests.set(e.requestId, { ...entry, type: e.type, status: e.response.status, headers });
  });
  cdp.on("Network.webSocketCreated", (e) => requests.set(e.requestId, { url: e.url, method: "GET", type: "WebSocket" }));
  return {
    filter: (predicate) => [...requests.values()].filter(predicate),
    find: (predicate) => [...requests.values()].find(predicate),
    slice: (...args) => [...requests.values()].slice(...args),
  };
}
