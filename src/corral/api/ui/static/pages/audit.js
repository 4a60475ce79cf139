// The audit log: who did what, newest first, paged back on demand, optionally about one
// process, node or definition.

import { api, h, json, table, when } from "../lib.js";

function targetCell(entry) {
  if (entry.action.includes("process") && !entry.action.endsWith("processes")) {
    return h("a", { href: `#/processes/${encodeURIComponent(entry.target)}` }, entry.target);
  }
  if (entry.action === "node_action") return h("a", { href: `#/nodes/${encodeURIComponent(entry.target)}` }, entry.target);
  return entry.target;
}

function detailCell(entry) {
  if (!entry.detail) return "";
  const { upids, ...rest } = entry.detail;
  const text = Object.entries(rest).map(([k, v]) => `${k} ${v}`).join(", ");
  if (!upids) return text;
  return h("details", null, h("summary", null, `${upids.length} processes`), json(upids));
}

export function mount(main, route) {
  let target = route.params.get("target") || "";
  let entries = [];
  let next = null;
  const body = h("div", { id: "audit-table" });
  const more = h("button", { type: "button", onclick: () => load(true) }, "Older entries");
  const filter = h("input", {
    type: "search",
    placeholder: "process, node or definition",
    value: target,
    onchange: (e) => {
      target = e.target.value.trim();
      load(false);
    },
  });
  main.append(
    h("h1", null, "Audit log"),
    h("p", { class: "muted" }, "Every action that changed something, with who asked for it: a token or a dashboard session, and its address."),
    h("div", { class: "filters" }, filter),
    h("section", { class: "card" }, body, more),
  );

  async function load(older) {
    const page = await api("/audit", { params: { limit: 100, before: older ? next : null, target } });
    entries = older ? entries.concat(page.entries) : page.entries;
    next = page.next_before;
    more.hidden = next === null;
    body.replaceChildren(
      table(
        [
          { title: "#", cell: (e) => e.id },
          { title: "when", cell: (e) => when(e.time) },
          { title: "who", cell: (e) => e.actor },
          { title: "what", cell: (e) => e.action },
          { title: "target", cell: targetCell },
          { title: "detail", cell: detailCell },
        ],
        entries,
        { empty: "No action yet." },
      ),
    );
  }

  return {
    every: 10000,
    onEvent: () => false,
    // once older entries are shown, the periodic refresh would take them away: not then
    refresh: () => (entries.length > 100 ? Promise.resolve() : load(false)),
  };
}
