// Through the API: log in, list messages, schedule one, follow it live on the socket.
// (README.md shows these snippets; `npm run typecheck` compiles them against the published types.)
import { ApiError, createApiClient, login, unwrap, WhatsschedSocket, type Message } from "@whatsched/client";

const API_URL = "http://localhost:8000";

// --- log in ---------------------------------------------------------------------------------
const session = await login(createApiClient({ baseUrl: API_URL }), "you@example.com", "a long password");
const api = createApiClient({ baseUrl: API_URL, getToken: () => session.access_token });

// --- list messages ----------------------------------------------------------------------------
const { data: page, error } = await api.GET("/api/messages", {
  params: { query: { status: ["scheduled", "sending"], sort: "-created_at", page: 1, page_size: 20 } },
});
if (error) throw new Error(`${error.code}: ${error.detail}`);
for (const message of page.items) console.log(message.id, message.status, message.scheduled_for);

// --- a group with contacts, a message to it, scheduled ---------------------------------------
const group = unwrap(await api.POST("/api/groups", { body: { name: "Clientes VIP" } }));
const contact = unwrap(
  await api.POST("/api/contacts", { body: { name: "Ana Pérez", phone: "+56 9 1234 5678", group_ids: [group.id] } }),
);
const draft: Message = unwrap(
  await api.POST("/api/messages", { body: { content: "Hola {{name}}, te esperamos mañana.", group_ids: [group.id] } }),
);
try {
  const scheduled = unwrap(
    await api.POST("/api/messages/{message_id}/schedule", {
      params: { path: { message_id: draft.id } },
      body: { scheduled_for: "2026-12-24T10:00:00-03:00" },
    }),
  );
  console.log(scheduled.status, scheduled.scheduled_for, contact.phone);
} catch (e) {
  // 422 scheduled_in_past, spam_suspected...; 429 rate_limited (10 schedules a minute)
  if (e instanceof ApiError) console.error(e.status, e.code, e.body?.errors);
}

// --- follow progress live ------------------------------------------------------------------
const socket = new WhatsschedSocket({
  baseUrl: API_URL,
  userId: session.user.id,
  getToken: () => session.access_token, // called again on every reconnection
});
socket.on("message_status_update", (e) => console.log(e.message_id, e.status));
socket.on("message_progress", (e) => console.log(`${e.sent + e.failed}/${e.total}`, e.failed ? `${e.failed} failed` : ""));
socket.on("new_notification", ({ notification }) => console.log(notification.type, notification.title));
socket.on("resync", () => void api.GET("/api/messages")); // events may have been missed: refetch
socket.connect();
socket.subscribe(draft.id); // snapshot now, progress as it goes, again after every reconnection
