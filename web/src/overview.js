// The fleet overview: a tile per host with its status and sparklines, trouble first, filterable by label.
import * as api from "./api.js";
import * as fmt from "./format.js";
import { Sparkline } from "./charts.js";
import { alertsByHost } from "./alerts.js";

const SPAN_S = 15 * 60;
const STEP_S = 15;
const CPU = "system.cpu.utilization";
const MEM = "system.memory.utilization";
const DISK = "system.disk.io";
const NET = "system.network.io";
const FS = "system.filesystem.utilization";
const SPARKS = [
  { id: "cpu", label: "CPU", unit: "1", color: "#5ec4ff", max: 1 },
  { id: "mem", label: "Mem", unit: "1", color: "#d2a8ff", max: 1 },
  { id: "disk", label: "Disk", unit: "By/s", color: "#f2b84b", max: null },
  { id: "net", label: "Net", unit: "By/s", color: "#7ee787", max: null },
];
const STATUS_RANK = { down: 0, stale: 1, up: 2 };
const CHUNK = 50;

/** "env=prod team=a" -> {env: "prod", team: "a"}; words without "=" match host names. */
export function parseFilter(text) {
  const labels = {};
  const words = [];
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const i = part.indexOf("=");
    if (i > 0) labels[part.slice(0, i)] = part.slice(i + 1);
    else words.push(part.toLowerCase());
  }
  return { labels, words };
}

export function matches(h, { labels, words }) {
  for (const [k, v] of Object.entries(labels)) if (h.labels[k] !== v) return false;
  return words.every((w) => h.host.toLowerCase().includes(w));
}

/** Trouble first: down, stale, firing, pending, then the busiest, then by name. */
export function troubleScore(h, alerts, latest) {
  const a = alerts.get(h.host) || { firing: 0, pending: 0 };
  const load = Math.max(latest.cpu ?? 0, latest.mem ?? 0, latest.fs ?? 0);
  return [STATUS_RANK[h.status] ?? 3, a.firing ? 0 : 1, a.pending ? 0 : 1, -load, h.host];
}

function compare(a, b) {
  for (let i = 0; i < a.length; i++) {
    if (a[i] < b[i]) return -1;
    if (a[i] > b[i]) return 1;
  }
  return 0;
}

export class Overview {
  constructor(root, live, alertStore) {
    this.root = root;
    this.live = live;
    this.alertStore = alertStore;
    this.tiles = new Map();
    this.hosts = [];
    this.alertCounts = new Map();
    this.filterText = sessionStorage.getItem("sysmon.filter") || "";
    this.timers = [];
    this.offs = [];
  }

  async mount() {
    this.root.innerHTML = `
      <section class="overview">
        <div class="toolbar">
          <input id="filter" type="search" placeholder="filter: env=prod team=web or a name" aria-label="Filter hosts"
                 value="${fmt.escapeHtml(this.filterText)}">
          <span class="summary" id="summary"></span>
        </div>
        <div class="tiles" id="tiles"></div>
        <p class="empty" id="empty" hidden>No hosts yet: start a collector (<code>sysmon agent</code>).</p>
      </section>`;
    const input = this.root.querySelector("#filter");
    input.addEventListener("input", () => {
      this.filterText = input.value;
      sessionStorage.setItem("sysmon.filter", input.value);
      this.render();
    });
    this.offs.push(this.live.on("samples", (m) => this.onSamples(m)));
    this.offs.push(this.live.on("host", () => this.refreshHosts()));
    this.offs.push(this.alertStore.onChange(() => this.render()));
    this.live.subscribe({ hosts: ["*"], metrics: [CPU, MEM, DISK, NET, FS], events: ["hosts", "alerts"] });
    await this.refreshHosts();
    await this.loadSparklines();
    this.timers.push(setInterval(() => this.refreshHosts(), 10000));
  }

  unmount() {
    this.timers.forEach(clearInterval);
    this.offs.forEach((off) => off());
    for (const t of this.tiles.values()) t.sparks.forEach((s) => s.destroy());
    this.tiles.clear();
  }

  async refreshHosts() {
    try {
      const res = await api.hosts();
      this.hosts = res.hosts;
      this.render();
    } catch (e) {
      this.root.querySelector("#summary").textContent = `hosts unavailable: ${e.message}`;
    }
  }

  render() {
    const filter = parseFilter(this.filterText);
    const alerts = alertsByHost(this.alertStore.list());
    this.alertCounts = alerts; // for onSamples: render() runs on every alert change
    const shown = this.hosts.filter((h) => matches(h, filter));
    for (const h of this.hosts) if (!this.tiles.has(h.host)) this.tiles.set(h.host, this.makeTile(h));
    shown.sort((a, b) => compare(
      troubleScore(a, alerts, this.tiles.get(a.host).latest), troubleScore(b, alerts, this.tiles.get(b.host).latest)));
    const grid = this.root.querySelector("#tiles");
    const visible = new Set(shown.map((h) => h.host));
    for (const [host, t] of this.tiles) if (!visible.has(host)) t.el.remove();
    shown.forEach((h, i) => {
      const t = this.tiles.get(h.host);
      this.updateTile(t, h, alerts.get(h.host));
      if (grid.children[i] !== t.el) grid.insertBefore(t.el, grid.children[i] || null);
    });
    const counts = { up: 0, stale: 0, down: 0 };
    this.hosts.forEach((h) => { counts[h.status]++; });
    this.root.querySelector("#summary").textContent =
      `${shown.length} of ${this.hosts.length} hosts · ${counts.up} up · ${counts.stale} stale · ${counts.down} down`;
    this.root.querySelector("#empty").hidden = this.hosts.length > 0;
  }

