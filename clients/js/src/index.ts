/**
 * @whatsched/client: the frontend's side of the whatsched contract.
 *
 * - `createApiClient`: every /api/* route, typed from the API's OpenAPI document (openapi-fetch).
 * - `WhatsschedSocket`: the /ws/{user_id} socket with reconnection, fresh tokens and subscriptions.
 * - `WhatsschedRealtime`: the same events over Supabase Realtime private channels (supabase-js).
 * - `uploadMedia`: an attachment uploaded from a Blob or File, in Node and in the browser.
 * - `Database`: the schema's tables and functions for `createClient<Database>()` (supabase-js).
 */
export * from "./api.js";
export * from "./events.js";
export * from "./media.js";
export * from "./socket.js";
export * from "./realtime.js";
export type { Database, Json, Tables, TablesInsert, TablesUpdate } from "./database.types.js";
