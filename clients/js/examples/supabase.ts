// Straight to Supabase with supabase-js: the same data under the same rules (RLS, SQL functions),
// typed with the generated Database, and the same events over Realtime private channels.
import { createClient } from "@supabase/supabase-js";
import { WhatsschedRealtime, type Database, type Tables } from "@whatsched/client";

const supabase = createClient<Database>("https://your-project.supabase.co", "your-anon-key");

// --- log in ---------------------------------------------------------------------------------
const { data: auth, error: loginError } = await supabase.auth.signInWithPassword({
  email: "you@example.com",
  password: "a long password",
});
if (loginError) throw loginError;
const userId = auth.user.id;

// --- list messages ----------------------------------------------------------------------------
const { data: messages } = await supabase
  .from("messages")
  .select("id, content, status, scheduled_for, delivered_count, failed_count, recipient_count")
  .in("status", ["scheduled", "sending"])
  .order("created_at", { ascending: false })
  .range(0, 19);
const first: Pick<Tables<"messages">, "id" | "status"> | undefined = messages?.[0];

// --- schedule (the same rules as the API: send time, spam guard, 10 a minute) ------------------
if (first) {
  const { data: scheduled, error } = await supabase.rpc("schedule_message", {
    p_message_id: first.id,
    p_scheduled_for: "2026-12-24T13:00:00Z",
  });
  if (error) console.error(error.hint ?? error.code, error.message); // e.g. scheduled_in_past
  else console.log(scheduled.status);
}

// --- follow progress live ------------------------------------------------------------------
const live = new WhatsschedRealtime(supabase, { userId });
live.on("message_progress", (e) => console.log(e.message_id, `${e.sent}/${e.total}`, e.failed));
live.on("message_status_update", (e) => console.log(e.message_id, e.status));
live.on("whatsapp_status", (e) => console.log("WhatsApp:", e.status));
live.on("resync", () => void supabase.from("messages").select("id, status")); // refetch after a gap
await live.subscribe(); // Realtime sends no snapshot: read what you show once subscribed
