// The console's charts, drawn by uPlot (uplot.min.js, shipped with batchd). Each chart keeps
// the numbers it was given (window.batchdCharts[name].numbers): the browser tests compare
// them with what the API returned.
"use strict";

const PALETTE = ["#0b5cad", "#d1242f", "#1a7f37", "#bf8700", "#8250df", "#0a7d8c", "#cf222e",
                 "#57606a", "#953800", "#1b7c83"];
window.batchdCharts = {};

function chartWidth(box) {
  return Math.max(280, Math.min(box.clientWidth || 600, 1200));
}

function number(value) {
  if (value === null || value === undefined) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${(value / 1e9).toFixed(1)}G`;
  if (abs >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(value < 1 ? 4 : 1);
}

// Bars per time bucket, one colour per series, stacked: `series` is [{label, values}], all as
// long as `times` (Unix seconds). The legend and the tooltip show each series' own value.
function stackedBars(box, name, { times, series, unit }) {
  const raw = series.map((s) => s.values);
  const sums = [];
  let running = times.map(() => 0);
  for (const values of raw) {
    running = running.map((total, i) => total + (values[i] || 0));
    sums.push(running);
  }
  // Drawn tallest first, so each shorter sum paints over the one it stands on.
  const order = series.map((_, i) => i).reverse();
  const bars = uPlot.paths.bars({ size: [0.7, 60] });
  const opts = {
    width: chartWidth(box), height: 240,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max) * 1.05] } },
    axes: [{}, { size: 56, values: (u, ticks) => ticks.map(number), label: unit }],
    legend: { live: true },
    series: [{}, ...order.map((i) => ({
      label: series[i].label, stroke: PALETTE[i % PALETTE.length],
      fill: PALETTE[i % PALETTE.length] + "cc", paths: bars, points: { show: false },
      value: (u, v, si, idx) => (idx === null ? "–" : number(raw[i][idx])),
    }))],
  };
  return draw(box, name, opts, [times, ...order.map((i) => sums[i])],
              { times, series: series.map((s) => ({ label: s.label, values: s.values })) });
}

// Lines over time: `left` series on the left axis, `right` ones on a second axis.
function linesOverTime(box, name, { times, left, right, leftUnit, rightUnit }) {
  const all = [...left, ...right];
  const opts = {
    width: chartWidth(box), height: 240,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max) * 1.05] },
              r: { range: (u, min, max) => [0, Math.max(1, max) * 1.05] } },
    axes: [{}, { size: 56, values: (u, ticks) => ticks.map(number), label: leftUnit },
           { scale: "r", side: 1, size: 56, grid: { show: false },
             values: (u, ticks) => ticks.map(number), label: rightUnit }],
    series: [{}, ...all.map((s, i) => ({
      label: s.label, scale: i < left.length ? "y" : "r", width: 2,
      stroke: PALETTE[i % PALETTE.length], dash: i < left.length ? undefined : [6, 4],
      value: (u, v) => number(v), points: { show: times.length < 40 },
    }))],
  };
  return draw(box, name, opts, [times, ...all.map((s) => s.values)],
              { times, series: all.map((s) => ({ label: s.label, values: s.values })) });
}

function draw(box, name, opts, data, numbers) {
  const old = window.batchdCharts[name];
  if (old) old.plot.destroy();
  box.replaceChildren();
  const plot = new uPlot(opts, data, box);
  window.batchdCharts[name] = { plot, numbers };
  return plot;
}

// Charts follow the page's width (a phone turned, a window resized).
window.addEventListener("resize", () => {
  for (const chart of Object.values(window.batchdCharts)) {
    const box = chart.plot.root.parentElement;
    if (box && box.isConnected) {
      chart.plot.setSize({ width: chartWidth(box), height: 240 });
    }
  }
});
