// The log-log roofline chart: a bandwidth slope per memory level (the caches, then main memory), a
// flat roof per dtype peak, ridge points, and one point per operator (or module), sized by time and
// colored by the roof that bounds it: compute-bound blue, memory-bound by the level its data came
// from (main memory orange, each cache level its own color). Beside them, hollow and labelled, the
// program as a whole: the run, each phase, each step. Chips above it filter the points by op family
// and bound; a drag zooms; a click on a point selects its rows in the table.

import {duration, el, num, pct, share, si, times} from './format.js';

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

/** A log axis's ticks in lo..hi: its decades, and 2 and 5 times them where fewer than two decades show. */
export function logTicks(lo, hi) {
  const inside = (v) => v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9);
  const tens = decades(lo, hi).filter(inside);
  if (tens.length >= 2) return tens;
  return decades(lo, hi).flatMap((v) => [v, 2 * v, 5 * v]).filter(inside);
}

/**
 * Log-log axes in `root` over x0..x1 and y0..y1 inside `frame` ({width, height, margin}): a grid line
 * and a tick at every decade (`logTicks`), and the two axis titles. Returns the scales {sx, sy}. The roofline
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
  for (const v of logTicks(x0, x1)) {
    root.appendChild(svg('line', {x1: sx(v), x2: sx(v), y1: margin.top, y2: height - margin.bottom, class: 'mw-grid'}));
    text({x: sx(v), y: height - margin.bottom + 16, class: 'mw-tick', 'text-anchor': 'middle'}, xTick(v));
  }
  for (const v of logTicks(y0, y1)) {
    root.appendChild(svg('line', {x1: margin.left, x2: width - margin.right, y1: sy(v), y2: sy(v), class: 'mw-grid'}));
    text({x: margin.left - 6, y: sy(v) + 4, class: 'mw-tick', 'text-anchor': 'end'}, yTick(v));
  }
  text({x: (width - margin.right + margin.left) / 2, y: height - 8, class: 'mw-axis', 'text-anchor': 'middle'}, xTitle);
  text({x: 14, y: (height - margin.bottom) / 2, class: 'mw-axis', 'text-anchor': 'middle',
    transform: `rotate(-90 14 ${(height - margin.bottom) / 2})`}, yTitle);
  return {sx, sy};
}

/** The chart's state that outlives a redraw: hidden families and bounds, the zoom, the selection. */
export function chartView() {
  return {hidden: new Set(), zoom: null, selected: new Set()};
}

/**
 * Draw into `container`. `points` are rows or module groups with intensity, achieved_flops_per_s,
 * time_s and bound; only those with `plotted` are drawn. `describe(point)` gives tooltip lines.
 * `projected`: a what-if's projection, each point at its FLOPs over its projected time (on the roof,
 * under it where the launch floor binds) and sized by that time, instead of as measured.
 * `baseline` ({label, points}, compare mode): another run's points, drawn muted (hollow, grey)
 * under these and sized on the same scale of time, so the two runs' points can be told apart.
 * `program`: /report's program points (the whole run, each phase, each step), drawn hollow and
 * labelled. `roofs`: the peaks (dtype keys) the rows are placed under; only those roofs are drawn
 * (all of them when null). `labelled`: name the longest points (module points). `view`
 * (`chartView()`): the filters, zoom and selection, kept across redraws. `onSelect(ids)`: a point
 * was clicked (its row's id, or a module point's rows' ids).
 */
