// Units as OpenTelemetry writes them ("1", "By", "By/s", "{thread}", "s") turned into text people read.

const IEC = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function bytes(v, digits = 1) {
  if (v == null || !Number.isFinite(v)) return "–";
  const neg = v < 0;
  let x = Math.abs(v);
  let i = 0;
  while (x >= 1024 && i < IEC.length - 1) { x /= 1024; i++; }
  return `${neg ? "-" : ""}${x.toFixed(i === 0 ? 0 : digits)} ${IEC[i]}`;
}

export function number(v, digits = 2) {
  if (v == null || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(a >= 100 ? 0 : digits);
}

export function percent(ratio, digits = 1) {
  if (ratio == null || !Number.isFinite(ratio)) return "–";
  return `${(ratio * 100).toFixed(digits)}%`;
}

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  const s = Math.abs(seconds);
  if (s < 1) return `${(seconds * 1000).toFixed(0)} ms`;
  if (s < 120) return `${seconds.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 7200) return `${Math.round(seconds / 60)} min`;
  if (s < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

/** Format a value of the given unit: "1" is a ratio shown as %, "By" bytes, "By/s" bytes per second. */
export function value(v, unit) {
  switch (unit) {
    case "1":
    case "s/s":
      return percent(v);
    case "By":
      return bytes(v);
    case "By/s":
      return `${bytes(v)}/s`;
    case "s":
      return duration(v);
    default: {
      const perSecond = unit.endsWith("/s");
      return number(v) + (perSecond ? "/s" : "");
    }
  }
}

/** Axis tick labels: shorter than value(). */
export function tick(v, unit) {
  if (v == null) return "";
  switch (unit) {
    case "1":
    case "s/s":
      return `${Math.round(v * 100)}%`;
    case "By":
      return bytes(v, tickDigits(v));
    case "By/s":
      return `${bytes(v, tickDigits(v))}/s`;
    default:
      return number(v, 1);
  }
}

// One decimal where whole units would repeat a label (9.5 GiB and 9.0 GiB both "9 GiB").
function tickDigits(v) {
  let x = Math.abs(v);
  while (x >= 1024) x /= 1024;
  return x < 10 && x !== Math.round(x) ? 1 : 0;
}

export function time(ms, withDate = false) {
  const d = new Date(ms);
  const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  return withDate ? `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${t}` : t;
}

/** Text for HTML, in element content and in quoted attributes alike. */
export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** A host's labels as chips: <span class="chip">k=v</span>... */
export function chips(labels) {
  return Object.entries(labels).map(([k, v]) => `<span class="chip">${escapeHtml(k)}=${escapeHtml(v)}</span>`).join("");
}

export function ago(ms, now = Date.now()) {
  if (ms == null) return "never";
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 2) return "just now";
  return `${duration(s)} ago`;
}
