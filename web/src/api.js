// REST with the bearer token, and the one live WebSocket the whole page shares.

const TOKEN_KEY = "sysmon.token";

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(t) {
  if (t) localStorage.setItem(TOKEN_KEY, t);
  else localStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function url(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v == null) continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else if (typeof v === "object") Object.entries(v).forEach(([a, b]) => q.append(k, `${a}=${b}`));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

const listeners = { unauthorized: [] };
export function onUnauthorized(fn) {
  listeners.unauthorized.push(fn);
}

export async function get(path, params, { signal } = {}) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const res = await fetch(url(path, params), { headers, signal });
  if (!res.ok) {
    let problem = null;
    try { problem = await res.json(); } catch { /* not JSON */ }
    if (res.status === 401) listeners.unauthorized.forEach((fn) => fn());
    throw new ApiError(res.status, problem);
  }
  return res.json();
}

export const hosts = (params) => get("/api/v1/hosts", params);
export const host = (id) => get(`/api/v1/hosts/${encodeURIComponent(id)}`);
export const alerts = () => get("/api/v1/alerts");
export const query = (params, opts) => get("/api/v1/query", params, opts);

function base64url(s) {
  return btoa(unescape(encodeURIComponent(s))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The live connection: reconnects with backoff, re-sends the current subscription, dispatches frames. */
export class Live {
  constructor() {
    this.ws = null;
    this.sub = null;
    this.handlers = new Map();
    this.attempt = 0;
    this.state = "connecting";
    this.dropped = 0;
    this.closedFor = null;
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  }

  emit(type, msg) {
    for (const fn of this.handlers.get(type) || []) {
      try { fn(msg); } catch (e) { console.error(e); }
    }
  }

  setState(s) {
    this.state = s;
    this.emit("state", s);
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const protocols = ["sysmon.v1"];
    const t = token();
    if (t) protocols.push(`base64url.bearer.sysmon.dev.${base64url(t)}`);
    const ws = new WebSocket(`${scheme}://${location.host}/ws/live`, protocols);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.setState("live");
      this.sendSubscription();
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "dropped") this.dropped = msg.total;
      this.emit(msg.type, msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.closedFor = ev.code >= 4000 ? `${ev.code} ${ev.reason}` : null;
      if (ev.code === 4401) {
        this.setState("unauthorized");
        listeners.unauthorized.forEach((fn) => fn());
        return;
      }
      this.setState(ev.code >= 4000 ? "refused" : "reconnecting");
      const delay = Math.min(15000, 500 * 2 ** this.attempt++) * (0.8 + Math.random() * 0.4);
      setTimeout(() => this.connect(), delay);
    };
  }

  subscribe(sub) {
    this.sub = sub;
    this.sendSubscription();
  }

  sendSubscription() {
    if (this.sub && this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "subscribe", ...this.sub }));
    }
  }
}
