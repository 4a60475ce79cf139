// Computations and pipelines, as far as the dispatcher knows them: computations' worker
// processes (and shared pools), the event queue it hosts, and pipelines' workers.

import { api, card, h, nodeLink, processLink, stateBadge, table } from "../lib.js";

function workers(rows) {
  return table(
    [
      { title: "worker", cell: (p) => processLink(p.upid) },
      { title: "state", cell: (p) => stateBadge(p.state) },
      { title: "node", cell: (p) => nodeLink(p.node) },
      { title: "starts", cell: (p) => p.starts },
      { title: "waiting reason", cell: (p) => h("span", { class: "reason" }, p.waiting_reason || "") },
    ],
    rows,
  );
}

export function mountComputations(main) {
  const body = h("div", { id: "computations", class: "cards" });
  main.append(
    h("h1", null, "Computations"),
    h(
      "p",
      { class: "muted" },
      "Workers are processes of the corral-compute-worker definition. Tasks in flight are known to each computation's client, not to the dispatcher.",
    ),
    body,
  );
  return {
    every: 5000,
    async refresh() {
      const view = await api("/ui/api/computations");
      if (!view.computations.length) {
        body.replaceChildren(card(null, h("p", { class: "muted" }, "No computation has asked this dispatcher for workers.")));
        return;
      }
      body.replaceChildren(
        ...view.computations.map((c) =>
          h(
            "section",
            { class: "card wide" },
            h("h2", null, `${c.kind}: ${c.name}`, h("small", null, ` · ${c.live} live of ${c.workers.length}`)),
            workers(c.workers),
          ),
        ),
      );
    },
  };
}

function events(rows, held) {
  return table(
    [
      { title: "id", cell: (e) => e.id },
      { title: "event", cell: (e) => e.name },
      { title: "args", cell: (e) => h("code", null, e.args) },
      { title: "attempts", cell: (e) => e.attempts },
      held ? { title: "held by", cell: (e) => e.holder || "(before the restart)" } : { title: "recurrent", cell: (e) => (e.recurrent ? "yes" : "") },
    ],
    rows,
    { empty: held ? "Nothing in progress." : "Nothing pending." },
  );
}

export function mountPipelines(main) {
  const queue = h("div", { id: "queue" });
  const pipelines = h("div", { id: "pipeline-workers" });
  main.append(h("h1", null, "Pipelines"), queue, pipelines);
  return {
    every: 2000,
    async refresh() {
      const view = await api("/ui/api/pipelines");
      if (!view.queue) {
        queue.replaceChildren(
          card("Event queue", h("p", { class: "muted" }, "This dispatcher hosts no event queue; start it with corral serve --queue HOST:PORT to see pending and in-progress events here.")),
        );
      } else {
        queue.replaceChildren(
          card(
            `Event queue on ${view.queue.address}`,
            h("p", null, `${view.queue.clients} client(s) connected.`),
            view.queue.queues.length ? null : h("p", { class: "muted" }, "No event yet."),
            ...view.queue.queues.map((q) =>
              h(
                "div",
                { class: "queue" },
                h("h3", null, `queue ${q.queue}: `, h("b", null, `${q.pending} pending`), ", ", h("b", null, `${q.in_progress} in progress`)),
                h("h4", null, "In progress"),
                events(q.held, true),
                h("h4", null, "Next"),
                events(q.next, false),
              ),
            ),
          ),
        );
      }
      pipelines.replaceChildren(
        ...(view.pipelines.length
          ? view.pipelines.map((p) => card(`Workers of pipeline ${p.queue} · ${p.live} live`, workers(p.workers)))
          : [card("Workers", h("p", { class: "muted" }, "No pipeline worker (corral pipeline scale starts them)."))]),
      );
    },
  };
}
