// The dashboard: who is logged in, the router (#/page/id?query), and live updates.
//
// Each page module exports `mount(main, route, ctx)` and returns what the app drives:
// `refresh()` (called at once, after `every` ms and soon after an event), and optionally
// `onEvent(event)` to decide whether a state change concerns it, and `unmount()`.
// Live updates come from the dispatcher's /events stream (server-sent events), opened once.

import { api, h, setCsrf, toast } from "./lib.js";
import * as audit from "./pages/audit.js";
import * as nodes from "./pages/nodes.js";
import * as overview from "./pages/overview.js";
import * as process from "./pages/process.js";
import * as processes from "./pages/processes.js";
import * as work from "./pages/work.js";

const PAGES = {
  overview: overview.mount,
  processes: processes.mount,
  process: process.mount,
  nodes: nodes.mountList,
  node: nodes.mountNode,
  computations: work.mountComputations,
  pipelines: work.mountPipelines,
  audit: audit.mount,
};
// a burst of events makes one refresh, at most this often
const EVENT_REFRESH_MS = 500;

let current = null;

function parseRoute() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  if (parts.length === 0) return { page: "overview", params };
  if (parts[0] === "processes" && parts[1]) return { page: "process", id: parts[1], params };
  if (parts[0] === "nodes" && parts[1]) return { page: "node", id: parts[1], params };
  return { page: PAGES[parts[0]] ? parts[0] : "overview", params };
}

class Mounted {
  constructor(page) {
    this.page = page;
    this.timer = null;
    this.pending = null;
    this.busy = false;
    this.again = false;
  }

  async refresh() {
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    try {
      await this.page.refresh();
      if (!document.body.dataset.loaded) performance.mark("corral:data-shown");
      document.body.dataset.loaded = "1";
    } catch (error) {
      if (error.status !== 401) toast(error.message, "error");
    } finally {
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.soon();
      }
    }
  }

  soon() {
    if (this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      this.refresh();
    }, EVENT_REFRESH_MS);
  }

  start() {
    this.refresh();
    if (this.page.every) this.timer = setInterval(() => this.refresh(), this.page.every);
  }

  stop() {
    clearInterval(this.timer);
    clearTimeout(this.pending);
    if (this.page.unmount) this.page.unmount();
  }
}

function show(session) {
  const route = parseRoute();
  if (current) current.stop();
  const main = document.getElementById("page");
  main.replaceChildren();
  const active = route.page === "process" ? "processes" : route.page === "node" ? "nodes" : route.page;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === active);
  }
  delete document.body.dataset.loaded;
  const page = PAGES[route.page](main, route, { session, navigate });
  current = new Mounted(page);
  current.start();
}

function navigate(hash) {
  if (location.hash === hash) show(window.corralSession);
  else location.hash = hash;
}

function follow() {
  const badge = document.getElementById("live");
  const source = new EventSource("/events");
  source.onopen = () => {
    badge.textContent = "live";
    badge.className = "live on";
  };
  source.onerror = () => {
    badge.textContent = "reconnecting";
    badge.className = "live off";
  };
  source.onmessage = (message) => {
    if (!current) return;
    const event = JSON.parse(message.data);
    if (!current.page.onEvent || current.page.onEvent(event)) current.soon();
  };
}

async function start() {
  const session = await api("/ui/api/session");
  window.corralSession = session;
  setCsrf(session.csrf_token);
  document.getElementById("who").replaceChildren(
    h("span", { class: `role ${session.role}` }, session.role),
    " ",
    session.actor,
  );
  document.getElementById("logout").addEventListener("click", async () => {
    await api("/ui/logout", { method: "POST" }).catch(() => null);
    location.assign("/ui/login");
  });
  window.addEventListener("hashchange", () => show(session));
  show(session);
  follow();
}

start().catch((error) => toast(`the dashboard could not start: ${error.message}`, "error"));