export function drawRoofline(container, device, points, describe, options = {}) {
  const {projected = false, baseline = null, program = [], roofs: used = null, labelled = false,
    view = chartView(), onSelect = null} = options;
  const redraw = () => drawRoofline(container, device, points, describe, options);
  container.textContent = '';
  const flopsPerS = projected ? projectedFlopsPerS : (p) => p.achieved_flops_per_s;
  const timeOf = projected ? (p) => p.projected_time_s : (p) => p.time_s;
  const plottable = (p) => p.plotted && p.intensity > 0 && flopsPerS(p) > 0;
  const all = points.filter(plottable);
  const visible = (p) => !view.hidden.has(`family:${p.family || ''}`) && !view.hidden.has(`bound:${p.bound}`);
  const before = baseline ? baseline.points.filter(plottable) : [];
  const programFlopsPerS = (p) => (projected ? (p.projected_time_s > 0 ? p.flops / p.projected_time_s : null)
    : p.achieved_flops_per_s);
  const whole = program.filter((p) => p.plotted && p.intensity > 0 && programFlopsPerS(p) > 0);
  const peaks = device ? device.peaks.filter((p) => p.flops_per_s > 0 && (!used || used.has(p.dtype))) : [];
  const bandwidth = device && device.bandwidth ? device.bandwidth.bytes_per_s : null;
  const isMain = mainLevel(device);
  const everything = all.concat(before);
  const xs = everything.concat(whole).map((p) => p.intensity).concat(peaks.map((p) => p.ridge).filter((r) => r > 0));
  const ys = everything.map(flopsPerS).concat(whole.map(programFlopsPerS), peaks.map((p) => p.flops_per_s));
  // nothing of this run to place (no op has FLOPs, bytes and a time): the chart says why, in it
  const nothing = !all.length && !before.length && !whole.length ? unplacedReasons(points) : null;
  if (!xs.length || !ys.length) {
    container.appendChild(el('div', 'mw-empty mw-chart-empty', nothing ? nothing.join(' ')
      : 'No operator has both FLOPs and bytes to place on the roofline.'));
    return;
  }
  const full = [Math.min(...xs) / 4, Math.max(...xs) * 4, Math.min(...ys) / 4, Math.max(...ys) * 2];
  const [x0, x1, y0, y1] = view.zoom || full;
  const inside = (x, y) => x >= x0 && x <= x1 && y >= y0 && y <= y1;
  const shown = all.filter((p) => visible(p) && inside(p.intensity, flopsPerS(p)));
  const shownBefore = before.filter((p) => visible(p) && inside(p.intensity, flopsPerS(p)));
  const shownProgram = view.hidden.has('program') ? []
    : whole.filter((p) => inside(p.intensity, programFlopsPerS(p)));

  container.appendChild(chartToolbar(all, whole, view, redraw));
  const root = svg('svg', {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: `mw-chart${view.zoom ? ' mw-zoomed' : ''}`,
    role: 'img', 'data-x0': x0, 'data-x1': x1, 'data-y0': y0, 'data-y1': y1});
  container.appendChild(root);  // in the page from the start, so that labels can be measured
  const title = svg('title');
  title.textContent = 'Roofline: attainable FLOP/s against arithmetic intensity (log-log). ' +
      'Drag to zoom, double-click to zoom out.';
  root.appendChild(title);
  const {sx, sy} = logAxes(root, {width: WIDTH, height: HEIGHT, margin: MARGIN}, [x0, x1, y0, y1],
      {xTitle: 'arithmetic intensity (FLOPs / byte)', yTitle: 'FLOP/s', xTick: num, yTick: (v) => si(v)});
  // roofs and points stay inside the plot when zoomed
  const clipId = `mw-clip-${++clips}`;
  const defs = svg('defs');
  const clipPath = svg('clipPath', {id: clipId});
  clipPath.appendChild(svg('rect', {x: MARGIN.left, y: MARGIN.top, width: WIDTH - MARGIN.left - MARGIN.right,
    height: HEIGHT - MARGIN.top - MARGIN.bottom}));
  defs.appendChild(clipPath);
  root.appendChild(defs);
  const plot = svg('g', {'clip-path': `url(#${clipId})`, class: 'mw-plot'});
  root.appendChild(plot);

  // roofs: the bandwidth slope up to the highest peak, a flat roof per peak value from its ridge
  // on (dtypes with the same peak share one roof and one label), each labelled with its source
  const roofs = new Map();
  for (const peak of peaks) {
    const roof = roofs.get(peak.flops_per_s) ||
      {flops_per_s: peak.flops_per_s, ridge: peak.ridge, dtypes: [], sources: [], estimated: false};
    roof.dtypes.push(peak.dtype);
    if (peak.source && !roof.sources.includes(peak.source)) roof.sources.push(peak.source);
    roof.estimated = roof.estimated || peak.source === 'estimated';  // never drawn as if measured
    roofs.set(peak.flops_per_s, roof);
  }
  // points, largest first so small ones stay on top (placed now: the slopes' labels keep clear of them)
  const maxTime = Math.max(...everything.map(timeOf));
  const place = (p) => ({p, cx: sx(p.intensity), cy: sy(flopsPerS(p)), r: 3 + 14 * Math.sqrt(timeOf(p) / maxTime)});
  const placedPoints = [...shown].sort((a, b) => timeOf(b) - timeOf(a)).map(place);
  const placedBefore = [...shownBefore].sort((a, b) => timeOf(b) - timeOf(a)).map(place);
  const placedProgram = shownProgram.map((p) => ({p, cx: sx(p.intensity), cy: sy(programFlopsPerS(p)),
    r: p.kind === 'window' ? 9 : p.kind === 'phase' ? 7 : 5}));
  const levelRoofs = device && device.levels && device.levels.length ? memoryRoofs(device) : null;
  const labels = svg('g', {class: 'mw-level-labels'});  // over the plot, unclipped: they may run into the margin
  root.appendChild(labels);
  if (peaks.length) {
    const top = Math.max(...peaks.map((p) => p.flops_per_s));
    const clear = placedPoints.concat(placedBefore, placedProgram);  // the points the slopes' labels keep clear of
    if (levelRoofs) drawLevelRoofs(plot, labels, levelRoofs, [x0, x1, y0, y1], top, {sx, sy}, clear);
    else if (bandwidth) drawMainRoof(plot, device.bandwidth, [x0, x1, y0], top, {sx, sy});
  }
  // a flat roof starts where the fastest memory level's slope meets it (each level has its own
  // ridge); the marked ridge point stays main memory's
  const fastest = levelRoofs && levelRoofs.length ? Math.max(...levelRoofs.map((r) => r.bytes_per_s)) : null;
  let below = -Infinity;  // the last roof label's baseline: close peaks' labels step down, one line each
  for (const roof of [...roofs.values()].sort((a, b) => b.flops_per_s - a.flops_per_s)) {
    if (roof.flops_per_s < y0 || roof.flops_per_s > y1) continue;
    const ridge = fastest ? roof.flops_per_s / fastest : roof.ridge || x0;
    if (ridge > x1) continue;
    plot.appendChild(svg('line', {x1: sx(Math.max(ridge, x0)), x2: WIDTH - MARGIN.right, y1: sy(roof.flops_per_s),
      y2: sy(roof.flops_per_s), class: roof.estimated ? 'mw-roof mw-roof-estimated' : 'mw-roof',
      'data-dtype': roof.dtypes.join(' '), 'data-source': roof.sources.join(' '),
      ...(roof.estimated ? {'stroke-dasharray': '6 4'} : {})}));
    below = Math.max(sy(roof.flops_per_s) + 4, below + 11);
    const label = svg('text', {x: WIDTH - MARGIN.right + 4, y: below, class: 'mw-roof-label',
      'data-dtype': roof.dtypes.join(' ')});
    label.textContent = `${roof.dtypes.join('/')} ${si(roof.flops_per_s, 'FLOP/s')}` +
        (roof.sources.length ? ` (${roof.sources.join('/')})` : '');
    root.appendChild(label);
    if (roof.ridge && roof.ridge >= x0 && roof.ridge <= x1) {
      plot.appendChild(svg('circle', {cx: sx(roof.ridge), cy: sy(roof.flops_per_s), r: 3, class: 'mw-ridge'}));
    }
  }

  const tooltip = el('div', 'mw-tooltip');
  tooltip.hidden = true;
  const hover = (node, lines) => {
    node.addEventListener('mouseenter', (event) => {
      tooltip.textContent = '';
      for (const line of lines()) tooltip.appendChild(el('div', '', line));
      tooltip.hidden = false;
      const box = container.getBoundingClientRect();
      tooltip.style.left = `${event.clientX - box.left + 14}px`;
      tooltip.style.top = `${event.clientY - box.top + 10}px`;
    });
    node.addEventListener('mouseleave', () => { tooltip.hidden = true; });
  };
  // the baseline's points first, under this run's: hollow and grey, each with its bound in a data attribute
  for (const {p, cx, cy, r: radius} of placedBefore) {
    const dot = svg('circle', {cx, cy, r: radius.toFixed(1), class: `mw-point mw-baseline mw-baseline-${p.bound}`,
      'data-id': p.id !== undefined ? p.id : p.key, 'data-bound': p.bound});
    hover(dot, () => [baseline.label].concat(describe(p)));
    plot.appendChild(dot);
  }
  for (const {p, cx, cy, r: radius} of placedPoints) {
    const level = p.memory_level || '';
    // memory-bound from a cache: that level's color; from main memory (or unknown): the bound's
    const fromCache = level && p.bound === 'memory' && !isMain(level);
    // projected at the launch floor, not the roofline: under its roof, drawn dashed
    const floored = projected && p.roofline_time_s !== undefined && p.projected_time_s > p.roofline_time_s * (1 + 1e-9);
    const ids = p.ids || (p.id !== undefined ? [p.id] : []);
    const dot = svg('circle', {cx, cy, r: radius.toFixed(1),
      class: `mw-point mw-${p.bound}${fromCache ? ` mw-cache ${levelClass(level)}` : ''}${floored ? ' mw-floored' : ''}` +
        (ids.some((id) => view.selected.has(id)) ? ' mw-selected' : ''),
      'data-id': p.id !== undefined ? p.id : p.key, 'data-flops-per-s': flopsPerS(p)});
    if (p.ids) dot.setAttribute('data-ids', p.ids.join(' '));
    if (p.family) dot.setAttribute('data-family', p.family);
    if (p.phase && p.id === undefined) dot.setAttribute('data-phase', p.phase);
    if (p.memory_level !== undefined) dot.setAttribute('data-level', level);
    hover(dot, () => (baseline ? ['this run'] : []).concat(describe(p)));
    dot.addEventListener('click', () => {
      view.selected = new Set(ids);
      highlightPoints(container, view);
      if (onSelect) onSelect(ids);
    });
    plot.appendChild(dot);
  }
  // the program as a whole: hollow, larger, labelled (the whole run a double ring, phases
  // diamonds, steps squares)
  const programGroup = svg('g', {class: 'mw-program-points'});
  plot.appendChild(programGroup);
  const nameLabels = [];  // [text, cx, cy, r]: placed below, clear of each other
  const stepCount = shownProgram.filter((p) => p.kind === 'step').length;
  for (const {p, cx, cy, r} of placedProgram) {
    const group = svg('g', {class: `mw-program mw-program-${p.kind}`, 'data-kind': p.kind, 'data-label': p.label,
      'data-flops-per-s': programFlopsPerS(p)});
    if (p.kind === 'window') {
      group.append(svg('circle', {cx, cy, r, class: 'mw-program-mark'}),
          svg('circle', {cx, cy, r: r - 4, class: 'mw-program-mark'}));
    } else if (p.kind === 'phase') {
      group.appendChild(svg('path', {d: `M${cx} ${cy - r}L${cx + r} ${cy}L${cx} ${cy + r}L${cx - r} ${cy}Z`,
        class: 'mw-program-mark'}));
    } else {
      group.appendChild(svg('rect', {x: cx - r, y: cy - r, width: 2 * r, height: 2 * r, class: 'mw-program-mark'}));
    }
    hover(group, () => describeProgram(p, projected));
    programGroup.appendChild(group);
    // steps are named where there are few; past that, the tooltip names each
    if (p.kind !== 'step' || stepCount <= 8) nameLabels.push({text: p.label, cx, cy, r, className: 'mw-program-label'});
  }
  if (labelled) {
    for (const {p, cx, cy, r} of placedPoints.slice(0, 12)) {
      const name = shortModule(p.key === undefined ? p.module : p.key);
      nameLabels.push({text: p.phase ? `${name} · ${p.phase}` : name, cx, cy, r, className: 'mw-point-label',
        title: `${p.key || '(top level)'}${p.phase ? ` (${p.phase})` : ''}`});
    }
  }
  placeNameLabels(plot, nameLabels, placedPoints.concat(placedProgram));
  if (nothing) {
    const message = svg('g', {class: 'mw-chart-empty'});
    const cx = (MARGIN.left + WIDTH - MARGIN.right) / 2, cy = (MARGIN.top + HEIGHT - MARGIN.bottom) / 2;
    const lineHeight = 18;
    const box = svg('rect', {x: MARGIN.left + 20, width: WIDTH - MARGIN.left - MARGIN.right - 40,
      y: cy - lineHeight * nothing.length / 2 - 10, height: lineHeight * nothing.length + 14, rx: 4,
      class: 'mw-chart-empty-box'});
    message.appendChild(box);
    nothing.forEach((line, i) => {
      const t = svg('text', {x: cx, y: cy - lineHeight * (nothing.length - 1) / 2 + i * lineHeight + 4,
        'text-anchor': 'middle', class: i ? 'mw-empty-chart' : 'mw-empty-chart mw-empty-chart-title'});
      t.textContent = line;
      message.appendChild(t);
    });
    root.appendChild(message);
  }
  root.appendChild(labels);  // the slopes' labels over the points
  zoomByDragging(root, view, redraw, [x0, x1, y0, y1]);
  container.appendChild(tooltip);
  const legend = el('div', 'mw-legend');
  // the levels memory-bound points came from, nearest first (rows of old reports have none)
  const order = device && device.levels ? device.levels.map((l) => l.name) : [];
  const rank = (name) => (order.includes(name) ? order.indexOf(name) : order.length);
  const levels = [...new Set(shown.filter((p) => p.bound === 'memory' && p.memory_level).map((p) => p.memory_level))]
      .sort((a, b) => rank(a) - rank(b));
  if (!levels.length) legend.appendChild(el('span', 'mw-key mw-memory', 'memory-bound'));
  for (const level of levels) {
    const key = el('span', `mw-key mw-memory${isMain(level) ? '' : ` mw-cache ${levelClass(level)}`}`,
        `memory-bound from ${level}`);
    key.dataset.level = level;
    legend.appendChild(key);
  }
  legend.appendChild(el('span', 'mw-key mw-compute', 'compute-bound'));
  if (whole.length) legend.appendChild(el('span', 'mw-key mw-program-key', 'hollow: the program as a whole ' +
      '(◎ whole run, ◇ phase, □ step)'));
  if (projected && root.querySelector('.mw-floored')) {
    legend.appendChild(el('span', 'mw-key mw-floored-key', 'dashed: at the launch floor'));
  }
  if (baseline) legend.appendChild(el('span', 'mw-key mw-baseline', `${baseline.label} (${shownBefore.length} points)`));
  const filtered = all.filter((p) => !visible(p)).length;
  const outside = all.length - filtered - shown.length;
  legend.appendChild(el('span', 'mw-note', `${shown.length} points · size = ${projected ? 'projected ' : ''}time · ` +
      `hidden: ${points.length - all.length} without FLOPs, bytes or time` +
      (filtered ? ` · ${filtered} filtered out` : '') + (outside ? ` · ${outside} outside the zoom` : '')));
  if (projected) {
    container.appendChild(el('div', 'mw-projection-legend', 'Projected: each point at its FLOPs over its projected ' +
        'time, on its roof (under it where the launch floor binds): a roofline bound, not a measurement.'));
  }
  container.appendChild(legend);
}

