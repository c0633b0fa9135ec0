// Attachments: upload a file and read what the API found in its bytes.
// (README.md shows these snippets; `npm run typecheck` compiles them against the published types.)
import { createApiClient, uploadMedia } from "@whatsched/client";

declare const session: { access_token: string };
declare const picked: File; // e.g. an <input type="file">'s first file

const api = createApiClient({ baseUrl: "http://localhost:8000", getToken: () => session.access_token });
const flyer = await uploadMedia(api, picked); // a File or Blob; type read from the bytes; 422 ApiError when refused
console.log(flyer.kind, flyer.size_bytes, flyer.sha256);
