// Live block-rate charts: every <svg class="rate-chart" data-src="..."> is redrawn from
// its JSON endpoint every few seconds. No inline script (the CSP forbids it), no library.
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

function draw(svg, legend, data) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const n = data.minutes.length;
  const plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (n > 1 ? (i * plotW) / (n - 1) : plotW / 2);
  const y = (rate) => PAD.top + plotH * (1 - rate);
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    svg.appendChild(el("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(tick), y2: y(tick) }));
    svg.appendChild(el("text", { x: 4, y: y(tick) + 4 }, `${Math.round(tick * 100)}%`));
  }
  svg.appendChild(el("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  svg.appendChild(el("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  if (n) {
    const label = (i) => data.minutes[i].slice(11, 16);
    svg.appendChild(el("text", { x: PAD.left, y: H - 6 }, label(0)));
    svg.appendChild(el("text", { x: W - PAD.right - 30, y: H - 6 }, label(n - 1)));
  }
  if (!data.series.length) svg.appendChild(el("text", { x: W / 2 - 60, y: H / 2 }, "no decisions in the last hour"));
  legend.replaceChildren();
  data.series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    const points = s.rates.map((r, i) => (r === null ? null : [x(i), y(r), r, i])).filter(Boolean);
    const line = el("polyline", { points: points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" "), stroke: color });
    line.appendChild(el("title", {}, s.key));
    svg.appendChild(line);
    for (const [px, py, r, i] of points) {  // a dot per minute with decisions: single minutes show too
      const dot = el("circle", { cx: px.toFixed(1), cy: py.toFixed(1), r: 3, fill: color });
      dot.appendChild(el("title", {}, `${s.key} ${data.minutes[i].slice(11, 16)}: ${Math.round(r * 100)}% blocked`));
      svg.appendChild(dot);
    }
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = color;
    item.append(swatch, `${s.key}: ${s.blocked} blocked of ${s.total}`);
    legend.appendChild(item);
  });
}

async function refresh(svg) {
  const legend = document.getElementById(svg.id.replace("chart-", "legend-"));
  try {
    const response = await fetch(svg.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(svg, legend, await response.json());
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
