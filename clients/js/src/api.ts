/**
 * A typed client for every `/api/*` route, generated from our /openapi.json (api.types.ts) and
 * served by openapi-fetch: paths, parameters, bodies and answers are checked by the compiler.
 *
 *     const api = createApiClient({ baseUrl: "http://localhost:8000", getToken: () => session?.access_token });
 *     const { data, error } = await api.GET("/api/messages", { params: { query: { status: ["scheduled"] } } });
 */
import createClient, { type Client, type ClientOptions, type Middleware } from "openapi-fetch";
import type { components, operations, paths } from "./api.types.js";

export type { components, operations, paths };

/** A schema of the API by name: `Schema<"Message">`, `Schema<"Group">`, ... */
export type Schema<Name extends keyof components["schemas"]> = components["schemas"][Name];

export type Session = Schema<"Session">;
export type AuthUser = Schema<"AuthUser">;
export type Message = Schema<"Message">;
export type MessagePage = Schema<"MessagePage">;
export type Group = Schema<"Group">;
export type Contact = Schema<"Contact">;
export type Notification = Schema<"Notification">;
export type Stats = Schema<"Stats">;
/** A webhook endpoint (`/api/webhooks`); `WebhookEndpointCreated` adds its secret, shown once. */
export type WebhookEndpoint = Schema<"WebhookEndpoint">;
export type WebhookEndpointCreated = Schema<"WebhookEndpointCreated">;
/** One event sent to an endpoint, with its attempts (`GET /api/webhooks/{id}/deliveries`). */
export type WebhookDelivery = Schema<"WebhookDelivery">;
/** Every error answer: a sentence, a stable snake_case code, and the fields at fault. */
export type ErrorBody = Schema<"ErrorBody">;

export type ApiClient = Client<paths>;

export interface ApiClientOptions extends Omit<ClientOptions, "baseUrl"> {
  /** The API's base URL, e.g. `http://localhost:8000` (paths start with /api/). */
  baseUrl: string;
  /** The access token to send as `Authorization: Bearer`; nothing is sent when it returns nothing. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
}

/** The openapi-fetch client for our API, with the caller's token on every request. */
export function createApiClient(options: ApiClientOptions): ApiClient {
  const { getToken, baseUrl, ...rest } = options;
  const client = createClient<paths>({ ...rest, baseUrl: baseUrl.replace(/\/+$/, "") });
  if (getToken) {
    const auth: Middleware = {
      async onRequest({ request }) {
        const token = await getToken();
        if (token && !request.headers.has("Authorization")) request.headers.set("Authorization", `Bearer ${token}`);
        return request;
      },
    };
    client.use(auth);
  }
  return client;
}

/** Thrown by `unwrap` for an error answer: the status and our error body. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly body: ErrorBody | undefined;

  constructor(status: number, body: ErrorBody | undefined) {
    super(body?.detail ?? `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = body?.code ?? "error";
    this.body = body;
  }
}

/** The data of an openapi-fetch answer, or an ApiError for an error answer. */
export function unwrap<T>(answer: { data?: T; error?: unknown; response: Response }): T {
  if (answer.error !== undefined || !answer.response.ok) {
    throw new ApiError(answer.response.status, answer.error as ErrorBody | undefined);
  }
  return answer.data as T;
}

/** Log in (POST /api/auth/login): Supabase's session shape, `access_token` and `user.id` included. */
export async function login(api: ApiClient, email: string, password: string): Promise<Session> {
  return unwrap(await api.POST("/api/auth/login", { body: { email, password } }));
}
