// Nodes: the table of nodes, and a node's page with its processes and the operator's
// actions (hold, drain, run, kill).

import { actionButton, api, card, duration, facts, h, nodeBadge, nodeLink, table, when } from "../lib.js";
import { processTable } from "./processes.js";

function heartbeat(node) {
  return node.last_heard === null || node.last_heard === undefined ? "never" : `${duration(node.last_heard)} ago`;
}

export function mountList(main) {
  const body = h("div", { id: "node-table" });
  main.append(h("h1", null, "Nodes"), h("section", { class: "card" }, body));
  return {
    every: 2000,
    async refresh() {
      const list = await api("/nodes");
      list.sort((a, b) => a.engine.localeCompare(b.engine) || a.node_id.localeCompare(b.node_id));
      body.replaceChildren(
        table(
          [
            { title: "node", cell: (n) => nodeLink(n.node_id) },
            { title: "state", cell: (n) => nodeBadge(n.state) },
            { title: "health", cell: (n) => nodeBadge(n.health) },
            { title: "engine", cell: (n) => n.engine },
            { title: "type", cell: (n) => n.instance_type || "–" },
            { title: "slots used", cell: (n) => `${n.used} / ${n.slots}` },
            { title: "last heartbeat", cell: heartbeat },
            { title: "idle behaviour", cell: (n) => nodeBadge(n.idle_behavior) },
            { title: "hostname", cell: (n) => n.hostname || "–" },
            { title: "price", cell: (n) => (n.price === null || n.price === undefined ? "–" : `${n.price}/h`) },
          ],
          list,
          { empty: "No node: the pool boots them as work arrives." },
        ),
      );
    },
  };
}

export function mountNode(main, route, ctx) {
  const nodeId = route.id;
  const path = `/nodes/${encodeURIComponent(nodeId)}`;
  const head = h("div", { class: "title" });
  const details = h("div", { id: "node-details" });
  const held = h("div", { id: "node-processes" });
  main.append(head, h("div", { class: "cards" }, card("Node", details)), h("section", { class: "card wide" }, h("h2", null, "Processes"), held));
  return {
    every: 2000,
    onEvent: (event) => event.process && event.process.assigned === nodeId,
    async refresh() {
      const [node, page] = await Promise.all([
        api(path),
        api("/ui/api/processes", { params: { node: nodeId, limit: 200, sort: "updated" } }),
      ]);
      const done = () => this.refresh();
      const act = (label, action, confirm, danger) =>
        actionButton(label, `${path}/${action}`, { session: ctx.session, confirm, done, danger });
      head.replaceChildren(
        h("h1", null, nodeId, " ", h("span", { id: "node-state" }, nodeBadge(node.state)), " ", h("span", { id: "node-behaviour" }, nodeBadge(node.idle_behavior))),
        h(
          "div",
          { class: "actions" },
          act("Hold", "hold", null),
          act("Drain", "drain", `Drain ${nodeId}? It takes no new work and is retired once empty.`),
          act("Run", "run", null),
          act("Kill", "kill", `Kill ${nodeId} now? Its processes follow their restart modes.`, true),
        ),
      );
      details.replaceChildren(
        facts([
          ["state", node.state],
          ["health", node.health],
          ["connected", node.connected ? "yes" : "no"],
          ["last heartbeat", heartbeat(node)],
          ["idle behaviour", node.idle_behavior],
          ["engine", node.engine],
          ["instance type", node.instance_type],
          ["price", node.price === null || node.price === undefined ? null : `${node.price} per hour`],
          ["slots used", `${node.used} / ${node.slots}`],
          ["hostname", node.hostname],
          ["instance", node.instance_id],
          ["labels", Object.entries(node.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || null],
          ["created", when(node.created_at)],
        ]),
      );
      held.replaceChildren(
        h("p", { class: "muted" }, `${page.total} process(es) placed here now or last.`),
        processTable(page),
      );
    },
  };
}
