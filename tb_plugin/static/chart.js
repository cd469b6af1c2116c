// The log-log roofline chart: the bandwidth slope, a flat roof per dtype peak, ridge points, and
// one point per operator (or module), sized by time and colored by bound.

import {el, num, pct, si} from './format.js';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 760;
const HEIGHT = 440;
const MARGIN = {left: 72, right: 150, top: 16, bottom: 48};

/** An SVG element with `attrs` (also used by comm.js). */
export function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

/** The powers of ten spanning lo..hi: a log axis's grid lines. */
export function decades(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) out.push(10 ** e);
  return out;
}

/**
 * Log-log axes in `root` over x0..x1 and y0..y1 inside `frame` ({width, height, margin}): a grid line
 * and a tick at every decade, and the two axis titles. Returns the scales {sx, sy}. The roofline
 * (ops under compute and memory) and the link chart (collectives under the link) both draw on it.
 */
export function logAxes(root, frame, [x0, x1, y0, y1], {xTitle, yTitle, xTick, yTick}) {
  const {width, height, margin} = frame;
  const sx = (v) => margin.left + (Math.log10(v) - Math.log10(x0)) / (Math.log10(x1) - Math.log10(x0)) *
      (width - margin.left - margin.right);
  const sy = (v) => height - margin.bottom - (Math.log10(v) - Math.log10(y0)) / (Math.log10(y1) - Math.log10(y0)) *
      (height - margin.top - margin.bottom);
  const text = (attrs, content) => {
    const node = svg('text', attrs);
    node.textContent = content;
    root.appendChild(node);
  };
  for (const v of decades(x0, x1)) {
    if (v < x0 || v > x1) continue;
    root.appendChild(svg('line', {x1: sx(v), x2: sx(v), y1: margin.top, y2: height - margin.bottom, class: 'mw-grid'}));
    text({x: sx(v), y: height - margin.bottom + 16, class: 'mw-tick', 'text-anchor': 'middle'}, xTick(v));
  }
  for (const v of decades(y0, y1)) {
    if (v < y0 || v > y1) continue;
    root.appendChild(svg('line', {x1: margin.left, x2: width - margin.right, y1: sy(v), y2: sy(v), class: 'mw-grid'}));
    text({x: margin.left - 6, y: sy(v) + 4, class: 'mw-tick', 'text-anchor': 'end'}, yTick(v));
  }
  text({x: (width - margin.right + margin.left) / 2, y: height - 8, class: 'mw-axis', 'text-anchor': 'middle'}, xTitle);
  text({x: 14, y: (height - margin.bottom) / 2, class: 'mw-axis', 'text-anchor': 'middle',
    transform: `rotate(-90 14 ${(height - margin.bottom) / 2})`}, yTitle);
  return {sx, sy};
}

/**
 * Draw into `container`. `points` are rows or module groups with intensity, achieved_flops_per_s,
 * time_s and bound; only those with `plotted` are drawn. `describe(point)` gives tooltip lines.
 */
