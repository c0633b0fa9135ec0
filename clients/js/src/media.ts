/**
 * Attachments: upload a file with the typed client, in Node (20+) and in the browser alike, and
 * attach it to a message with its `media_id`.
 *
 *     const file = await uploadMedia(api, input.files[0]);                      // a browser File
 *     const file = await uploadMedia(api, new Blob([bytes]), "menu.pdf");         // Node: any Blob
 *     await api.POST("/api/messages", { body: { content: "Nuestra carta", media_id: file.id, group_ids } });
 *
 * The API reads the file's type from its bytes (never from its name or the Blob's type), refuses
 * what WhatsApp would not take (422 `media_too_large`, `media_type_not_allowed`,
 * `media_type_mismatch`, `media_empty`: thrown as `ApiError` with the field and the limit), and
 * removes an image's metadata (EXIF location) before it is sent.
 */
import { type ApiClient, type Schema, unwrap } from "./api.js";

/** A file as the API describes it (`GET /api/media/{id}`). */
export type MediaFile = Schema<"MediaFile">;

/** Uploads `file` (a Blob or a browser File) as multipart/form-data; `filename` defaults to the
 * File's name. Resolves with the stored file, or throws `ApiError` with the API's code. */
export async function uploadMedia(api: ApiClient, file: Blob, filename?: string): Promise<MediaFile> {
  const name = filename ?? (typeof File !== "undefined" && file instanceof File ? file.name : "file");
  const form = new FormData();
  form.append("file", file, name);
  const answer = await api.POST("/api/media", {
    // The generated body type says `file: string` (OpenAPI's binary); the browser and Node send the
    // FormData as it is, with its boundary.
    body: form as unknown as { file: string },
    bodySerializer: (body: unknown) => body as FormData,
  });
  return unwrap(answer) as MediaFile;
}
