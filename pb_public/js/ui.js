// Small shared helpers of the dashboard's views.

// Errors in words, never raw JSON.
export function describe(err) {
  if (!err) return "Something went wrong.";
  if (err.isAbort) return "The request was cancelled.";
  const status = err.status;
  if (status === 0) return "The server cannot be reached. Is Cairn running?";
  if (status === 400 && err.url && err.url.includes("auth-with-password")) {
    return "Wrong email or password.";
  }
  if (status === 403) return (err.response && err.response.message) || "You are not allowed to do that.";
  if (status === 404) return "Not found (or not yours to see).";
  if (status === 429) return "Too many attempts: wait a minute and try again.";
  const data = err.response && err.response.data;
  if (data && typeof data === "object" && Object.keys(data).length) {
    return Object.entries(data).map(([k, v]) => `${k}: ${v.message || v}`).join("; ");
  }
  return (err.response && err.response.message) || err.message || String(err);
}

export function showError(err) {
  const box = document.getElementById("error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = typeof err === "string" ? err : describe(err);
  box.hidden = false;
}

// Whether the chosen membership may run commands (the server refuses anyway).
export function canCommand(state) {
  return ["owner", "admin", "operator"].includes(state.membership && state.membership.role);
}

// Text for HTML, from anything a device may have sent (even an object whose toString is
// not a function).
export function esc(text) {
  let value = "";
  try {
    value = typeof text === "object" && text !== null ? JSON.stringify(text) : String(text ?? "");
  } catch (_) { /* unprintable: shown as nothing */ }
  return String(value ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function ago(stamp) {
  if (!stamp || typeof stamp !== "string") return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(stamp.replace(" ", "T"))) / 1000));
  if (!Number.isFinite(s)) return "at an unknown time";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

