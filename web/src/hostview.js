// One host: panels for CPU, load, memory, swap, filesystems, disk and network I/O, with a range
// picker and a live mode that adds samples from the WebSocket to the newest step bucket without
// refetching, on every range that ends now.
import * as api from "./api.js";
import * as fmt from "./format.js";
import { Panel, align } from "./charts.js";

const CPU = "system.cpu.utilization";
const LOAD = ["system.cpu.load_average.1m", "system.cpu.load_average.5m", "system.cpu.load_average.15m"];

export const PANELS = [
  {
    id: "cpu-total", title: "CPU, total by state", unit: "1", min: 0, max: 1,
    query: { metric: [CPU], match: { cpu: "total" } },
    key: (s) => (s.metric === CPU && s.attributes.cpu === "total" && s.attributes.state !== "idle"
      ? s.attributes.state : null),
  },
  {
    id: "cpu-cores", title: "CPU per core, busy", unit: "1", min: 0, max: 1,
    query: { metric: [CPU], match: { state: "idle" } },
    key: (s) => (s.metric === CPU && s.attributes.state === "idle" && s.attributes.cpu !== "total"
      ? `cpu ${s.attributes.cpu}` : null),
    value: (v) => 1 - v,
  },
  {
    id: "load", title: "Load average", unit: "{thread}", min: 0,
    query: { metric: LOAD },
    key: (s) => (LOAD.includes(s.metric) ? s.metric.split(".").pop() : null),
  },
  {
    id: "memory", title: "Memory", unit: "By", min: 0,
    query: { metric: ["system.memory.usage"] },
    key: (s) => (s.metric === "system.memory.usage" ? s.attributes.state : null),
  },
  {
    id: "swap", title: "Swap", unit: "By", min: 0,
    query: { metric: ["system.paging.usage"] },
    key: (s) => (s.metric === "system.paging.usage" ? s.attributes.state : null),
  },
  {
    id: "filesystems", title: "Filesystems, used", unit: "1", min: 0, max: 1,
    query: { metric: ["system.filesystem.utilization"] },
    key: (s) => (s.metric === "system.filesystem.utilization" ? s.attributes.mountpoint : null),
  },
  {
    id: "disk", title: "Disk I/O", unit: "By/s", min: 0,
    query: { metric: ["system.disk.io"] },
    key: (s) => (s.metric === "system.disk.io" ? `${s.attributes.device} ${s.attributes.direction}` : null),
  },
  {
    id: "network", title: "Network I/O", unit: "By/s", min: 0,
    query: { metric: ["system.network.io"] },
    key: (s) => (s.metric === "system.network.io" ? `${s.attributes.device} ${s.attributes.direction}` : null),
  },
];

export const RANGES = { "5m": 300, "1h": 3600, "24h": 86400, "7d": 7 * 86400, "90d": 90 * 86400 };
const METRICS = [...new Set(PANELS.flatMap((p) => p.query.metric))];