let clips = 0;  // a clip path id per chart drawn

/** Mark the points of `view.selected`'s rows (an op point by its id, a module point by its rows'). */
export function highlightPoints(container, view) {
  let first = null;
  for (const dot of container.querySelectorAll('circle.mw-point:not(.mw-baseline)')) {
    const ids = dot.dataset.ids !== undefined ? dot.dataset.ids.split(' ') : [dot.dataset.id];
    const on = ids.some((id) => view.selected.has(Number(id)));
    dot.classList.toggle('mw-selected', on);
    if (on && !first) first = dot;
  }
  if (first) first.parentNode.appendChild(first);  // drawn over the others
  return first;
}

/**
 * Chips above the chart: one per op family and per bound among the points (unticked: hidden), one
 * for the program points, and the zoom's reset.
 */
function chartToolbar(points, program, view, redraw) {
  const bar = el('div', 'mw-chart-filters');
  const chip = (key, text, count) => {
    const label = el('label', `mw-chip${view.hidden.has(key) ? ' mw-chip-off' : ''}`);
    const box = el('input');
    box.type = 'checkbox';
    box.checked = !view.hidden.has(key);
    box.dataset.filter = key;
    box.addEventListener('change', () => {
      if (box.checked) view.hidden.delete(key); else view.hidden.add(key);
      redraw();
    });
    label.append(box, el('span', '', text), el('span', 'mw-chip-count', count));
    return label;
  };
  const counts = (field) => {
    const out = new Map();
    for (const p of points) out.set(p[field], (out.get(p[field]) || 0) + 1);
    return [...out.entries()].sort((a, b) => b[1] - a[1]);
  };
  const families = counts('family').filter(([family]) => family);
  if (families.length) {
    bar.appendChild(el('span', 'mw-chip-title', 'family'));
    for (const [family, n] of families) bar.appendChild(chip(`family:${family}`, family, n));
  }
  bar.appendChild(el('span', 'mw-chip-title', 'bound'));
  for (const [bound, n] of counts('bound')) bar.appendChild(chip(`bound:${bound}`, bound, n));
  if (program.length) {
    bar.appendChild(el('span', 'mw-chip-title', 'program'));
    bar.appendChild(chip('program', 'run, phases, steps', program.length));
  }
  const reset = el('button', 'mw-zoom-reset', 'reset zoom');
  reset.type = 'button';
  reset.disabled = !view.zoom;
  reset.title = 'Drag a rectangle on the chart to zoom; double-click it or press this to zoom out';
  reset.addEventListener('click', () => { view.zoom = null; redraw(); });
  bar.appendChild(reset);
  return bar;
}

