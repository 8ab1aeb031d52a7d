// uPlot panels for the dark theme: time series with a tooltip of exact values, and sparklines.
import uPlot from "./vendor/uPlot.esm.js";
import * as fmt from "./format.js";

export const PALETTE = [
  "#5ec4ff", "#f2b84b", "#7ee787", "#ff7b72", "#d2a8ff", "#56d4bc", "#ffa657", "#a5d6ff",
  "#f778ba", "#b4e05a", "#e3b341", "#79c0ff",
];
const AXIS = { stroke: "#8b949e", grid: { stroke: "#222a36", width: 1 }, ticks: { stroke: "#2d3644", width: 1 } };

/** Series of the API (own timestamps each) on one shared x axis, in seconds; gaps are null. */
export function align(list) {
  const xs = [...new Set(list.flatMap((s) => s.timestamps))].sort((a, b) => a - b);
  const at = new Map(xs.map((t, i) => [t, i]));
  const ys = list.map((s) => {
    const y = new Array(xs.length).fill(null);
    s.timestamps.forEach((t, i) => { y[at.get(t)] = s.values[i]; });
    return y;
  });
  return [xs.map((t) => t / 1000), ...ys];
}

/**
 * Live samples land in the step bucket the server would have put them in, as a running mean: on the
 * 24 h range (5 min steps) a 5 s sample moves the newest bucket instead of adding a point of its own,
 * and the chart reads as if it had been fetched again. A bucket that came from the server already
 * holds the samples before t; they are counted at the host's sampling interval, as the server
 * averaged them. Times in seconds.
 */
export class BucketMean {
  constructor(step = 0) {
    this.step = step;
    this.acc = new Map();
  }

  bucket(t) {
    return this.step > 0 ? Math.floor(t / this.step) * this.step : t;
  }

  /** The bucket's mean with v (at time t) in it; `current` is what the bucket shows now. */
  add(key, t, current, v, interval) {
    const b = this.bucket(t);
    let a = this.acc.get(key);
    if (!a || a.b !== b) {
      const n = current == null ? 0 : Math.max(1, Math.round((t - b) / interval));
      a = { b, sum: current == null ? 0 : current * n, n };
      this.acc.set(key, a);
    }
    a.sum += v;
    a.n += 1;
    return a.sum / a.n;
  }

  /**
   * Merge a sample at t with a value per series (or null) into uPlot data [xs, ...ys], in place, and
   * drop what is older than `span`; false when t is older than the newest bucket.
   */
  merge(data, t, values, span, interval) {
    const xs = data[0];
    const b = this.bucket(t);
    const last = xs.length ? xs[xs.length - 1] : -Infinity;
    if (b < last) return false;
    if (b > last) {
      xs.push(b);
      for (let s = 1; s < data.length; s++) data[s].push(null);
    }
    const i = xs.length - 1;
    values.forEach((v, s) => { if (v != null) data[s + 1][i] = this.add(s, t, data[s + 1][i], v, interval); });
    let cut = 0;
    while (cut < xs.length && xs[cut] < t - span) cut++;
    if (cut) for (let s = 0; s < data.length; s++) data[s].splice(0, cut);
    return true;
  }
}

const DEFAULT_INTERVAL_S = 5;

function tooltipPlugin(unit) {
  let tip;
  return {
    hooks: {
      init: (u) => {
        tip = document.createElement("div");
        tip.className = "tooltip";
        tip.hidden = true;
        u.over.appendChild(tip);
        u.over.addEventListener("mouseleave", () => { tip.hidden = true; });
      },
      setCursor: (u) => {
        const i = u.cursor.idx;
        if (i == null || u.cursor.left < 0) { tip.hidden = true; return; }
        const rows = [];
        for (let s = 1; s < u.series.length; s++) {
          const v = u.data[s][i];
          if (v == null || !u.series[s].show) continue;
          rows.push(`<div><i style="background:${u.series[s].stroke()}"></i>${u.series[s].label}` +
            `<b>${fmt.value(v, unit)}</b></div>`);
        }
        if (!rows.length) { tip.hidden = true; return; }
        tip.innerHTML = `<time>${fmt.time(u.data[0][i] * 1000, true)}</time>${rows.join("")}`;
        tip.hidden = false;
        const { left, top } = u.cursor;
        const w = u.over.clientWidth;
        tip.style.left = `${left + 12 + tip.offsetWidth > w ? Math.max(0, left - tip.offsetWidth - 12) : left + 12}px`;
        tip.style.top = `${Math.max(0, top - 10)}px`;
      },
    },
  };
}

function sizeOf(el, height) {
  return { width: Math.max(120, Math.floor(el.clientWidth)), height };
}