export function drawRoofline(container, device, points, describe) {
  container.textContent = '';
  const shown = points.filter((p) => p.plotted && p.intensity > 0 && p.achieved_flops_per_s > 0);
  const peaks = device ? device.peaks.filter((p) => p.flops_per_s > 0) : [];
  const bandwidth = device && device.bandwidth ? device.bandwidth.bytes_per_s : null;
  const xs = shown.map((p) => p.intensity).concat(peaks.map((p) => p.ridge).filter((r) => r > 0));
  const ys = shown.map((p) => p.achieved_flops_per_s).concat(peaks.map((p) => p.flops_per_s));
  if (!xs.length || !ys.length) {
    container.appendChild(el('div', 'mw-empty', 'No operator has both FLOPs and bytes to place on the roofline.'));
    return;
  }
  const x0 = Math.min(...xs) / 4, x1 = Math.max(...xs) * 4;
  const y0 = Math.min(...ys) / 4, y1 = Math.max(...ys) * 2;

  const root = svg('svg', {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'mw-chart', role: 'img'});
  const title = svg('title');
  title.textContent = 'Roofline: attainable FLOP/s against arithmetic intensity (log-log)';
  root.appendChild(title);
  const {sx, sy} = logAxes(root, {width: WIDTH, height: HEIGHT, margin: MARGIN}, [x0, x1, y0, y1],
      {xTitle: 'arithmetic intensity (FLOPs / byte)', yTitle: 'FLOP/s', xTick: num, yTick: (v) => si(v)});

  // roofs: the bandwidth slope up to the highest peak, a flat roof per peak value from its ridge
  // on (dtypes with the same peak share one roof and one label)
  const roofs = new Map();
  for (const peak of peaks) {
    const roof = roofs.get(peak.flops_per_s) ||
      {flops_per_s: peak.flops_per_s, ridge: peak.ridge, dtypes: [], estimated: false};
    roof.dtypes.push(peak.dtype);
    roof.estimated = roof.estimated || peak.source === 'estimated';  // never drawn as if measured
    roofs.set(peak.flops_per_s, roof);
  }
  if (bandwidth && peaks.length) {
    const top = Math.max(...peaks.map((p) => p.flops_per_s));
    const xa = Math.max(x0, y0 / bandwidth), xb = Math.min(x1, top / bandwidth);
    if (xb > xa) {
      const bwEstimated = device.bandwidth.source === 'estimated';
      root.appendChild(svg('line', {x1: sx(xa), y1: sy(xa * bandwidth), x2: sx(xb), y2: sy(xb * bandwidth),
        class: bwEstimated ? 'mw-roof mw-roof-bw mw-roof-estimated' : 'mw-roof mw-roof-bw'}));
      const bwLabel = svg('text', {x: sx(xa) + 6, y: sy(xa * bandwidth) - 8, class: 'mw-roof-label'});
      bwLabel.textContent = `${si(bandwidth, 'B/s')} (${device.bandwidth.source})`;
      root.appendChild(bwLabel);
    }
  }
  for (const roof of roofs.values()) {
    if (roof.flops_per_s < y0 || roof.flops_per_s > y1) continue;
    const ridge = roof.ridge || x0;
    root.appendChild(svg('line', {x1: sx(Math.max(ridge, x0)), x2: WIDTH - MARGIN.right, y1: sy(roof.flops_per_s),
      y2: sy(roof.flops_per_s), class: roof.estimated ? 'mw-roof mw-roof-estimated' : 'mw-roof',
      'data-dtype': roof.dtypes.join(' ')}));
    const label = svg('text', {x: WIDTH - MARGIN.right + 4, y: sy(roof.flops_per_s) + 4, class: 'mw-roof-label'});
    label.textContent = `${roof.dtypes.join('/')} ${si(roof.flops_per_s, 'FLOP/s')}${roof.estimated ? ' (estimated)' : ''}`;
    root.appendChild(label);
    if (roof.ridge && roof.ridge >= x0 && roof.ridge <= x1) {
      root.appendChild(svg('circle', {cx: sx(roof.ridge), cy: sy(roof.flops_per_s), r: 3, class: 'mw-ridge'}));
    }
  }

  // points, largest first so small ones stay on top
  const maxTime = Math.max(...shown.map((p) => p.time_s));
  const tooltip = el('div', 'mw-tooltip');
  tooltip.hidden = true;
  for (const p of [...shown].sort((a, b) => b.time_s - a.time_s)) {
    const radius = 3 + 14 * Math.sqrt(p.time_s / maxTime);
    const dot = svg('circle', {cx: sx(p.intensity), cy: sy(p.achieved_flops_per_s), r: radius.toFixed(1),
      class: `mw-point mw-${p.bound}`, 'data-id': p.id !== undefined ? p.id : p.key});
    dot.addEventListener('mouseenter', (event) => {
      tooltip.textContent = '';
      for (const line of describe(p)) tooltip.appendChild(el('div', '', line));
      tooltip.hidden = false;
      const box = container.getBoundingClientRect();
      tooltip.style.left = `${event.clientX - box.left + 14}px`;
      tooltip.style.top = `${event.clientY - box.top + 10}px`;
    });
    dot.addEventListener('mouseleave', () => { tooltip.hidden = true; });
    root.appendChild(dot);
  }
  container.appendChild(root);
  container.appendChild(tooltip);
  const legend = el('div', 'mw-legend');
  legend.appendChild(el('span', 'mw-key mw-memory', 'memory-bound'));
  legend.appendChild(el('span', 'mw-key mw-compute', 'compute-bound'));
  legend.appendChild(el('span', 'mw-note', `${shown.length} points · size = time · hidden: ` +
      `${points.length - shown.length} without FLOPs, bytes or time`));
  container.appendChild(legend);
}

/** Tooltip lines for an operator row or a module group. */
export function describePoint(p) {
  const lines = [];
  if (p.op) lines.push(`${p.op}${p.family ? ` (${p.family})` : ''}`, `module: ${p.module || '(top level)'}`, `phase: ${p.phase}`);
  else lines.push(`module: ${p.key || '(top level)'}`);
  lines.push(`FLOPs ${si(p.flops)} · bytes ${si(p.bytes, 'B')} · ${num(p.intensity)} FLOP/B`);
  lines.push(`achieved ${si(p.achieved_flops_per_s, 'FLOP/s')}` +
      (p.attainable_flops_per_s ? ` of ${si(p.attainable_flops_per_s, 'FLOP/s')} attainable` : '') +
      ` (${pct(p.efficiency)})`);
  lines.push(`${p.bound}-bound`);
  return lines;
}
