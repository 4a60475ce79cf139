// Overview: processes by state, the queue, nodes by state and engine, pool price, launches
// per minute (an SVG chart), and the latest actions of the audit log.

import { api, card, duration, h, nodeBadge, stateBadge, table, when } from "../lib.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

// One bar per minute, the newest on the right; each bar says its count when hovered.
export function launchChart(minutes) {
  const width = 1180;
  const height = 140;
  const top = 12;
  const bottom = 20;
  const most = Math.max(1, ...minutes.map((m) => m.count));
  const step = width / Math.max(1, minutes.length);
  const bars = minutes.map((m, i) => {
    const tall = ((height - top - bottom) * m.count) / most;
    const label = `${new Date(m.minute * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })}: ${m.count}`;
    return svg(
      "rect",
      { x: i * step + 1, y: height - bottom - tall, width: Math.max(1, step - 2), height: tall, class: "bar" },
      svg("title", {}, label),
    );
  });
  const axis = svg("line", { x1: 0, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" });
  const first = minutes.length ? new Date(minutes[0].minute * 1000) : new Date();
  const labels = [
    svg("text", { x: 0, y: height - 4, class: "tick" }, first.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })),
    svg("text", { x: width, y: height - 4, class: "tick end" }, "now"),
    svg("text", { x: 0, y: top - 2, class: "tick" }, `${most} / min`),
  ];
  return svg(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": "launches per minute" },
    axis,
    ...bars,
    ...labels,
  );
}

function counts(entries, badge) {
  const rows = Object.entries(entries);
  if (!rows.length) return h("p", { class: "muted" }, "None.");
  return h(
    "ul",
    { class: "counts" },
    rows.map(([name, count]) => h("li", null, badge(name), h("b", null, count.toLocaleString()))),
  );
}

export function mount(main) {
  const body = h("div", { class: "cards" });
  main.append(h("h1", null, "Overview"), body);
  return {
    every: 5000,
    async refresh() {
      const [view, log] = await Promise.all([
        api("/ui/api/overview"),
        api("/audit", { params: { limit: 8 } }),
      ]);
      const engines = Object.entries(view.nodes.by_engine).map(([name, e]) => ({ name, ...e }));
      const q = view.queue;
      body.replaceChildren(
        card(
          `Processes · ${view.processes.total.toLocaleString()}`,
          counts(view.processes.by_state, (state) =>
            h("a", { href: `#/processes?state=${encodeURIComponent(state)}` }, stateBadge(state)),
          ),
        ),
        card(
          "Queue",
          h("p", { class: "big", id: "queue-length" }, q.length.toLocaleString(), h("small", null, " waiting")),
          h("p", null, "Longest wait: ", h("b", null, q.longest_wait ? duration(q.longest_wait) : "–")),
          h("p", null, "Restarts waiting out their delay: ", h("b", null, q.delayed_restarts)),
        ),
        card(
          `Nodes · ${view.nodes.total}`,
          counts(view.nodes.by_state, (s) => nodeBadge(s)),
          table(
            [
              { title: "engine", cell: (e) => e.name },
              { title: "nodes", cell: (e) => e.nodes },
              { title: "by state", cell: (e) => Object.entries(e.by_state).map(([s, n]) => `${n} ${s}`).join(", ") || "–" },
              { title: "slots used", cell: (e) => `${e.used} / ${e.slots}` },
            ],
            engines,
          ),
        ),
        card(
          "Pool price",
          h("p", { class: "big" }, view.pool_price.toFixed(2), h("small", null, " per hour")),
          h("p", { class: "muted" }, "The hourly prices of the live nodes' instance types, added up."),
        ),
        h(
          "section",
          { class: "card wide" },
          h("h2", null, "Launches per minute"),
          launchChart(view.launches_per_minute),
        ),
        h(
          "section",
          { class: "card wide" },
          h("h2", null, h("a", { href: "#/audit" }, "Latest actions")),
          table(
            [
              { title: "when", cell: (e) => when(e.time) },
              { title: "who", cell: (e) => e.actor },
              { title: "what", cell: (e) => e.action },
              { title: "target", cell: (e) => e.target },
            ],
            log.entries,
            { empty: "No action yet." },
          ),
        ),
      );
    },
  };
}
