// Processes: a filtered, sorted, paginated table. The dispatcher filters and pages
// (/ui/api/processes), so ten thousand processes cost no more than fifty. The filters live
// in the address (#/processes?state=…), so a view can be bookmarked or shared.

import { api, duration, h, nodeLink, processLink, stateBadge, table } from "../lib.js";

const SIZES = [25, 50, 100, 200];

export function processTable(view, { onSort, sorted } = {}) {
  return table(
    [
      { title: "upid", sort: "upid", cell: (p) => processLink(p.upid) },
      { title: "name", cell: (p) => p.name || "" },
      { title: "state", sort: "state", cell: (p) => stateBadge(p.state) },
      { title: "engine", sort: "engine", cell: (p) => p.engine || "–" },
      { title: "node", sort: "node", cell: (p) => nodeLink(p.node) },
      { title: "round", sort: "round", cell: (p) => p.round },
      { title: "starts", sort: "starts", cell: (p) => p.starts },
      { title: "age", sort: "created", cell: (p) => duration(view.time - p.created_at) },
      { title: "waiting reason", cell: (p) => h("span", { class: "reason" }, p.waiting_reason || "") },
    ],
    view.items,
    { empty: "No process matches.", onSort, sorted },
  );
}

export function mount(main, route) {
  const query = route.params;
  const filters = {
    state: query.get("state") || "",
    engine: query.get("engine") || "",
    node: query.get("node") || "",
    q: query.get("q") || "",
    sort: query.get("sort") || "created",
    order: query.get("order") || "desc",
    page: Math.max(0, Number(query.get("page") || 0)),
    limit: SIZES.includes(Number(query.get("limit"))) ? Number(query.get("limit")) : 50,
  };
  let page = null;

  const remember = () => {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
    history.replaceState(null, "", `#/processes?${params}`);
  };
  const change = (key, value) => {
    filters[key] = value;
    if (key !== "page") filters.page = 0;
    remember();
    page.refresh();
  };
  let typing = null;
  const stateSelect = h("select", { id: "filter-state", onchange: (e) => change("state", e.target.value) });
  const engineSelect = h("select", { id: "filter-engine", onchange: (e) => change("engine", e.target.value) });
  const search = h("input", {
    id: "filter-q",
    type: "search",
    placeholder: "upid or name",
    value: filters.q,
    oninput: (e) => {
      clearTimeout(typing);
      typing = setTimeout(() => change("q", e.target.value.trim()), 250);
    },
  });
  const nodeInput = h("input", {
    id: "filter-node",
    type: "search",
    placeholder: "node id",
    value: filters.node,
    onchange: (e) => change("node", e.target.value.trim()),
  });
  const size = h(
    "select",
    { id: "page-size", onchange: (e) => change("limit", Number(e.target.value)) },
    SIZES.map((n) => h("option", { value: n, selected: n === filters.limit }, `${n} a page`)),
  );
  const results = h("div", { id: "process-table" });
  const pager = h("div", { class: "pager" });
  main.append(
    h("h1", null, "Processes"),
    h("div", { class: "filters" }, stateSelect, engineSelect, nodeInput, search, size),
    h("section", { class: "card" }, pager, results),
  );

  const options = (select, values, current, all) => {
    if (select.options.length) return;
    select.append(h("option", { value: "" }, all));
    for (const value of values) select.append(h("option", { value, selected: value === current }, value));
  };

  page = {
    every: 10000,
    async refresh() {
      const view = await api("/ui/api/processes", {
        params: {
          state: filters.state,
          engine: filters.engine,
          node: filters.node,
          q: filters.q,
          sort: filters.sort,
          order: filters.order,
          offset: filters.page * filters.limit,
          limit: filters.limit,
        },
      });
      options(stateSelect, view.states, filters.state, "every state");
      options(engineSelect, view.engines, filters.engine, "every engine");
      const first = view.total ? view.offset + 1 : 0;
      const last = view.offset + view.items.length;
      pager.replaceChildren(
        h("button", { type: "button", disabled: filters.page === 0, onclick: () => change("page", filters.page - 1) }, "‹ Previous"),
        h("span", { id: "page-range" }, `${first.toLocaleString()}–${last.toLocaleString()} of ${view.total.toLocaleString()}`),
        h("button", { type: "button", disabled: last >= view.total, onclick: () => change("page", filters.page + 1) }, "Next ›"),
      );
      results.replaceChildren(
        processTable(view, {
          sorted: { key: filters.sort, desc: filters.order === "desc" },
          onSort: (key) => {
            filters.order = filters.sort === key && filters.order === "desc" ? "asc" : "desc";
            change("sort", key);
          },
        }),
      );
    },
  };
  return page;
}