  makeTile(h) {
    const el = document.createElement("a");
    el.className = "tile";
    el.href = `#/host/${encodeURIComponent(h.host)}`;
    el.dataset.host = h.host;
    el.innerHTML = `
      <div class="tile-head"><span class="badge"></span><b class="name"></b><span class="seen"></span></div>
      <div class="labels"></div>
      <div class="sparks">${SPARKS.map((s) => `
        <div class="spark" data-spark="${s.id}"><span class="k">${s.label}</span><span class="v">–</span>
          <div class="chart"></div></div>`).join("")}</div>
      <div class="tile-alerts"></div>`;
    el.querySelector(".name").textContent = h.host;
    document.createDocumentFragment().appendChild(el);
    const sparks = SPARKS.map((s) => new Sparkline(el.querySelector(`[data-spark="${s.id}"] .chart`), { ...s, step: STEP_S }));
    return { el, sparks, latest: {}, host: h.host };
  }

  updateTile(t, h, a) {
    const badge = t.el.querySelector(".badge");
    badge.textContent = h.status;
    badge.className = `badge ${h.status}`;
    t.el.classList.toggle("down", h.status === "down");
    t.el.classList.toggle("stale", h.status === "stale");
    t.el.querySelector(".seen").textContent = fmt.ago(h.last_seen_ms);
    t.el.querySelector(".labels").innerHTML = fmt.chips(h.labels);
    const al = t.el.querySelector(".tile-alerts");
    al.textContent = a && (a.firing || a.pending)
      ? `${a.firing ? `${a.firing} firing` : ""}${a.firing && a.pending ? " · " : ""}${a.pending ? `${a.pending} pending` : ""}`
      : "";
    al.className = `tile-alerts ${a?.firing ? "firing" : a?.pending ? "pending" : ""}`;
    t.el.classList.toggle("firing", Boolean(a?.firing));
    const cells = t.el.querySelectorAll(".spark .v");
    SPARKS.forEach((s, i) => {
      const v = t.latest[s.id];
      cells[i].textContent = v == null ? "–" : fmt.value(v, s.unit);
    });
  }

  async loadSparklines() {
    const names = this.hosts.map((h) => h.host);
    const base = { start: `now-${SPAN_S}s`, step: `${STEP_S}s` };
    const chunks = [];
    for (let i = 0; i < names.length; i += CHUNK) chunks.push(names.slice(i, i + CHUNK));
    const sets = await Promise.all(chunks.map((host) => Promise.all([
      api.query({ ...base, host, metric: [CPU], match: { cpu: "total", state: "idle" } }),
      api.query({ ...base, host, metric: [MEM], match: { state: "used" } }),
      api.query({ ...base, host, metric: [DISK], sum_by: "host" }),
      api.query({ ...base, host, metric: [NET], sum_by: "host" }),
      api.query({ ...base, host, metric: [FS], match: { mountpoint: "/" } }),
    ]).catch(() => null)));
    for (const set of sets) {
      if (!set) continue;
      const [cpu, mem, disk, net, fs] = set;
      this.fill(cpu, "cpu", 0, (v) => 1 - v);
      this.fill(mem, "mem", 1);
      this.fill(disk, "disk", 2);
      this.fill(net, "net", 3);
      for (const s of fs.series) {
        const t = this.tiles.get(s.host);
        if (t && s.values.length) t.latest.fs = s.values[s.values.length - 1];
      }
    }
    this.render();
  }

  fill(res, id, index, f = (v) => v) {
    for (const s of res.series) {
      const t = this.tiles.get(s.host);
      if (!t) continue;
      const ys = s.values.map(f);
      t.sparks[index].setData(s.timestamps.map((x) => x / 1000), ys);
      if (ys.length) t.latest[id] = ys[ys.length - 1];
    }
  }

  onSamples(m) {
    const t = this.tiles.get(m.host);
    if (!t) return;
    const h = this.hosts.find((x) => x.host === m.host);
    const intervalS = (h?.interval_ms || 5000) / 1000;
    const byTime = new Map();
    const at = (ts) => {
      if (!byTime.has(ts)) byTime.set(ts, { disk: null, net: null });
      return byTime.get(ts);
    };
    for (const s of m.series) {
      s.t.forEach((ts, i) => {
        const v = s.v[i];
        const row = at(ts);
        if (s.metric === CPU && s.attributes.cpu === "total" && s.attributes.state === "idle") row.cpu = 1 - v;
        else if (s.metric === MEM && s.attributes.state === "used") row.mem = v;
        else if (s.metric === DISK) row.disk = (row.disk ?? 0) + v;
        else if (s.metric === NET) row.net = (row.net ?? 0) + v;
        else if (s.metric === FS && s.attributes.mountpoint === "/") row.fs = v;
      });
    }
    for (const [ts, row] of [...byTime].sort((a, b) => a[0] - b[0])) {
      SPARKS.forEach((sp, i) => {
        const v = row[sp.id];
        if (v == null) return;
        t.sparks[i].append(ts / 1000, v, SPAN_S, intervalS);
        t.latest[sp.id] = v;
      });
      if (row.fs != null) t.latest.fs = row.fs;
    }
    if (h) {
      const last = Math.max(...byTime.keys());
      if (!h.last_seen_ms || last > h.last_seen_ms) h.last_seen_ms = last;
      if (h.status !== "up") { h.status = "up"; this.render(); return; }
      this.updateTile(t, h, this.alertCounts.get(h.host));
    }
  }
}
