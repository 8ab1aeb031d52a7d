// The dashboard: a hash router over the fleet overview, a host view and the alerts list.
import * as api from "./api.js";
import { AlertStore, renderAlerts } from "./alerts.js";
import { HostView } from "./hostview.js";
import { escapeHtml } from "./format.js";
import { Overview } from "./overview.js";

const live = new api.Live();
const alerts = new AlertStore(live);
const main = document.getElementById("main");
const panel = document.getElementById("alerts-panel");
const count = document.getElementById("alert-count");
const crumbs = document.getElementById("crumbs");
const conn = document.getElementById("conn");
let view = null;
let viewHost = null;

function route() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  view?.unmount();
  view = null;
  viewHost = null;
  document.body.dataset.view = parts[0] || "overview";
  if (parts[0] === "host" && parts[1]) {
    viewHost = decodeURIComponent(parts[1]);
    crumbs.innerHTML = `<a href="#/">fleet</a> / <span>${escapeHtml(viewHost)}</span>`;
    view = new HostView(main, live, viewHost, params);
  } else if (parts[0] === "alerts") {
    crumbs.innerHTML = `<a href="#/">fleet</a> / <span>alerts</span>`;
    main.innerHTML = `<section class="alerts-page" id="alerts-page"></section>`;
    live.subscribe({ hosts: ["*"], metrics: [], events: ["hosts", "alerts"] });
  } else {
    crumbs.innerHTML = `<span>fleet</span>`;
    view = new Overview(main, live, alerts);
  }
  view?.mount().catch((e) => console.error(e));
  drawAlerts();
}

function drawAlerts() {
  renderAlerts(panel, count, alerts, { host: viewHost });
  const page = document.getElementById("alerts-page");
  if (page) renderAlerts(page, count, alerts);
}

live.on("state", (s) => {
  conn.textContent = s === "live" ? "live" : s;
  conn.className = `conn ${s}`;
  conn.title = live.closedFor ? `closed: ${live.closedFor}` : "live connection";
});
alerts.onChange(drawAlerts);

const dialog = document.getElementById("token-dialog");
let asking = false;
api.onUnauthorized(() => {
  if (asking) return;
  asking = true;
  dialog.showModal();
});
dialog.addEventListener("close", () => {
  const t = document.getElementById("token-input").value.trim();
  if (t) {
    api.setToken(t);
    location.reload();
  }
  asking = false;
});

window.addEventListener("hashchange", route);
live.connect();
route();
