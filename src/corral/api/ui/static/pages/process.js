// One process: its record, why it waits, its state history with times, its log followed
// live, and the actions restart and terminate.

import { actionButton, api, card, duration, facts, h, json, nodeLink, stateBadge, table, when } from "../lib.js";

// the log shown is at most this long: the oldest part is dropped as new output comes
const LOG_KEPT = 256 * 1024;
const LOG_CHUNK = 64 * 1024;
const LOG_EVERY_MS = 1000;

class LogFollower {
  constructor(upid, pre) {
    this.upid = upid;
    this.pre = pre;
    this.stream = "stdout";
    this.offset = null;
    this.timer = null;
  }

  async poll() {
    const path = `/processes/${encodeURIComponent(this.upid)}/logs`;
    if (this.offset === null) {
      // start near the end of a long log
      const probe = await api(path, { params: { stream: this.stream, offset: 0, limit: 1 } });
      this.offset = Math.max(0, probe.size - LOG_CHUNK);
      this.pre.textContent = this.offset ? `… (${this.offset.toLocaleString()} bytes before)\n` : "";
    }
    for (let reads = 0; reads < 8; reads += 1) {
      const chunk = await api(path, { params: { stream: this.stream, offset: this.offset, limit: LOG_CHUNK } });
      // an empty chunk that moves on: the bytes asked for were dropped (log_max_bytes)
      const moved = chunk.next_offset > this.offset;
      this.offset = chunk.next_offset;
      if (!chunk.data && moved) continue;
      if (!chunk.data) break;
      const atBottom = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 4;
      this.pre.textContent = (this.pre.textContent + chunk.data).slice(-LOG_KEPT);
      if (atBottom) this.pre.scrollTop = this.pre.scrollHeight;
    }
  }

  async tick() {
    try {
      await this.poll();
    } catch (error) {
      if (error.status === 503) this.pre.dataset.note = error.message;
    }
  }

  start() {
    this.tick();
    this.timer = setInterval(() => this.tick(), LOG_EVERY_MS);
  }

  switchTo(stream) {
    this.stream = stream;
    this.offset = null;
    this.pre.textContent = "";
    this.tick();
  }

  stop() {
    clearInterval(this.timer);
  }
}

export function mount(main, route, ctx) {
  const upid = route.id;
  const path = `/processes/${encodeURIComponent(upid)}`;
  const head = h("div", { class: "title" });
  const record = h("div", { id: "record" });
  const history = h("div", { id: "history" });
  const config = h("div", { id: "configuration" });
  const pre = h("pre", { id: "log", class: "log", tabindex: 0 });
  const follower = new LogFollower(upid, pre);
  const streams = h(
    "select",
    { id: "log-stream", onchange: (e) => follower.switchTo(e.target.value) },
    h("option", { value: "stdout" }, "stdout"),
    h("option", { value: "stderr" }, "stderr"),
  );
  main.append(
    head,
    h("div", { class: "cards two" }, card("Record", record), card("State history", history)),
    h("section", { class: "card wide" }, h("h2", null, "Log ", streams), pre),
    h("section", { class: "card wide" }, h("h2", null, "Request"), config),
  );
  follower.start();

  return {
    every: 5000,
    onEvent: (event) => event.upid === upid,
    unmount: () => follower.stop(),
    async refresh() {
      const [p, steps] = await Promise.all([api(path), api(`${path}/history`)]);
      const refresh = () => this.refresh();
      head.replaceChildren(
        h("h1", null, upid, " ", h("span", { id: "process-state" }, stateBadge(p.state))),
        h(
          "div",
          { class: "actions" },
          actionButton("Restart", `${path}/restart`, { session: ctx.session, confirm: `Restart ${upid}?`, done: refresh }),
          actionButton("Terminate", `${path}/terminate`, {
            session: ctx.session,
            confirm: `Terminate ${upid}?`,
            done: refresh,
            danger: true,
          }),
        ),
      );
      const waiting = p.waiting_reason ? h("span", { id: "waiting-reason", class: "reason" }, p.waiting_reason) : null;
      record.replaceChildren(
        facts([
          ["name", p.name],
          ["definition", p.definition_id],
          ["state", p.state],
          ["waiting reason", waiting],
          ["end reason", p.end_reason],
          ["round", p.round],
          ["starts", p.starts],
          ["restart attempts", p.restart_attempts],
          ["engine", p.engine || p.execution_engine_id],
          ["node", nodeLink(p.assigned)],
          ["hostname", p.hostname],
          ["pid", p.pid],
          ["exit code", p.exit_code ?? (p.signal ? `signal ${p.signal}` : null)],
          ["created", when(p.created_at)],
          ["updated", when(p.updated_at)],
          ["started", when(p.started_at)],
          ["ended", when(p.ended_at)],
        ]),
      );
      const rows = steps.steps.map((step, i) => ({ ...step, lasted: (steps.steps[i + 1] || {}).time }));
      history.replaceChildren(
        table(
          [
            { title: "time", cell: (s) => when(s.time) },
            { title: "round", cell: (s) => s.round },
            { title: "state", cell: (s) => stateBadge(s.state) },
            { title: "for", cell: (s) => (s.lasted ? duration(s.lasted - s.time) : "now") },
            { title: "why", cell: (s) => s.detail || "" },
          ],
          rows.reverse(),
          { empty: "No state change recorded." },
        ),
        h("p", { class: "muted" }, `The last ${steps.kept} changes are kept.`),
      );
      config.replaceChildren(
        facts([
          ["queueing mode", p.queueing_mode],
          ["restart mode", p.restart_mode],
          ["node exclusive", p.node_exclusive],
          ["constraints", json(p.constraints)],
          ["configuration", json(p.configuration)],
          ["subscribers", (p.subscribers || []).join(", ") || null],
        ]),
      );
    },
  };
}