/** A time-series panel. labels: series labels; unit: OpenTelemetry unit for axes and tooltip. */
export class Panel {
  constructor(el, { labels, unit, height = 200, min = null, max = null }) {
    this.el = el;
    this.unit = unit;
    this.labels = labels;
    const opts = {
      ...sizeOf(el, height),
      cursor: { points: { size: 6 }, drag: { x: false, y: false } },
      legend: { show: true, live: false },
      scales: {
        x: { time: true, range: (u, lo, hi) => this.xRange || [lo, hi] },
        y: { range: (u, lo, hi) => yRange(lo, hi, min, max, minSpan(unit)) },
      },
      axes: [
        { ...AXIS },
        { ...AXIS, size: axisSize, values: (u, ticks) => ticks.map((t) => fmt.tick(t, unit)) },
      ],
      series: [{}, ...labels.map((label, i) => ({
        // uPlot's default points: dots where data is sparse (a lone bucket still shows), none where dense.
        label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false,
      }))],
      plugins: [tooltipPlugin(unit)],
    };
    this.data = [[], ...labels.map(() => [])];
    this.mean = new BucketMean();
    this.u = new uPlot(opts, this.data, el);
    this.resizer = new ResizeObserver(() => this.u.setSize(sizeOf(el, height)));
    this.resizer.observe(el);
  }

  /**
   * Data, the time range (seconds) it was asked for (the x axis spans the range, not just the data),
   * and its step in seconds, which live samples are averaged into.
   */
  setData(data, xRange = null, step = 0) {
    this.xRange = xRange;
    this.data = data;
    this.mean = new BucketMean(step);
    this.u.setData(data);
    this.mark(null);
  }

  // What is drawn, for people reading the DOM (and the browser tests): newest bucket, row count, and
  // the time of the newest live sample merged in.
  mark(updated) {
    const xs = this.data[0];
    this.el.dataset.points = String(xs.length);
    this.el.dataset.last = xs.length ? String(xs[xs.length - 1]) : "";
    this.el.dataset.updated = updated == null ? "" : String(updated);
  }

  /**
   * Live: merge a sample at time t (seconds) with a value per series (or null) into its step bucket,
   * keep `span` seconds; `interval` is the host's sampling interval in seconds.
   */
  append(t, values, span, interval = DEFAULT_INTERVAL_S) {
    if (!this.mean.merge(this.data, t, values, span, interval)) return false;
    if (this.xRange) this.xRange = [Math.max(this.xRange[0], t - span), Math.max(this.xRange[1], t)];
    this.u.setData(this.data);
    this.mark(t);
    return true;
  }

  destroy() {
    this.resizer.disconnect();
    this.u.destroy();
  }
}

// Bytes never show a range under 1 KiB: an idle swap would otherwise get ticks of fractions of a byte.
function minSpan(unit) {
  return unit === "By" || unit === "By/s" ? 1024 : 0;
}

function yRange(lo, hi, min, max, span = 0) {
  if (lo == null || hi == null) return [min ?? 0, max ?? Math.max(1, span)];
  const l = min != null ? Math.min(min, lo) : lo;
  let h = max != null ? Math.max(max, hi) : hi;
  if (h - l < span) h = l + span;
  if (h === l) h = l + (Math.abs(l) || 1);
  const pad = (h - l) * 0.05;
  return [min != null ? l : l - pad, max != null ? h : h + pad];
}

// Wide enough for the longest tick label ("1023 MiB/s"), measured at about 7px a character.
function axisSize(u, values) {
  const longest = Math.max(4, ...(values || []).map((v) => String(v).length));
  return 18 + longest * 7.5;
}

/** A small chart without axes for the overview tiles. */
export class Sparkline {
  constructor(el, { color, min = 0, max = null, height = 36, step = 0 }) {
    this.el = el;
    this.mean = new BucketMean(step);
    const opts = {
      width: Math.max(60, el.clientWidth), height,
      cursor: { show: false }, legend: { show: false }, select: { show: false },
      scales: { x: { time: true }, y: { range: (u, lo, hi) => [min, Math.max(max ?? 0, hi ?? 1, 1e-9)] } },
      axes: [{ show: false }, { show: false }],
      // uPlot's default points, as in the panels: a host's first 15 s bucket shows as a dot.
      series: [{}, { stroke: color, fill: `${color}33`, width: 1.5 }],
    };
    this.data = [[], []];
    this.u = new uPlot(opts, this.data, el);
    this.resizer = new ResizeObserver(() => this.u.setSize({ width: Math.max(60, el.clientWidth), height }));
    this.resizer.observe(el);
  }

  setData(xs, ys) {
    this.data = [xs, ys];
    this.mean = new BucketMean(this.mean.step);
    this.u.setData(this.data);
    this.el.dataset.points = String(xs.length);
  }

  /** Live: as Panel.append, for the one series. */
  append(t, v, span, interval = DEFAULT_INTERVAL_S) {
    if (!this.mean.merge(this.data, t, [v], span, interval)) return;
    this.u.setData(this.data);
    this.el.dataset.points = String(this.data[0].length);
  }

  destroy() {
    this.resizer.disconnect();
    this.u.destroy();
  }
}
