// Live charts: every <svg class="rate-chart" data-src="..." [data-chart="name"]> is redrawn
// from its JSON endpoint every few seconds (data-chart picks one chart of an endpoint that
// serves several). A chart is {minutes, ticks: [[index, "HH:MM"]], unit: share|count|ms,
// series: [{key, values, legend}]}. No inline script (the CSP forbids it), no library.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2454c5", "#b3261e", "#1f7a3a", "#a05a00", "#6b3fa0", "#00838f", "#c2185b", "#5d6d7e"];
const REFRESH_MS = 5000;
const W = 720, H = 240, PAD = { left: 44, right: 12, top: 12, bottom: 26 };

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// The top of the y axis: four round steps covering `max` (whole steps for counts).
function niceTop(max, whole) {
  const raw = Math.max(max, whole ? 4 : 0) / 4;
  if (!(raw > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10]) {
    const step = m * p;
    if (whole && !Number.isInteger(step)) continue;
    if (step >= raw) return 4 * step;
  }
  return 40 * p;
}

function formatter(unit) {
  if (unit === "share") return (v) => `${Math.round(v * 100)}%`;
  if (unit === "ms") return (v) => `${v >= 10 ? Math.round(v) : v.toFixed(1)} ms`;
  return (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
}

function draw(svg, legend, data) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const n = data.minutes.length;
  const unit = data.unit || "share";
  const fmt = formatter(unit);
  const valuesOf = (s) => s.values || s.rates;
  const max = Math.max(0, ...data.series.flatMap((s) => valuesOf(s).filter((v) => v !== null)));
  const top = unit === "share" ? 1 : niceTop(max, unit === "count");
  const plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (n > 1 ? (i * plotW) / (n - 1) : plotW / 2);
  const y = (v) => PAD.top + plotH * (1 - v / top);
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    svg.appendChild(el("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(f * top), y2: y(f * top) }));
    svg.appendChild(el("text", { x: 2, y: y(f * top) + 4 }, fmt(f * top)));
  }
  svg.appendChild(el("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  svg.appendChild(el("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  // A labelled time axis: HH:MM (UTC) at round minutes, as the server computed them.
  const ticks = data.ticks || (n ? [[0, data.minutes[0].slice(11, 16)], [n - 1, data.minutes[n - 1].slice(11, 16)]] : []);
  for (const [i, label] of ticks) {
    svg.appendChild(el("line", { class: "tick", x1: x(i), x2: x(i), y1: PAD.top, y2: H - PAD.bottom + 4 }));
    svg.appendChild(el("text", { class: "time-tick", x: Math.min(Math.max(x(i) - 15, 0), W - 32), y: H - 6 }, label));
  }
  const empty = !data.series.length || data.series.every((s) => valuesOf(s).every((v) => v === null || v === 0));
  if (empty) svg.appendChild(el("text", { x: W / 2 - 60, y: H / 2 }, "nothing in the last hour"));
  legend.replaceChildren();
  data.series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    const points = valuesOf(s).map((v, i) => (v === null ? null : [x(i), y(v), v, i])).filter(Boolean);
    const line = el("polyline", { points: points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" "), stroke: color });
    line.appendChild(el("title", {}, s.key));
    svg.appendChild(line);
    for (const [px, py, v, i] of points) {  // a dot per minute with data: single minutes show too
      if (unit === "count" && v === 0) continue;
      const dot = el("circle", { cx: px.toFixed(1), cy: py.toFixed(1), r: 3, fill: color });
      dot.appendChild(el("title", {}, `${s.key} ${data.minutes[i].slice(11, 16)}: ${fmt(v)}`));
      svg.appendChild(dot);
    }
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = color;
    item.append(swatch, s.legend || `${s.key}: ${s.blocked} blocked of ${s.total}`);
    legend.appendChild(item);
  });
}

async function refresh(svg) {
  const legend = document.getElementById(svg.id.replace("chart-", "legend-"));
  try {
    const response = await fetch(svg.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    draw(svg, legend, svg.dataset.chart ? body[svg.dataset.chart] : body);
    svg.dataset.updated = new Date().toISOString();
  } catch (err) {
    legend.replaceChildren(Object.assign(document.createElement("li"), { textContent: `chart unavailable (${err.message})` }));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const svg of document.querySelectorAll("svg.rate-chart")) {
    refresh(svg);
    setInterval(() => refresh(svg), REFRESH_MS);
  }
});