/** Drag a rectangle over the plot to zoom to it; a double-click zooms back out. */
function zoomByDragging(root, view, redraw, [x0, x1, y0, y1]) {
  const left = MARGIN.left, right = WIDTH - MARGIN.right, top = MARGIN.top, bottom = HEIGHT - MARGIN.bottom;
  const band = svg('rect', {class: 'mw-zoom-band', visibility: 'hidden'});
  root.appendChild(band);
  const at = (event) => {
    const point = root.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const p = point.matrixTransform(root.getScreenCTM().inverse());
    return {x: Math.min(right, Math.max(left, p.x)), y: Math.min(bottom, Math.max(top, p.y))};
  };
  const ix = (px) => 10 ** (Math.log10(x0) + (px - left) / (right - left) * (Math.log10(x1) - Math.log10(x0)));
  const iy = (py) => 10 ** (Math.log10(y0) + (bottom - py) / (bottom - top) * (Math.log10(y1) - Math.log10(y0)));
  let start = null;
  const box = (a, b) => ({x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), width: Math.abs(a.x - b.x),
    height: Math.abs(a.y - b.y)});
  root.addEventListener('mousedown', (event) => {
    if (event.button !== 0) return;
    start = at(event);
    event.preventDefault();  // no text selection while dragging
  });
  root.addEventListener('mousemove', (event) => {
    if (!start) return;
    const b = box(start, at(event));
    for (const [k, v] of Object.entries(b)) band.setAttribute(k, v.toFixed(1));
    band.setAttribute('visibility', b.width > 2 || b.height > 2 ? 'visible' : 'hidden');
  });
  const finish = (event) => {
    if (!start) return;
    const b = box(start, at(event));
    start = null;
    band.setAttribute('visibility', 'hidden');
    if (b.width < 6 || b.height < 6) return;  // a click, not a drag
    view.zoom = [ix(b.x), ix(b.x + b.width), iy(b.y + b.height), iy(b.y)];
    redraw();
  };
  root.addEventListener('mouseup', finish);
  root.addEventListener('mouseleave', (event) => { if (start) finish(event); });
  root.addEventListener('dblclick', () => {
    if (!view.zoom) return;
    view.zoom = null;
    redraw();
  });
}

