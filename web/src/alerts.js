// Firing and pending alerts: fetched once, then kept current by alert events on the live connection.
import * as api from "./api.js";
import * as fmt from "./format.js";

const SEVERITY_RANK = { critical: 0, warning: 1 };

export class AlertStore {
  constructor(live) {
    this.alerts = new Map();
    this.listeners = new Set();
    this.error = null;
    live.on("alert", (a) => this.apply(a));
    live.on("state", (s) => { if (s === "live") this.load(); });
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed() {
    this.listeners.forEach((fn) => fn());
  }

  async load() {
    try {
      const res = await api.alerts();
      this.alerts = new Map(res.alerts.map((a) => [`${a.rule}/${a.fingerprint}`, a]));
      this.error = null;
    } catch (e) {
      this.error = e.message;
    }
    this.changed();
  }

  apply(ev) {
    const key = `${ev.rule}/${ev.fingerprint}`;
    if (ev.state === "firing" || ev.state === "pending") {
      const prev = this.alerts.get(key);
      this.alerts.set(key, {
        ...prev, rule: ev.rule, fingerprint: ev.fingerprint, host: ev.host, state: ev.state,
        severity: ev.severity, labels: ev.labels, annotations: ev.annotations, value: ev.value,
        active_at: ev.active_at_ms ? new Date(ev.active_at_ms).toISOString() : prev?.active_at,
      });
    } else {
      this.alerts.delete(key);
    }
    this.changed();
  }

  list() {
    return [...this.alerts.values()].sort((a, b) =>
      (a.state === "firing" ? 0 : 1) - (b.state === "firing" ? 0 : 1)
      || (SEVERITY_RANK[a.severity] ?? 2) - (SEVERITY_RANK[b.severity] ?? 2)
      || String(a.active_at).localeCompare(String(b.active_at)));
  }
}

export function alertsByHost(list) {
  const out = new Map();
  for (const a of list) {
    const c = out.get(a.host) || { firing: 0, pending: 0 };
    c[a.state] = (c[a.state] || 0) + 1;
    out.set(a.host, c);
  }
  return out;
}

/** The alerts panel beside every view, and the count in the top bar. */
export function renderAlerts(el, countEl, store, { host = null } = {}) {
  const all = store.list();
  const list = host ? all.filter((a) => a.host === host) : all;
  const firing = all.filter((a) => a.state === "firing").length;
  countEl.querySelector("b").textContent = String(firing);
  countEl.classList.toggle("hot", firing > 0);
  const items = list.map((a) => `
    <li class="alert ${a.state} ${fmt.escapeHtml(a.severity || "")}">
      <div class="alert-head"><span class="state">${a.state}</span><b>${fmt.escapeHtml(a.rule)}</b>
        <a href="#/host/${encodeURIComponent(a.host)}">${fmt.escapeHtml(a.host)}</a></div>
      <div class="alert-summary">${fmt.escapeHtml(a.annotations?.summary || "")}</div>
      <div class="alert-meta">${fmt.escapeHtml(a.severity || "")}${a.value != null ? ` · value ${fmt.number(a.value, 3)}` : ""}
        ${a.active_at ? ` · since ${fmt.ago(Date.parse(a.active_at))}` : ""}</div>
    </li>`).join("");
  el.innerHTML = `
    <h2>Alerts${host ? ` on ${fmt.escapeHtml(host)}` : ""}</h2>
    ${store.error ? `<p class="error">${fmt.escapeHtml(store.error)}</p>` : ""}
    ${list.length ? `<ul class="alerts">${items}</ul>` : `<p class="quiet">Nothing firing or pending.</p>`}`;
}
