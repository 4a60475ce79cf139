// Small helpers shared by the pages: building elements, calling the API, formatting.
// Text always goes in as text (textContent), never as HTML: nothing from the dispatcher
// can become markup.

export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.type = body && body.error && body.error.type;
  }
}

let csrfToken = null;
export function setCsrf(token) {
  csrfToken = token;
}

function loginAgain() {
  const next = encodeURIComponent(location.pathname);
  location.assign(`/ui/login?next=${next}`);
}

// GET (or another method, with the session's CSRF token) a JSON route of the dispatcher.
export async function api(path, { method = "GET", params } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (Array.isArray(value)) value.forEach((v) => url.searchParams.append(key, v));
    else if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(url, { method, headers, credentials: "same-origin" });
  const body = await response.json().catch(() => null);
  if (response.status === 401) loginAgain();
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export function toast(text, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = text;
  box.className = `toast ${kind}`;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.hidden = true), kind === "error" ? 8000 : 4000);
}

// An action button: asks first when `confirm` is set, then POSTs and reports the outcome.
export function actionButton(label, path, { confirm, session, done, danger } = {}) {
  const allowed = session && session.can_act;
  return h(
    "button",
    {
      type: "button",
      class: danger ? "danger" : "",
      "data-action": label.toLowerCase(),
      disabled: !allowed,
      title: allowed ? null : "the read-only token may only look",
      onclick: async (event) => {
        if (confirm && !window.confirm(confirm)) return;
        event.target.disabled = true;
        try {
          await api(path, { method: "POST" });
          toast(`${label}: done`);
          if (done) done();
        } catch (error) {
          toast(`${label} failed: ${error.message}`, "error");
        } finally {
          event.target.disabled = !allowed;
        }
      },
    },
    label,
  );
}

export function stateBadge(state) {
  const name = String(state || "").split("-").slice(1).join("-") || String(state || "");
  return h("span", { class: `badge s-${name.toLowerCase()}`, title: state }, name);
}

export function nodeBadge(text, kind = "state") {
  return h("span", { class: `badge n-${String(text).toLowerCase()}` }, text);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.max(0, seconds);
  if (s < 1) return `${s.toFixed(2)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

export function when(epoch) {
  if (!epoch) return "–";
  const d = new Date(epoch * 1000);
  const time = d.toLocaleTimeString(undefined, { hour12: false });
  if (d.toDateString() === new Date().toDateString()) return time;
  return `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${time}`;
}

export function processLink(upid) {
  return h("a", { href: `#/processes/${encodeURIComponent(upid)}` }, upid);
}

export function nodeLink(nodeId) {
  if (!nodeId) return "–";
  return h("a", { href: `#/nodes/${encodeURIComponent(nodeId)}` }, nodeId);
}

// A table from rows and column specs: [{ title, cell: (row) => node or text, sort? }].
export function table(columns, rows, { empty = "Nothing here.", onSort, sorted } = {}) {
  const head = h(
    "tr",
    null,
    columns.map((column) => {
      if (!column.sort || !onSort) return h("th", null, column.title);
      const mark = sorted && sorted.key === column.sort ? (sorted.desc ? " ▾" : " ▴") : "";
      return h("th", { class: "sortable", onclick: () => onSort(column.sort) }, column.title + mark);
    }),
  );
  const body = rows.length
    ? rows.map((row) => h("tr", null, columns.map((c) => h("td", null, c.cell(row)))))
    : [h("tr", null, h("td", { colspan: columns.length, class: "muted" }, empty))];
  return h("table", { class: "grid" }, h("thead", null, head), h("tbody", null, body));
}

// A definition list from [label, value] pairs, skipping empty values when asked.
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.map(([label, value]) => [h("dt", null, label), h("dd", null, value ?? "–")]),
  );
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", null, title) : null, children);
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}