/** A module path short enough for a label: its last parts, "…h.3.attn.c_attn". */
export function shortModule(path, max = 22) {
  if (!path) return '(top level)';
  if (path.length <= max) return path;
  const parts = path.split('.');
  let out = parts[parts.length - 1];
  if (out.length >= max - 1) return `…${out.slice(out.length - max + 1)}`;
  for (let i = parts.length - 2; i >= 0 && out.length + parts[i].length + 2 <= max; i--) out = `${parts[i]}.${out}`;
  return `…${out}`;
}

/**
 * Name labels beside their points: each takes the first of right, left, above and below that
 * overlaps no label placed before it and stays in the plot (else it is left out: its tooltip names
 * it), and avoids the bigger points where it can.
 */
function placeNameLabels(parent, items, points) {
  const placed = [];
  const overlaps = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
  const covers = (box) => points.filter(({cx, cy, r}) =>
    cx + r > box.x && cx - r < box.x + box.width && cy + r > box.y && cy - r < box.y + box.height).length;
  for (const item of items) {
    const text = svg('text', {class: `mw-name-label ${item.className}`});
    text.textContent = item.text;
    if (item.title) {
      const title = svg('title');
      title.textContent = item.title;
      text.appendChild(title);
    }
    parent.appendChild(text);
    const width = text.getComputedTextLength() || item.text.length * 5.5, height = 11;
    const {cx, cy, r} = item;
    const d = r * 0.7 + 2;  // a diagonal's offset
    const spots = [[cx + r + 3, cy + 3.5], [cx - r - 3 - width, cy + 3.5], [cx - width / 2, cy - r - 3],
      [cx - width / 2, cy + r + 10], [cx + d, cy - d - 1], [cx + d, cy + d + 9], [cx - d - width, cy - d - 1],
      [cx - d - width, cy + d + 9]];
    let best = null;
    for (const [x, y] of spots) {
      const box = {x, y: y - 9, width, height};
      const fits = x >= MARGIN.left && x + width <= WIDTH - MARGIN.right && box.y >= MARGIN.top &&
          y <= HEIGHT - MARGIN.bottom;
      if (!fits || placed.some((b) => overlaps(b, box))) continue;
      const cost = covers(box);
      if (!best || cost < best.cost) best = {x, y, box, cost};
      if (cost === 0) break;
    }
    if (!best) { text.remove(); continue; }
    placed.push(best.box);
    text.setAttribute('x', best.x.toFixed(1));
    text.setAttribute('y', best.y.toFixed(1));
  }
}

