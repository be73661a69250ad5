// The token this page was given (?token=) and the URLs and headers that carry it to the server.

export const token = new URLSearchParams(location.search).get("token");

// The HTTP routes want the token as a Bearer header; the pages take it in their URL.
export function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export function absoluteUrl(path) {
  return new URL(path, location.origin).href;
}

// A page of this server (view, control, studio) as a link that works when opened elsewhere: with the token.
export function pageUrl(path, query = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined) url.searchParams.set(name, value);
  }
  if (token) url.searchParams.set("token", token);
  return url.href;
}

// The /ws socket; a browser cannot set headers on a WebSocket, so the token goes in the query.
export function socketUrl(query) {
  const url = new URL(pageUrl("/ws", query));
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

// The NAME of /view/NAME or /control/NAME (the server refuses other names before serving the page).
export function streamNameFromPath() {
  const segments = location.pathname.split("/").filter(Boolean);
  return decodeURIComponent(segments.at(-1) ?? "");
}

// The server's /health report, or null when it cannot be read.
export async function healthReport() {
  try {
    const response = await fetch("/health", { headers: authHeaders(), cache: "no-store" });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

export async function serverIsHealthy() {
  return (await healthReport())?.status === "ok";
}
