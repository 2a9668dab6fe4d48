// Talking to the API: fetch with the visitor's key, and answers turned into errors the page can show in words.

const KEY_STORAGE = "artgen.apiKey";

/** The job states after which a job never changes again. */
export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

export class ApiError extends Error {
  /** An answer the page can show in words: a headline and, for 422s, one line per field. */
  constructor(status, headline, items = []) {
    super([headline, ...items.map((item) => item.text)].join(" "));
    this.status = status;
    this.headline = headline;
    this.items = items;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

/** Keeps the key in this browser only; an empty key forgets it. */
export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export function authHeaders(extra = {}) {
  const headers = new Headers(extra);
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `Could not reach the service (${error.message}). Check that it is running and try again.`);
  }
  if (response.ok || response.status === 304) return response;
  throw await apiError(response);
}

/** FastAPI answers `{"detail": string}` or, for validation, `{"detail": [{loc, msg, type}]}`. */
export function detailItems(detail) {
  if (detail === null || detail === undefined || detail === "") return [];
  if (typeof detail === "string") return [{ field: "", text: detail }];
  if (!Array.isArray(detail)) return [{ field: "", text: JSON.stringify(detail) }];
  return detail.map((entry) => {
    if (typeof entry !== "object" || entry === null) return { field: "", text: String(entry) };
    const loc = Array.isArray(entry.loc) ? entry.loc.filter((part) => part !== "body" && part !== "query") : [];
    const field = loc.length ? String(loc[0]) : "";
    const where = loc.join(".");
    const message = String(entry.msg ?? JSON.stringify(entry)).replace(/^Value error, /, "");
    const text = where && !message.toLowerCase().startsWith(where.toLowerCase()) ? `${where}: ${message}` : message;
    return { field, text };
  });
}

const HEADLINES = {
  400: "The service could not read that request.",
  401: "This service needs an API key: enter yours under “More settings”.",
  403: "That API key may not do this.",
  404: "Not found: it may have expired.",
  409: "That cannot be done now.",
  413: "That is too large to upload.",
  415: "The service did not accept that kind of upload.",
  422: "Please check these settings:",
  429: "The service is busy.",
};

export async function apiError(response) {
  const text = await response.text().catch((error) => `(the answer could not be read: ${error.message})`);
  let detail;
  try {
    detail = JSON.parse(text).detail;
  } catch {
    detail = text.trim().slice(0, 300); // not JSON (a proxy's page, say): show its start as it is
  }
  const items = detailItems(detail);
  let headline = HEADLINES[response.status] || `The service answered HTTP ${response.status}.`;
  if (response.status >= 500) headline = `The service had a problem (HTTP ${response.status}).`;
  const retry = response.headers.get("Retry-After");
  if (retry) items.push({ field: "", text: `Try again in ${retry} s.` });
  // A single plain sentence reads better as the headline itself.
  if (items.length === 1 && !items[0].field && response.status !== 401 && response.status !== 422) {
    return new ApiError(response.status, items[0].text, []);
  }
  return new ApiError(response.status, headline, items);
}