/** Tooltip lines for a program point (the whole run, a phase, a step). */
export function describeProgram(p, projected = false) {
  const what = {window: 'every counted op of the run shown', phase: `every counted op of the ${p.label} phase`,
    step: p.step_count > 1 ? `every counted op of ${p.step_count} steps` : 'every counted op of the step'}[p.kind];
  const lines = [p.label, what];
  lines.push(`FLOPs ${si(p.flops)} · bytes ${si(p.bytes, 'B')} · ${num(p.intensity)} FLOP/B`);
  if (projected && p.projected_time_s) {
    lines.push(`projected ${duration(p.projected_time_s)} · ${si(p.flops / p.projected_time_s, 'FLOP/s')} ` +
        '(a roofline bound, not a measurement)');
  }
  lines.push(`achieved ${si(p.achieved_flops_per_s, 'FLOP/s')} over ${duration(p.counted_time_s)} in counted ops` +
      (p.time_s > p.counted_time_s ? ` (of ${duration(p.time_s)} in ops)` : ''));
  if (p.wall_time_s) lines.push(`wall time ${duration(p.wall_time_s)} (profiler overhead included)`);
  return lines;
}

/** A point's FLOP/s at its projected time (a what-if's), or null. */
export function projectedFlopsPerS(p) {
  return p.flops && p.projected_time_s > 0 ? p.flops / p.projected_time_s : null;
}

/** The CSS class of a cache level's color: L1..L4 have their own, any other cache a shared one. */
export function levelClass(name) {
  return /^L[1-4]$/.test(name) ? `mw-level-${name.toLowerCase()}` : 'mw-level-other';
}

/** name -> whether it is the device's main memory (DRAM, HBM, GDDR), by the levels' own flag. */
function mainLevel(device) {
  const levels = device && device.levels ? device.levels : [];
  const main = new Set(levels.filter((l) => l.main).map((l) => l.name));
  return main.size ? (name) => main.has(name) : (name) => ['DRAM', 'HBM', 'GDDR'].includes(name);
}

