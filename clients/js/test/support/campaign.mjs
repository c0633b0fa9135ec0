// One campaign as a frontend runs it, through the package's own API client and socket; no Node
// APIs, so the browser test runs this very file in the page.
import { unwrap } from "../../dist/index.js";

/** A group of new contacts and a draft message to it. */
export async function prepareCampaign(api, { name, phones }) {
  const group = unwrap(await api.POST("/api/groups", { body: { name, description: "@whatsched/client test" } }));
  const contactIds = [];
  for (const [i, phone] of phones.entries()) {
    const contact = unwrap(await api.POST("/api/contacts", { body: { name: `Contacto ${i + 1}`, phone } }));
    contactIds.push(contact.id);
  }
  const added = unwrap(
    await api.POST("/api/groups/{group_id}/contacts", {
      params: { path: { group_id: group.id } },
      body: { contact_ids: contactIds },
    }),
  );
  const message = unwrap(
    await api.POST("/api/messages", { body: { content: "Hola {{name}}, tu hora es mañana.", group_ids: [group.id] } }),
  );
  return { group, message, added: added.added };
}

/** Schedule for (about) now: the API takes no time in the past, with a minute of grace. */
export async function scheduleNow(api, messageId) {
  return unwrap(
    await api.POST("/api/messages/{message_id}/schedule", {
      params: { path: { message_id: messageId } },
      body: { scheduled_for: new Date().toISOString() },
    }),
  );
}

/**
 * Record what the socket says about one message; `done` resolves once it is `sent` and its progress
 * reached `total` (the final counts), or rejects after `timeoutMs`.
 */
export function follow(socket, messageId, total, timeoutMs = 60_000) {
  const seen = { statuses: [], progress: [], opens: [], closes: [], resyncs: [], errors: [] };
  const offs = [];
  let finish;
  let fail;
  const done = new Promise((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });
  const check = () => {
    const last = seen.progress.at(-1);
    if (seen.statuses.includes("sent") && last && last.sent + last.failed === total) finish(seen);
  };
  offs.push(
    socket.on("message_status_update", (event) => {
      if (event.message_id !== messageId) return;
      seen.statuses.push(event.status);
      check();
    }),
    socket.on("message_progress", (event) => {
      if (event.message_id !== messageId) return;
      seen.progress.push({ sent: event.sent, total: event.total, failed: event.failed, at: seen.opens.length });
      check();
    }),
    socket.on("open", (event) => seen.opens.push(event)),
    socket.on("close", (event) => seen.closes.push(event)),
    socket.on("resync", (event) => seen.resyncs.push(event)),
    socket.on("error", (event) => seen.errors.push(event)),
  );
  const timer = setTimeout(() => fail(new Error(`no final counts within ${timeoutMs} ms: ${JSON.stringify(seen)}`)), timeoutMs);
  return {
    seen,
    done: done.finally(() => {
      clearTimeout(timer);
      for (const off of offs) off();
    }),
  };
}