function isoLocal(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

export class HostView {
  constructor(root, live, host, params) {
    this.root = root;
    this.live = live;
    this.host = host;
    this.range = params.get("range") in RANGES || params.get("range") === "custom" ? params.get("range") : "1h";
    this.from = Number(params.get("from")) || Date.now() - 6 * 3600e3;
    this.to = Number(params.get("to")) || Date.now();
    // Every range that ends now follows along; a custom range has an end of its own.
    this.liveOn = this.range !== "custom" && params.get("live") !== "0";
    this.interval = 5;
    this.panels = new Map();
    this.offs = [];
    this.loading = null;
    this.when = {};
    this.retrying = new Set();
    this.empty = new Set(); // panels whose last answer had nothing to draw
    this.timers = [];
  }

  async mount() {
    const h = this.host;
    this.root.innerHTML = `
      <section class="hostview">
        <div class="host-head">
          <h1><span class="badge" id="host-status">…</span> <span id="host-name"></span></h1>
          <div class="labels" id="host-labels"></div>
          <div class="facts" id="host-facts"></div>
        </div>
        <div class="toolbar range-bar">
          <div class="ranges" role="group" aria-label="Time range">
            ${Object.keys(RANGES).map((r) => `<button data-range="${r}">${r}</button>`).join("")}
            <button data-range="custom">custom</button>
          </div>
          <form class="custom" id="custom" hidden>
            <input type="datetime-local" id="from" aria-label="From" value="${isoLocal(this.from)}">
            <span>→</span>
            <input type="datetime-local" id="to" aria-label="To" value="${isoLocal(this.to)}">
            <button type="submit">apply</button>
          </form>
          <label class="live-toggle"><input type="checkbox" id="live"> live</label>
          <span class="tier" id="tier"></span>
        </div>
        <div class="now" id="now"></div>
        <div class="panels" id="panels">${PANELS.map((p) => `
          <figure class="panel" data-panel="${p.id}">
            <figcaption><span>${p.title}</span><span class="panel-tier"></span></figcaption>
            <div class="chart"></div><p class="panel-msg" hidden></p>
          </figure>`).join("")}
        </div>
      </section>`;
    this.root.querySelector("#host-name").textContent = h;
    this.root.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => {
      this.setRange(b.dataset.range);
    }));
    this.root.querySelector("#custom").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const from = Date.parse(this.root.querySelector("#from").value);
      const to = Date.parse(this.root.querySelector("#to").value);
      if (Number.isFinite(from) && Number.isFinite(to) && from < to) {
        this.from = from;
        this.to = to;
        this.updateUrl();
        this.load();
      }
    });
    const liveBox = this.root.querySelector("#live");
    liveBox.addEventListener("change", () => {
      this.liveOn = liveBox.checked;
      this.updateUrl();
      if (this.liveOn) this.load();
    });
    this.offs.push(this.live.on("samples", (m) => this.onSamples(m)));
    this.offs.push(this.live.on("host", (m) => { if (m.host === this.host) this.loadHost(); }));
    this.offs.push(this.live.on("dropped", () => { if (this.liveOn) this.load(); }));
    this.live.subscribe({ hosts: [h], metrics: METRICS, events: ["hosts", "alerts"] });
    this.timers.push(setInterval(() => this.loadHost(), 15000));
    this.syncControls();
    await Promise.all([this.loadHost(), this.load()]);
  }

  unmount() {
    this.offs.forEach((off) => off());
    this.timers.forEach(clearInterval);
    for (const p of this.panels.values()) p.chart?.destroy();
    this.panels.clear();
  }

  setRange(r) {
    const wasCustom = this.range === "custom";
    this.range = r;
    if (r === "custom") this.liveOn = false;
    else if (wasCustom) this.liveOn = true;
    this.syncControls();
    this.updateUrl();
    if (r !== "custom") this.load();
  }

  syncControls() {
    this.root.querySelectorAll("[data-range]").forEach((b) => {
      b.classList.toggle("active", b.dataset.range === this.range);
      b.setAttribute("aria-pressed", String(b.dataset.range === this.range));
    });
    this.root.querySelector("#custom").hidden = this.range !== "custom";
    const liveBox = this.root.querySelector("#live");
    liveBox.checked = this.liveOn;
    liveBox.disabled = this.range === "custom";
    liveBox.parentElement.title = liveBox.disabled ? "a custom range does not follow along" : "add samples as they arrive";
  }

  updateUrl() {
    const q = new URLSearchParams({ range: this.range });
    if (this.range === "custom") { q.set("from", String(this.from)); q.set("to", String(this.to)); }
    if (this.range !== "custom" && !this.liveOn) q.set("live", "0");
    history.replaceState(null, "", `#/host/${encodeURIComponent(this.host)}?${q}`);
  }

  span() {
    return this.range === "custom" ? (this.to - this.from) / 1000 : RANGES[this.range];
  }

  async loadHost() {
    try {
      const d = await api.host(this.host);
      const st = this.root.querySelector("#host-status");
      st.textContent = d.status;
      st.className = `badge ${d.status}`;
      if (d.interval_ms) this.interval = d.interval_ms / 1000;
      this.root.querySelector("#host-labels").innerHTML = fmt.chips(d.labels);
      const facts = [
        d.os, d.cpu_count ? `${d.cpu_count} CPUs` : null,
        d.memory_total_bytes ? `${fmt.bytes(d.memory_total_bytes)} memory` : null,
        `last sample ${fmt.ago(d.last_seen_ms)}`,
      ].filter(Boolean);
      this.root.querySelector("#host-facts").textContent = facts.join(" · ");
      this.renderNow(d.current);
    } catch (e) {
      this.root.querySelector("#host-facts").textContent = e.status === 404 ? `unknown host ${this.host}` : e.message;
    }
  }

  renderNow(current) {
    const find = (metric, attrs) => current.find((c) => c.metric === metric
      && Object.entries(attrs).every(([k, v]) => c.attributes[k] === v));
    const cpuIdle = find(CPU, { cpu: "total", state: "idle" });
    const mem = find("system.memory.utilization", { state: "used" });
    const swap = find("system.paging.utilization", { state: "used" });
    const root = find("system.filesystem.utilization", { mountpoint: "/" });
    const load = find("system.cpu.load_average.1m", {});
    const items = [
      ["CPU", cpuIdle ? fmt.percent(1 - cpuIdle.value) : "–"],
      ["Memory", mem ? fmt.percent(mem.value) : "–"],
      ["Swap", swap ? fmt.percent(swap.value) : "–"],
      ["/ used", root ? fmt.percent(root.value) : "–"],
      ["Load 1m", load ? fmt.number(load.value) : "–"],
    ];
    this.root.querySelector("#now").innerHTML = items
      .map(([k, v]) => `<div class="stat"><span>${k}</span><b>${v}</b></div>`).join("");
  }

  async load() {
    this.loading?.abort();
    const ctl = new AbortController();
    this.loading = ctl;
    this.when = this.range === "custom"
      ? { start: new Date(this.from).toISOString(), end: new Date(this.to).toISOString() }
      : { start: `now-${this.range}` };
    const tiers = new Set();
    await Promise.all(PANELS.map((p) => this.loadPanel(p, ctl.signal, tiers)));
    if (!ctl.signal.aborted) {
      this.root.querySelector("#tier").textContent = tiers.size ? `tier: ${[...tiers].join(", ")}` : "";
      this.root.querySelector("#tier").dataset.tier = [...tiers].join(",");
    }
  }

  async loadPanel(p, signal, tiers = new Set()) {
    const fig = this.root.querySelector(`[data-panel="${p.id}"]`);
    const msg = fig.querySelector(".panel-msg");
    try {
      const res = await api.query({ ...p.query, host: [this.host], ...this.when }, { signal });
      if (signal.aborted) return;
      tiers.add(res.tier);
      fig.querySelector(".panel-tier").textContent = `${res.tier} · ${res.step}`;
      this.draw(p, fig, res);
      msg.hidden = true;
      if (this.panels.get(p.id).labels.length) this.empty.delete(p.id);
      else this.empty.add(p.id);
    } catch (e) {
      if (e.name === "AbortError") return;
      if (e.status === 404) this.empty.add(p.id);
      msg.hidden = false;
      msg.textContent = e.status === 404 ? "no data for this host" : e.message;
    }
  }

  // A panel that had nothing to draw (a host's first minutes: its memory series may come a sample
  // after its CPU ones) asks again once a live sample for it arrives, at most every 2 s.
  retryPanel(p) {
    if (this.retrying.has(p.id) || !this.loading) return;
    this.retrying.add(p.id);
    this.loadPanel(p, this.loading.signal).finally(() => {
      this.timers.push(setTimeout(() => this.retrying.delete(p.id), 2000));
    });
  }

  draw(p, fig, res) {
    const keyed = res.series.map((s) => ({ key: p.key({ metric: s.metric, attributes: s.attributes }), s }))
      .filter((x) => x.key != null)
      .sort((a, b) => a.key.localeCompare(b.key, undefined, { numeric: true }));
    const f = p.value || ((v) => v);
    const list = keyed.map(({ s }) => ({ timestamps: s.timestamps, values: s.values.map(f) }));
    const labels = keyed.map((x) => x.key);
    const old = this.panels.get(p.id);
    const el = fig.querySelector(".chart");
    if (!old || old.labels.join("\n") !== labels.join("\n")) {
      old?.chart.destroy();
      el.innerHTML = "";
      const chart = new Panel(el, { labels, unit: p.unit, min: p.min ?? null, max: p.max ?? null });
      this.panels.set(p.id, { chart, labels, index: new Map(labels.map((l, i) => [l, i])) });
    }
    const entry = this.panels.get(p.id);
    entry.chart.setData(align(list), [res.start_ms / 1000, res.end_ms / 1000], res.step_ms / 1000);
    fig.classList.toggle("empty", labels.length === 0);
    fig.querySelector(".panel-msg").hidden = labels.length > 0;
    fig.querySelector(".panel-msg").textContent = labels.length ? "" : "no series";
  }

  onSamples(m) {
    if (!this.liveOn || m.host !== this.host) return;
    const span = this.span();
    for (const p of PANELS) {
      const entry = this.panels.get(p.id);
      if (this.empty.has(p.id)) {
        if (m.series.some((s) => p.key(s) != null)) this.retryPanel(p);
        continue;
      }
      if (!entry) continue;
      const f = p.value || ((v) => v);
      const rows = new Map();
      for (const s of m.series) {
        const key = p.key(s);
        const i = key == null ? undefined : entry.index.get(key);
        if (i === undefined) continue;
        s.t.forEach((t, j) => {
          if (!rows.has(t)) rows.set(t, new Array(entry.labels.length).fill(null));
          rows.get(t)[i] = f(s.v[j]);
        });
      }
      for (const [t, values] of [...rows].sort((a, b) => a[0] - b[0])) {
        entry.chart.append(t / 1000, values, span, this.interval);
      }
    }
  }
}