/** A cache's capacity in binary units, as the OS and vendors state them: 48 KiB, 2 MiB. */
function capacity(bytes) {
  for (const [factor, unit] of [[2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB']]) {
    if (bytes >= factor) return `${Number((bytes / factor).toPrecision(3))} ${unit}`;
  }
  return `${bytes} B`;
}

/**
 * The memory roofs of a device with levels: one per distinct bandwidth, nearest level first; levels
 * with the same bandwidth (a nearer level is never shown slower than a farther one) share one,
 * labelled with every name: "L2 2 MiB · 300 GB/s (calibrated)", "L1–L3 · 353 GB/s (calibrated)".
 */
export function memoryRoofs(device) {
  const shared = new Map();
  for (const level of device.levels) {
    if (!(level.bytes_per_s > 0)) continue;
    const roof = shared.get(level.bytes_per_s) || {bytes_per_s: level.bytes_per_s, levels: [], sources: []};
    roof.levels.push(level);
    if (level.source && !roof.sources.includes(level.source)) roof.sources.push(level.source);
    shared.set(level.bytes_per_s, roof);
  }
  const names = device.levels.map((l) => l.name);
  return [...shared.values()].map((roof) => {
    const own = roof.levels.map((l) => l.name);
    const first = names.indexOf(own[0]);
    const consecutive = own.length > 2 && own.every((name, i) => names[first + i] === name);
    let name = consecutive ? `${own[0]}–${own[own.length - 1]}` : own.join(', ');
    const only = roof.levels[0];
    if (roof.levels.length === 1 && !only.main && only.capacity_bytes) name += ` ${capacity(only.capacity_bytes)}`;
    const source = roof.sources.length ? ` (${roof.sources.join('/')})` : '';
    return {
      ...roof, names: own, main: roof.levels.some((l) => l.main),
      estimated: roof.sources.includes('estimated'),  // never drawn as if measured
      label: `${name} · ${si(roof.bytes_per_s, 'B/s')}${source}`,
      title: roof.levels.map((l) => `${l.name}: ${l.capacity_bytes ? capacity(l.capacity_bytes) : 'capacity unknown'}` +
          `${l.capacity_source ? ` (${l.capacity_source})` : ''}`).join('; '),
    };
  });
}

/** A report without memory levels (written before memwall knew them): main memory's one slope. */
function drawMainRoof(root, bw, [x0, x1, y0], top, {sx, sy}) {
  const bandwidth = bw.bytes_per_s;
  const xa = Math.max(x0, y0 / bandwidth), xb = Math.min(x1, top / bandwidth);
  if (xb <= xa) return;
  const bwEstimated = bw.source === 'estimated';
  root.appendChild(svg('line', {x1: sx(xa), y1: sy(xa * bandwidth), x2: sx(xb), y2: sy(xb * bandwidth),
    class: bwEstimated ? 'mw-roof mw-roof-bw mw-roof-estimated' : 'mw-roof mw-roof-bw',
    ...(bwEstimated ? {'stroke-dasharray': '6 4'} : {})}));
  const bwLabel = svg('text', {x: sx(xa) + 6, y: sy(xa * bandwidth) - 8, class: 'mw-roof-label'});
  bwLabel.textContent = `${si(bandwidth, 'B/s')} (${bw.source})`;
  root.appendChild(bwLabel);
}

/** Across the slopes, the room one line of label takes (10px text, its halo and a gap). */
const LANE = 14;

/**
 * One slope per memory roof up to the highest peak, each labelled along its line (the slopes are
 * parallel). Slopes closer than a label's height share a block of labels, one line each in the
 * slopes' order, over the topmost (under the lowest where over it would cross another slope); each
 * block, the one with the least room first, takes the first place along its slope clear of the
 * blocks placed before it and, where it can, of the points.
 */
function drawLevelRoofs(root, labels, roofs, [x0, x1, y0, y1], top, {sx, sy}, points) {
  // a slope's direction on screen (one decade of FLOP/s per decade of intensity) and its upward normal
  const dx = sx(10 * x0) - sx(x0), dy = sy(10 * y0) - sy(y0);
  const length = Math.hypot(dx, dy);
  const dir = [dx / length, dy / length], up = [dy / length, -dx / length];
  const angle = Math.atan2(dy, dx) * 180 / Math.PI;
  const along = (x, y) => x * dir[0] + y * dir[1], across = (x, y) => x * up[0] + y * up[1];
  const lines = [];
  for (const roof of roofs) {
    const bw = roof.bytes_per_s;
    const xa = Math.max(x0, y0 / bw), xb = Math.min(x1, top / bw, y1 / bw);
    if (xb <= xa) continue;
    const [ax, ay, bx, by] = [sx(xa), sy(xa * bw), sx(xb), sy(xb * bw)];
    const classes = ['mw-roof', 'mw-roof-bw'];
    if (!roof.main) classes.push('mw-roof-cache');
    if (roof.estimated) classes.push('mw-roof-estimated');
    const line = svg('line', {x1: ax, y1: ay, x2: bx, y2: by, class: classes.join(' '),
      'data-levels': roof.names.join(' '), ...(roof.estimated ? {'stroke-dasharray': '6 4'} : {})});
    const title = svg('title');
    title.textContent = roof.title;
    line.appendChild(title);
    root.appendChild(line);
    const label = svg('text', {class: `mw-roof-label mw-level-label${roof.main ? ' mw-main-label' : ''}`,
      'data-levels': roof.names.join(' ')});
    label.textContent = roof.label;
    labels.appendChild(label);
    const width = label.getComputedTextLength() || roof.label.length * 5.6;
    lines.push({roof, label, width, ax, ay, u: along(ax, ay), v: across(ax, ay), span: Math.hypot(bx - ax, by - ay)});
  }
  // blocks: slopes nearer each other than a label's height, topmost first
  lines.sort((a, b) => b.v - a.v);
  const blocks = [];
  for (const line of lines) {
    const last = blocks[blocks.length - 1];
    if (last && last[last.length - 1].v - line.v < LANE + 4) last.push(line);
    else blocks.push([line]);
  }
  // the blocks with the least room to move along their slope choose first
  const room = (block) => block[0].span - Math.max(...block.map((l) => l.width));
  blocks.sort((a, b) => room(a) - room(b));
  const placed = [];  // {u0, u1, v0, v1}: a placed block's extent along and across the slopes
  const pts = points.map(({cx, cy, r}) => ({u: along(cx, cy), v: across(cx, cy), r}));
  for (const block of blocks) {
    const width = Math.max(...block.map((l) => l.width));
    const height = LANE * block.length;
    // above the topmost slope (the labels' usual place), or below the lowest where a block above
    // would print across another slope: each side's base line, the labels' offsets, their extent across
    const upper = block[0], lower = block[block.length - 1];
    const sides = [
      {line: upper, offsets: block.map((_, i) => 4 + LANE * (block.length - 1 - i)),
        v0: upper.v + 2, v1: upper.v + height + 2},
      {line: lower, offsets: block.map((_, i) => -13 - LANE * i), v0: lower.v - height - 2, v1: lower.v - 2},
    ];
    const crosses = (side) => lines.some((l) => !block.includes(l) && l.v > side.v0 && l.v < side.v1);
    if (crosses(sides[0]) && !crosses(sides[1])) sides.reverse();
    // the first place along a side's slope clear of the labels and the points, else of the labels,
    // else past the slope's end
    const passes = [{points: true, past: false}, {points: false, past: false}, {points: false, past: true}];
    let chosen = null;
    for (const pass of passes) {
      for (const side of sides) {
        const {line, v0, v1} = side;
        const clear = (t) => !placed.some((b) => line.u + t < b.u1 + 10 && line.u + t + width > b.u0 - 10 &&
            v0 < b.v1 && v1 > b.v0);
        const free = (t) => !pts.some((p) => p.u > line.u + t - p.r && p.u < line.u + t + width + p.r &&
            p.v > v0 - p.r && p.v < v1 + p.r);
        const last = Math.max(6, line.span - width - 4);
        for (let t = pass.past ? last + 4 : 6; t <= (pass.past ? line.span : last) && !chosen; t += 4) {
          if (clear(t) && (!pass.points || free(t))) chosen = {side, t};
        }
        if (chosen) break;
      }
      if (chosen) break;
    }
    chosen = chosen || {side: sides[0], t: 6};
    const {side: {line: base, offsets, v0, v1}, t} = chosen;
    placed.push({u0: base.u + t, u1: base.u + t + width, v0, v1});
    // one line each, in the slopes' order from the top
    block.forEach((line, i) => {
      const x = base.ax + dir[0] * t + up[0] * offsets[i], y = base.ay + dir[1] * t + up[1] * offsets[i];
      line.label.setAttribute('x', x.toFixed(1));
      line.label.setAttribute('y', y.toFixed(1));
      line.label.setAttribute('transform', `rotate(${angle.toFixed(2)} ${x.toFixed(1)} ${y.toFixed(1)})`);
    });
  }
}

/**
 * Why no point of `points` has a place on the roofline (each needs FLOPs, bytes and a time):
 * a title line, then how many lack which.
 */
export function unplacedReasons(points) {
  const count = (test) => points.filter(test).length;
  const uncounted = count((p) => p.flops === null || p.flops === undefined);
  const noFlops = count((p) => p.flops === 0);
  const noBytes = count((p) => p.flops > 0 && !(p.bytes > 0));
  const noTime = count((p) => p.flops > 0 && p.bytes > 0 && !(p.time_s > 0));
  const reasons = [
    noFlops ? `${noFlops} do no floating-point work (0 FLOPs: copies, views, fills, indexing)` : '',
    uncounted ? `${uncounted} memwall could not count (no FLOP formula or no input shapes)` : '',
    noBytes ? `${noBytes} move no bytes` : '',
    noTime ? `${noTime} took no measurable time` : '',
  ].filter(Boolean);
  if (!reasons.length) reasons.push('none is an op placed under the device\'s roofs');
  const what = points.length === 1 ? 'the 1 row' : `the ${points.length.toLocaleString()} rows`;
  return ['Nothing to place on the roofline: a point needs FLOPs, bytes moved and a time.',
    points.length ? `Of ${what}: ${reasons.join('; ')}.` : 'This run recorded no op.',
    ...(points.length ? ['The table below lists them with their times.'] : [])];
}

/** Tooltip lines for an operator row or a module group. */
export function describePoint(p) {
  const lines = [];
  if (p.op) lines.push(`${p.op}${p.family ? ` (${p.family})` : ''}`, `module: ${p.module || '(top level)'}`, `phase: ${p.phase}`);
  else lines.push(`module: ${p.key || '(top level)'}`, ...(p.phase ? [`phase: ${p.phase}`] : []));
  lines.push(`FLOPs ${si(p.flops)} · bytes ${si(p.bytes, 'B')} · ${num(p.intensity)} FLOP/B`);
  if (p.projected_time_s !== undefined && p.projected_time_s !== null) {
    // a what-if: measured time against another device's roof says nothing; its projection does
    lines.push(`projected ${duration(p.projected_time_s)} · ${si(projectedFlopsPerS(p), 'FLOP/s')} ` +
        '(a roofline bound, not a measurement)');
    lines.push(`measured ${duration(p.time_s)} · ${si(p.achieved_flops_per_s, 'FLOP/s')} · ` +
        `projected ${times(p.speedup)} faster`);
  } else {
    lines.push(`achieved ${si(p.achieved_flops_per_s, 'FLOP/s')}` +
        (p.attainable_flops_per_s ? ` of ${si(p.attainable_flops_per_s, 'FLOP/s')} attainable` : '') +
        ` (${share(p.efficiency)})`);
  }
  lines.push(`${p.bound}-bound`);
  // the level whose roof it is under (where its bytes came from several, the one that takes most
  // of their time, and a roof between theirs)
  if (p.memory_level) {
    lines.push(`memory level ${p.memory_level}` + (p.memory_level_mixed ? ' and others (most of the time)' : '') +
        (p.bandwidth_bytes_per_s ? ` · roof ${si(p.bandwidth_bytes_per_s, 'B/s')}` +
          (p.memory_level_mixed ? ', the levels\' blend' : '') : ''));
  }
  if (p.in_cache && (p.projected_time_s === undefined || p.projected_time_s === null)) {
    lines.push(`against main memory's roof (${si(p.dram_bandwidth_bytes_per_s, 'B/s')}): ${pct(p.dram_efficiency)}`);
  }
  return lines;
}
