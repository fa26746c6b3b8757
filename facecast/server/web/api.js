// What both pages of the browser client share: the one way they call the API, and event ids.

// Every call the page makes goes through here: an error answer becomes an Error carrying the server's
// own message ({code, data, message}), whatever the status, so nothing reads a missing `data`.
export async function api(path, { key, token, body, form, method = "POST" } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (key) headers["X-API-KEY"] = key;
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: form ?? (body !== undefined ? JSON.stringify(body) : undefined) });
  } catch (err) {
    throw new Error(`${method} ${path}: the server is unreachable (${err.message})`);
  }
  let payload = null;
  try { payload = await response.json(); } catch { /* not JSON: the status says what happened */ }
  const message = payload && typeof payload.message === "string" ? payload.message : "";
  if (!response.ok) throw new Error(`${method} ${path}: ${message || `${response.status} ${response.statusText}`}`);
  if (!payload || typeof payload !== "object" || !("data" in payload)) {
    throw new Error(`${method} ${path}: the answer (${response.status}) is not the API's {code, data, message}`);
  }
  return payload.data;
}

// crypto.randomUUID exists only in secure contexts; a plain-http LAN address is not one.
export const newEventId = () =>
  crypto.randomUUID ? crypto.randomUUID() : Array.from({ length: 4 }, () => Math.random().toString(16).slice(2, 10)).join("");
