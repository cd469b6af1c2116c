// The capacity wall: what held memory over the peak step (stacked by category, the peak and the
// capacity marked), each module's bytes and the cost of recomputing it, and the what-ifs
// (checkpointing, sharding, precision, batch, device), answered by ./memory_whatif.

import {svg} from './chart.js';
import {change, duration, el, num, shareOf, si} from './format.js';

export const CATEGORY_LABELS = {
  parameters: 'parameters', gradients: 'gradients', optimizer_state: 'optimizer state',
  activations: 'activations', kv_cache: 'KV cache', other: 'other',
};

const WIDTH = 760;
const HEIGHT = 300;
const MARGIN = {left: 72, right: 24, top: 26, bottom: 44};
// the capacity line is drawn when the plot, stretched to hold it, still shows the peak at this
// fraction of its height or more; otherwise the capacity is stated in text only
const CAPACITY_IN_RANGE = 0.3;

function text(attrs, content) {
  const node = svg('text', attrs);
  node.textContent = content;
  return node;
}

/** Round steps for a linear axis from 0 to `top`: about `count` of them, 1/2/5 x 10^k. */
export function niceTicks(top, count = 5) {
  if (!(top > 0)) return [0];
  const raw = top / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let v = 0; v <= top * 1.0001; v += step) out.push(v);
  return out;
}

const total = (values) => values.reduce((a, b) => a + b, 0);

/** A module's path as shown: the root is "(top level)". */
const shown = (path) => path || '(top level)';

/**
 * The modules of the memory report grouped by path prefix to `depth` components (0: each module
 * on its own), bytes summed; each group's recompute cost is what checkpointing it costs (the
 * forward FLOPs under it less its trailing FLOPs, and the measured time in the same share), as
 * MemoryReport.what_if counts it.
 */
export function moduleRows(modules, depth) {
  const byPath = new Map(modules.map((m) => [m.module, m]));
  const keyOf = (path) => (depth && path ? path.split('.').slice(0, depth).join('.') : path);
  const groups = new Map();
  for (const m of modules) {
    const key = keyOf(m.module);
    const g = groups.get(key) || {module: key, parameter_bytes: 0, gradient_bytes: 0, optimizer_state_bytes: 0,
      activation_bytes: 0, modules: 0};
    for (const field of ['parameter_bytes', 'gradient_bytes', 'optimizer_state_bytes', 'activation_bytes']) g[field] += m[field];
    g.modules += 1;
    groups.set(key, g);
  }
  for (const g of groups.values()) {
    g.total_bytes = g.parameter_bytes + g.gradient_bytes + g.optimizer_state_bytes + g.activation_bytes;
    const under = g.module ? modules.filter((m) => m.module === g.module || m.module.startsWith(`${g.module}.`))
      : modules.filter((m) => m.module === '');
    const whole = total(under.map((m) => m.forward_flops));
    const me = byPath.get(g.module);
    g.recompute_flops = Math.max(0, whole - (me ? me.trailing_flops : 0));
    g.recompute_time_s = total(under.map((m) => m.forward_time_s)) * (whole ? g.recompute_flops / whole : 1);
  }
  return [...groups.values()];
}

/**
 * The module prefixes offered for checkpointing: the top-level modules, and every path with
 * modules under it that is not inside a numbered block (transformer.h and transformer.h.0, not
 * transformer.h.0.attn); a list of numbered blocks says how many it holds.
 */
export function checkpointChoices(modules) {
  const paths = modules.map((m) => m.module).filter(Boolean);
  const choices = new Map();
  for (const path of paths) {
    const parts = path.split('.');
    choices.set(parts[0], choices.get(parts[0]) || 0);
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i);
      if (prefix.slice(0, -1).some((p) => /^\d+$/.test(p))) break;  // inside a numbered block
      const key = prefix.join('.');
      if (!choices.has(key)) choices.set(key, 0);
    }
  }
  const blocks = (key) => new Set(paths.filter((p) => p.startsWith(`${key}.`))
      .map((p) => p.slice(key.length + 1).split('.')[0]).filter((p) => /^\d+$/.test(p))).size;
  const natural = (a, b) => a.localeCompare(b, undefined, {numeric: true});
  return [...choices.keys()].sort(natural).slice(0, 40).map((key) => ({path: key, blocks: blocks(key)}));
}

/** The highest value the memory chart holds: the peak, the timeline's, a what-if's peak. */
function chartTop(memory, projected) {
  return Math.max(memory.peak_bytes, ...memory.timeline.map((p) => total(p[2])), projected ? projected.peak_bytes : 0);
}

/** Whether the chart draws the capacity: it does when the plot, stretched to hold it, still
 * shows what it holds at CAPACITY_IN_RANGE of its height or more. */
function capacityOnScale(memory, projected) {
  const capacity = memory.capacity_bytes;
  return capacity > 0 && chartTop(memory, projected) / capacity >= CAPACITY_IN_RANGE;
}

/** The notes under the memory chart: the capacity when it is off the chart's scale, the
 * timeline's highest point when it is not the peak, and the report's own notes. Redone for each
 * what-if: a what-if's peak stretches the scale (the capacity may come on it). */
export function memoryNotes(memory, projected) {
  const capacity = memory.capacity_bytes;
  const highest = Math.max(0, ...memory.timeline.map((p) => total(p[2])));
  return [
    capacity && !capacityOnScale(memory, projected) ? `The capacity (${si(capacity, 'B')}) is off this scale: ` +
      `the peak is ${shareOf(memory.peak_bytes / capacity, 'it')}` +
      (projected ? `, the what-if's ${shareOf(projected.peak_bytes / capacity, 'it')}.` : '.') : '',
    highest && highest !== memory.peak_bytes ? `The timeline's highest point is ${si(highest, 'B')}, ` +
      `${si(Math.abs(memory.peak_bytes - highest), 'B')} ${highest < memory.peak_bytes ? 'below' : 'above'} the peak; ` +
      'the what-ifs project from the timeline.' : '',
    ...memory.notes,
  ].filter(Boolean).join(' ');
}

/** The stacked live bytes over the peak step, the peak, the capacity, and a what-if's peak. */
export function drawMemoryChart(container, memory, categories, projected) {
  container.textContent = '';
  const points = memory.timeline;
  if (!points.length) {
    container.appendChild(el('div', 'mw-empty', 'No timeline was recorded for the peak step.'));
    return;
  }
  const peak = memory.peak_bytes;
  const capacity = memory.capacity_bytes;
  let top = chartTop(memory, projected);
  const capacityShown = capacityOnScale(memory, projected);
  if (capacityShown) top = Math.max(top, capacity);
  top *= 1.08;
  const x0 = points[0][0], x1 = Math.max(points[points.length - 1][0], x0 + 1);
  const sx = (v) => MARGIN.left + (v - x0) / (x1 - x0) * (WIDTH - MARGIN.left - MARGIN.right);
  const sy = (v) => HEIGHT - MARGIN.bottom - v / top * (HEIGHT - MARGIN.top - MARGIN.bottom);
  const root = svg('svg', {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'mw-chart mw-memory-chart', role: 'img'});
  const title = svg('title');
  title.textContent = 'Live bytes over the ops of the peak step, stacked by category';
  root.appendChild(title);

  // phase bands: consecutive points of one phase
  const bands = [];
  for (const [index, phase] of points) {
    const last = bands[bands.length - 1];
    if (last && last.phase === phase) last.end = index;
    else bands.push({phase, start: index, end: index});
  }
  bands.forEach((band, i) => {
    const right = i + 1 < bands.length ? bands[i + 1].start : x1;
    root.appendChild(svg('rect', {x: sx(band.start), y: MARGIN.top, width: Math.max(0, sx(right) - sx(band.start)),
      height: HEIGHT - MARGIN.top - MARGIN.bottom, class: `mw-band mw-band-${i % 2}`, 'data-phase': band.phase}));
    if (sx(right) - sx(band.start) > 48) {
      root.appendChild(text({x: (sx(band.start) + sx(right)) / 2, y: MARGIN.top - 8, class: 'mw-band-label',
        'text-anchor': 'middle'}, band.phase));
    }
  });
  for (const v of niceTicks(top / 1.08)) {
    root.appendChild(svg('line', {x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(v), y2: sy(v), class: 'mw-grid'}));
    root.appendChild(text({x: MARGIN.left - 6, y: sy(v) + 4, class: 'mw-tick', 'text-anchor': 'end'}, si(v, 'B')));
  }
  for (const v of niceTicks(x1 - x0, 6)) {
    root.appendChild(text({x: sx(x0 + v), y: HEIGHT - MARGIN.bottom + 16, class: 'mw-tick', 'text-anchor': 'middle'},
        String(Math.round(x0 + v))));
  }
  root.appendChild(text({x: (WIDTH - MARGIN.right + MARGIN.left) / 2, y: HEIGHT - 8, class: 'mw-axis',
    'text-anchor': 'middle'}, `op of step ${memory.peak_step}, in order`));
  root.appendChild(text({x: 14, y: (HEIGHT - MARGIN.bottom) / 2, class: 'mw-axis', 'text-anchor': 'middle',
    transform: `rotate(-90 14 ${(HEIGHT - MARGIN.bottom) / 2})`}, 'live bytes'));

  // stacked areas, each held flat from one point to the next (live after that op)
  const below = points.map(() => 0);
  categories.forEach((category, k) => {
    if (!points.some((p) => p[2][k] > 0)) return;
    const upper = points.map((p, i) => below[i] + p[2][k]);
    const xs = points.map((p, i) => [sx(p[0]), i + 1 < points.length ? sx(points[i + 1][0]) : sx(x1)]);
    let d = '';
    points.forEach((p, i) => { d += `${i ? 'L' : 'M'}${xs[i][0].toFixed(1)},${sy(upper[i]).toFixed(1)}H${xs[i][1].toFixed(1)}`; });
    for (let i = points.length - 1; i >= 0; i--) d += `L${xs[i][1].toFixed(1)},${sy(below[i]).toFixed(1)}H${xs[i][0].toFixed(1)}`;
    root.appendChild(svg('path', {d: `${d}Z`, class: `mw-area mw-cat-${category}`, 'data-category': category}));
    upper.forEach((v, i) => { below[i] = v; });
  });

  // the capacity, when it is on this scale
  if (capacityShown) {
    root.appendChild(svg('line', {x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(capacity), y2: sy(capacity),
      class: 'mw-capacity'}));
    root.appendChild(text({x: WIDTH - MARGIN.right - 4, y: sy(capacity) - 5, class: 'mw-capacity-label', 'text-anchor': 'end'},
        `capacity ${si(capacity, 'B')} (${memory.capacity_source})`));
  }
  // a what-if's projected peak
  if (projected) {
    root.appendChild(svg('line', {x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(projected.peak_bytes),
      y2: sy(projected.peak_bytes), class: 'mw-projected'}));
    root.appendChild(text({x: MARGIN.left + 4, y: sy(projected.peak_bytes) - 5, class: 'mw-projected-label'},
        `what-if peak ${si(projected.peak_bytes, 'B')}`));
  }
  // the peak: the point with the most live bytes
  const at = points.reduce((best, p) => (total(p[2]) > total(best[2]) ? p : best), points[0]);
  const px = sx(at[0]), py = sy(peak);  // the measured peak, which the timeline's point may be below
  root.appendChild(svg('line', {x1: px, x2: px, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom, class: 'mw-peak'}));
  root.appendChild(svg('circle', {cx: px, cy: py, r: 4, class: 'mw-peak-dot'}));
  const [phase, op, module] = memory.peak_at;
  const right = px > (WIDTH - MARGIN.right + MARGIN.left) / 2;
  // its two lines inside the plot: under the top, and above the x axis' ticks (a what-if far
  // above the peak squeezes the peak down to the axis)
  const labelY = Math.min(Math.max(py + 4, MARGIN.top + 12), HEIGHT - MARGIN.bottom - 13 - 6);
  const label = text({x: right ? px - 8 : px + 8, y: labelY, class: 'mw-peak-label',
    'text-anchor': right ? 'end' : 'start'}, `peak ${si(peak, 'B')}`);
  const detail = svg('tspan', {x: right ? px - 8 : px + 8, dy: 13, class: 'mw-peak-detail'});
  detail.textContent = `${phase} · ${op} · ${shown(module)}`;
  label.appendChild(detail);
  root.appendChild(label);

  // the live bytes under the pointer
  const tooltip = el('div', 'mw-tooltip');
  tooltip.hidden = true;
  const overlay = svg('rect', {x: MARGIN.left, y: MARGIN.top, width: WIDTH - MARGIN.left - MARGIN.right,
    height: HEIGHT - MARGIN.top - MARGIN.bottom, class: 'mw-overlay'});
  overlay.addEventListener('mousemove', (event) => {
    const box = root.getBoundingClientRect();
    const x = x0 + ((event.clientX - box.left) * WIDTH / box.width - MARGIN.left) /
        (WIDTH - MARGIN.left - MARGIN.right) * (x1 - x0);
    let p = points[0];
    for (const q of points) if (q[0] <= x) p = q;
    tooltip.textContent = '';
    tooltip.appendChild(el('div', '', `op ${p[0]} · ${p[1]} · ${shown(p[3])}`));
    tooltip.appendChild(el('div', '', `live ${si(total(p[2]), 'B')}`));
    categories.forEach((c, k) => { if (p[2][k]) tooltip.appendChild(el('div', '', `${CATEGORY_LABELS[c] || c}: ${si(p[2][k], 'B')}`)); });
    tooltip.hidden = false;
    const outer = container.getBoundingClientRect();
    tooltip.style.left = `${event.clientX - outer.left + 14}px`;
    tooltip.style.top = `${event.clientY - outer.top + 10}px`;
  });
  overlay.addEventListener('mouseleave', () => { tooltip.hidden = true; });
  root.appendChild(overlay);
  container.append(root, tooltip);

  const legend = el('div', 'mw-legend mw-memory-legend');
  categories.forEach((c) => {
    const item = el('span', `mw-swatch mw-cat-${c}`, `${CATEGORY_LABELS[c] || c} ${si(memory.peak_by_category[c] || 0, 'B')}`);
    item.dataset.category = c;
    legend.appendChild(item);
  });
  legend.appendChild(el('span', 'mw-note', 'at the peak · bands: phases'));
  container.appendChild(legend);
}

/** "peak X of capacity Y (Z%)", with where the capacity comes from and where the peak was. */
export function capacityText(memory) {
  const [phase, op, module] = memory.peak_at;
  const where = `during ${phase}, after ${op} in ${shown(module)} (step ${memory.peak_step})`;
  if (!memory.capacity_bytes) return `peak ${si(memory.peak_bytes, 'B')} ${where}; capacity unknown`;
  return `peak ${si(memory.peak_bytes, 'B')} of capacity ${si(memory.capacity_bytes, 'B')} ` +
    `(${shareOf(memory.peak_bytes / memory.capacity_bytes)}) · capacity: ${memory.capacity_source || 'unknown source'} · ${where}`;
}

const MODULE_COLUMNS = [
  {key: 'module', label: 'module', text: (r) => shown(r.module)},
  {key: 'parameter_bytes', label: 'parameters', text: (r) => si(r.parameter_bytes, 'B'), numeric: true},
  {key: 'gradient_bytes', label: 'gradients', text: (r) => si(r.gradient_bytes, 'B'), numeric: true},
  {key: 'optimizer_state_bytes', label: 'optimizer state', text: (r) => si(r.optimizer_state_bytes, 'B'), numeric: true},
  {key: 'activation_bytes', label: 'activations', text: (r) => si(r.activation_bytes, 'B'), numeric: true,
    title: 'saved for backward by the forward ops, per step'},
  {key: 'total_bytes', label: 'total', text: (r) => si(r.total_bytes, 'B'), numeric: true},
  {key: 'recompute_flops', label: 'recompute FLOPs', text: (r) => si(r.recompute_flops), numeric: true,
    title: 'if checkpointed: its forward (modules under it included) less the FLOPs after its last saved tensor'},
  {key: 'recompute_time_s', label: 'recompute time', text: (r) => duration(r.recompute_time_s), numeric: true,
    title: 'if checkpointed: the measured forward time, in the recomputed FLOPs\' share'},
];

/** The module table: sortable; own bytes per module, or rolled up by path prefix. */
export class MemoryModuleTable {
  constructor(container) {
    this.container = container;
    this.sortKey = 'total_bytes';
    this.descending = true;
    this.depth = 0;
    this.modules = [];
  }

  setModules(modules) {
    this.modules = modules;
    const deepest = Math.max(1, ...modules.map((m) => (m.module ? m.module.split('.').length : 0)));
    if (this.depth >= deepest) this.depth = 0;
    this.container.textContent = '';
    const bar = el('div', 'mw-filters');
    const wrap = el('label', 'mw-control mw-inline');
    wrap.appendChild(el('span', '', 'rows'));
    const rollup = el('select', 'mw-memory-rollup');
    const options = [[0, 'each module (its own bytes)']];
    for (let d = 1; d < deepest; d++) options.push([d, `rolled up to ${d} path component${d > 1 ? 's' : ''}`]);
    for (const [value, label] of options) {
      const option = el('option', '', label);
      option.value = String(value);
      rollup.appendChild(option);
    }
    rollup.value = String(this.depth);
    rollup.addEventListener('change', () => { this.depth = Number(rollup.value); this.paint(); });
    wrap.appendChild(rollup);
    this.count = el('span', 'mw-count');
    bar.append(wrap, this.count);
    this.table = el('table', 'mw-table mw-memory-table');
    const head = el('tr');
    this.headers = {};
    for (const column of MODULE_COLUMNS) {
      const th = el('th', column.numeric ? 'mw-num' : '', column.label);
      th.dataset.key = column.key;
      if (column.title) th.title = column.title;
      const sort = () => {
        if (this.sortKey === column.key) this.descending = !this.descending;
        else { this.sortKey = column.key; this.descending = column.key !== 'module'; }
        this.paint();
      };
      th.tabIndex = 0;
      th.addEventListener('click', sort);
      th.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sort(); }
      });
      this.headers[column.key] = th;
      head.appendChild(th);
    }
    const thead = el('thead');
    thead.appendChild(head);
    this.body = el('tbody');
    this.table.append(thead, this.body);
    const scroller = el('div', 'mw-scroller mw-memory-modules');
    scroller.appendChild(this.table);
    this.container.append(bar, scroller);
    this.paint();
  }

  paint() {
    const rows = moduleRows(this.modules, this.depth);
    const key = this.sortKey, sign = this.descending ? -1 : 1;
    rows.sort((a, b) => (a[key] === b[key] ? 0 : (a[key] < b[key] ? -1 : 1) * sign));
    for (const [k, th] of Object.entries(this.headers)) {
      th.classList.toggle('mw-sorted', k === key);
      th.dataset.direction = k === key ? (this.descending ? 'desc' : 'asc') : '';
      th.setAttribute('aria-sort', k === key ? (this.descending ? 'descending' : 'ascending') : 'none');
    }
    this.body.textContent = '';
    for (const r of rows) {
      const tr = el('tr', 'mw-memory-row');
      tr.dataset.module = r.module;
      for (const column of MODULE_COLUMNS) {
        const td = el('td', column.numeric ? 'mw-num' : '', column.text(r));
        if (column.key === 'module') td.title = this.depth && r.modules > 1 ? `${shown(r.module)} (${r.modules} modules)` : shown(r.module);
        tr.appendChild(td);
      }
      this.body.appendChild(tr);
    }
    this.count.textContent = `${rows.length} row(s) · ${this.modules.length} module(s) measured`;
  }
}

const SIZES = [['4', '4 B (fp32)'], ['2', '2 B (bf16/fp16)'], ['1', '1 B (fp8/int8)'], ['0.5', '0.5 B (int4)']];

/** The what-if selectors; `onChange(query)` receives the ./memory_whatif parameters they set.
 * `capacityOf`: the device whose capacity is chosen first (the tab's what-if device), where the
 * table knows its capacity; the user may choose another here. */
function whatIfForm(container, memory, categories, devices, worldSize, onChange, capacityOf = '') {
  container.textContent = '';
  const form = el('div', 'mw-whatif-form');
  const changed = () => onChange(query());
  const field = (label, node) => {
    const wrap = el('label', 'mw-control');
    wrap.appendChild(el('span', '', label));
    wrap.appendChild(node);
    return wrap;
  };

  // checkpoint: module prefixes, and any other paths typed in
  const ckpt = el('fieldset', 'mw-whatif-checkpoint');
  ckpt.appendChild(el('legend', '', 'checkpoint (recompute in backward)'));
  const choices = checkpointChoices(memory.modules);
  if (!choices.length) ckpt.appendChild(el('div', 'mw-card-note', 'no module paths recorded (pass model=)'));
  for (const choice of choices) {
    const wrap = el('label', 'mw-check');
    const box = el('input', 'mw-ckpt');
    box.type = 'checkbox';
    box.value = choice.path;
    box.addEventListener('change', changed);
    wrap.append(box, el('span', '', choice.blocks ? `${choice.path} (${choice.blocks} blocks)` : choice.path));
    ckpt.appendChild(wrap);
  }
  const more = el('input', 'mw-ckpt-more');
  more.placeholder = 'other paths, comma-separated';
  more.addEventListener('change', changed);
  ckpt.appendChild(more);

  const shard = el('select', 'mw-shard');
  for (const [value, label] of [['', 'none'], ['zero1', 'ZeRO-1 (optimizer state)'], ['zero2', 'ZeRO-2 (+ gradients)'],
    ['zero3', 'ZeRO-3 (+ parameters)'], ['fsdp', 'FSDP (full shard)']]) {
    const option = el('option', '', label);
    option.value = value;
    shard.appendChild(option);
  }
  shard.addEventListener('change', changed);
  const world = el('input', 'mw-world');
  world.type = 'number';
  world.min = '1';
  world.step = '1';
  world.value = String(worldSize > 1 ? worldSize : 8);  // the run's own ranks, else 8
  world.addEventListener('change', changed);
  const batch = el('input', 'mw-batch');
  batch.type = 'number';
  batch.min = '0.125';
  batch.step = '0.25';
  batch.value = '1';
  batch.addEventListener('change', changed);
  const master = el('input', 'mw-master');
  master.type = 'checkbox';
  master.addEventListener('change', changed);
  const masterWrap = el('label', 'mw-check');
  masterWrap.append(master, el('span', '', 'fp32 master weights'));
  const device = el('select', 'mw-capacity-device');
  const measured = memory.capacity_bytes ? `as measured (${si(memory.capacity_bytes, 'B')})` : 'as measured: unknown';
  for (const [value, label] of [['', measured]].concat(devices.filter((d) => d.memory_bytes)
      .map((d) => [d.key, `${d.name} (${si(d.memory_bytes, 'B')})`]))) {
    const option = el('option', '', label);
    option.value = value;
    device.appendChild(option);
  }
  if (devices.some((d) => d.key === capacityOf && d.memory_bytes)) device.value = capacityOf;
  device.addEventListener('change', changed);

  const others = el('div', 'mw-whatif-others');
  others.append(field('shard', shard), field('world size (with sharding)', world), field('batch scale', batch),
      field('capacity of', device), masterWrap);
  const precision = el('div', 'mw-whatif-precision');
  const sizes = {};
  for (const c of categories) {
    const select = el('select', `mw-bpe-cat mw-bpe-${c}`);
    const elements = memory.peak_elements[c];
    const held = memory.peak_by_category[c] || 0;
    // integer tensors (indices, token ids) are not in the elements: their bytes keep their width
    const kept = (memory.peak_kept_bytes || {})[c] || 0;
    const now = elements ? (held - kept) / elements : null;
    // a category with nothing held at the peak (gradients freed by zero_grad) has no size there
    const measured = now ? `as measured (${num(now)} B)` : held ? 'as measured (size unknown)' : 'as measured (none at the peak)';
    for (const [value, label] of [['', measured]].concat(SIZES)) {
      const option = el('option', '', label);
      option.value = value;
      select.appendChild(option);
    }
    select.addEventListener('change', changed);
    sizes[c] = select;
    precision.appendChild(field(`${CATEGORY_LABELS[c] || c} bytes/element`, select));
  }
  form.append(ckpt, others, precision);
  container.appendChild(form);

  function query() {
    const q = new URLSearchParams();
    const paths = [...ckpt.querySelectorAll('input.mw-ckpt:checked')].map((b) => b.value)
        .concat(more.value.split(',').map((p) => p.trim()).filter(Boolean));
    if (paths.length) q.set('checkpoint', paths.join(','));
    if (shard.value) { q.set('shard', shard.value); q.set('world_size', world.value || '1'); }
    const bpe = categories.filter((c) => sizes[c].value).map((c) => `${c}=${sizes[c].value}`);
    if (bpe.length) q.set('bytes_per_element', bpe.join(','));
    if (batch.value && Number(batch.value) !== 1) q.set('batch_scale', batch.value);
    if (master.checked) q.set('master_weights', 'true');
    if (device.value) q.set('device', device.value);
    return q;
  }
  return query;
}

/** The what-if's answer: the projected peak against the measured one, by category, its cost. */
function renderResult(container, memory, categories, result) {
  container.textContent = '';
  const head = el('div', 'mw-whatif-head');
  const peak = el('span', 'mw-projected-peak', `projected peak ${si(result.peak_bytes, 'B')}`);
  peak.dataset.bytes = String(result.peak_bytes);
  head.appendChild(peak);
  const baseline = result.peak_bytes === result.baseline_peak_bytes ? 'no change' :
    `${change(result.peak_bytes / result.baseline_peak_bytes - 1)} from ${si(result.baseline_peak_bytes, 'B')} without the what-ifs`;
  head.appendChild(el('span', 'mw-card-note', `${baseline} · measured peak ${si(result.measured_peak_bytes, 'B')}`));
  const fits = result.fits === null ? 'capacity unknown' : result.fits ? 'fits' : 'does not fit';
  const badge = el('span', `mw-fits ${result.fits === null ? '' : result.fits ? 'mw-fits-yes' : 'mw-fits-no'}`, fits);
  head.appendChild(badge);
  if (result.capacity_bytes) {
    head.appendChild(el('span', 'mw-card-note', `in ${si(result.capacity_bytes, 'B')} (${result.capacity_source}) · ` +
        `${shareOf(result.peak_bytes / result.capacity_bytes, 'it')}`));
  }
  container.appendChild(head);

  const figures = el('div', 'mw-whatif-figures');
  const figure = (label, value, className) => {
    const box = el('div', `mw-card ${className || ''}`);
    box.appendChild(el('div', 'mw-card-label', label));
    box.appendChild(el('div', 'mw-card-value', value));
    figures.appendChild(box);
  };
  figure('extra FLOPs / step', si(result.extra_flops), 'mw-extra-flops');
  figure('extra time / step', duration(result.extra_time_s), 'mw-extra-time');
  figure('sent / step (sharding)', si(result.comm_bytes, 'B'), 'mw-comm-bytes');
  const largest = result.max_batch_scale_unbounded ? 'unbounded' :
    result.max_batch_scale === null ? '- (no capacity)' : `${num(result.max_batch_scale)}×`;
  figure('largest batch scale that fits', largest, 'mw-max-batch');
  container.appendChild(figures);

  const table = el('table', 'mw-table mw-whatif-table');
  const tr = el('tr');
  for (const label of ['category', 'measured at the peak', 'projected', '']) tr.appendChild(el('th', label === 'category' ? '' : 'mw-num', label));
  const thead = el('thead');
  thead.appendChild(tr);
  const body = el('tbody');
  const most = Math.max(1, ...categories.map((c) => Math.max(result.by_category[c] || 0, memory.peak_by_category[c] || 0)));
  for (const c of categories) {
    const row = el('tr', 'mw-whatif-row');
    row.dataset.category = c;
    const swatch = el('td', `mw-swatch mw-cat-${c}`, CATEGORY_LABELS[c] || c);
    const bar = el('td', 'mw-bar-cell');
    const fill = el('div', `mw-bar mw-cat-${c}`);
    fill.style.width = `${(100 * (result.by_category[c] || 0) / most).toFixed(1)}%`;
    bar.appendChild(fill);
    row.append(swatch, el('td', 'mw-num', si(memory.peak_by_category[c] || 0, 'B')),
        el('td', 'mw-num', si(result.by_category[c] || 0, 'B')), bar);
    body.appendChild(row);
  }
  table.append(thead, body);
  container.appendChild(table);
  const notes = el('ul', 'mw-whatif-notes');
  if (result.checkpointed.length) {
    notes.appendChild(el('li', '', `checkpointed: ${result.checkpointed.map(shown).join(', ')}`));
  }
  for (const note of result.notes) notes.appendChild(el('li', '', note));
  if (notes.childNodes.length) container.appendChild(notes);
}

/** Why a report has no memory measurement, from ./memory's `no_memory`: "trace" (analysed from a
 * torch.profiler trace, which records no tensor lifetimes), "disabled" (profiled with
 * memory=False), or "unknown" (that, or a memwall from before memory was measured). */
export function noMemoryText(why) {
  if (why === 'trace') {
    return 'This report has no memory measurement: it was analysed from a torch.profiler trace, and a trace ' +
        'records no tensor lifetimes. Profile the run with memwall.profile (or `memwall run`) to see what holds ' +
        'memory against the capacity.';
  }
  if (why === 'disabled') {
    return 'This report has no memory measurement: the run was profiled without it (memwall.profile(memory=False) ' +
        'or `memwall run --no-memory`). Profile it again without memory=False / --no-memory to see what holds memory.';
  }
  return 'This report has no memory measurement: the run was profiled with memory=False (`memwall run --no-memory`), ' +
      'or by a memwall from before memory was measured. Profile it again with memwall.profile (memory is measured ' +
      'by default) to see what holds memory.';
}

/** The Memory section: loads ./memory for a selection, draws it, and runs the what-ifs. */
export class MemoryView {
  constructor(container, getJSON, summarize) {
    this.container = container;
    this.getJSON = getJSON;
    this.summarize = summarize;
    this.latest = 0;
    this.latestWhatIf = 0;
    this.summary = el('div', 'mw-memory-summary');
    this.chart = el('div', 'mw-chart-box mw-memory-chart-box');
    this.notes = el('div', 'mw-card-note mw-memory-notes');
    this.tableBox = el('div', 'mw-memory-table-box');
    this.formBox = el('div', 'mw-whatif');
    this.resultBox = el('div', 'mw-whatif-result');
    this.body = el('div', 'mw-memory-body');
    this.body.append(this.summary, this.chart, this.notes, el('h3', '', 'Modules: what each one holds'), this.tableBox,
        el('h3', '', 'What if…'), this.formBox, this.resultBox);
    this.empty = el('div', 'mw-empty mw-memory-empty');
    container.append(this.empty, this.body);
    this.table = new MemoryModuleTable(this.tableBox);
    this.clear('');
  }

  clear(message) {
    this.latest++;
    this.latestWhatIf++;
    this.memory = null;
    for (const box of [this.summary, this.chart, this.notes, this.formBox, this.resultBox]) box.textContent = '';
    this.table.setModules([]);
    this.body.hidden = true;
    this.empty.hidden = !message;
    this.empty.textContent = message;
  }

  /** `selection`: the run, job, rank and window parameters the other routes take; `device`: the
   * tab's what-if device, whose capacity the what-ifs start from. */
  async load(selection, devices, device = '') {
    const request = ++this.latest;
    let data;
    try {
      data = await this.getJSON(`./memory?${selection}`);
    } catch (error) {
      if (request !== this.latest) return;
      this.clear(`The memory of this report cannot be shown: ${error.message}`);
      return;
    }
    if (request !== this.latest) return;
    const memory = data.memory;
    if (!memory) {
      this.clear(noMemoryText(data.no_memory));
      this.summarize(null);
      return;
    }
    this.empty.hidden = true;
    this.body.hidden = false;
    this.memory = memory;
    this.categories = data.categories;
    this.selection = selection;
    this.summarize(memory);
    this.draw(memory, null);
    this.table.setModules(memory.modules);
    const query = whatIfForm(this.formBox, memory, this.categories, devices, data.world_size, (q) => this.whatIf(q),
        device);
    await this.whatIf(query());
  }

  /** The capacity line, the chart and its notes: `memory` with the capacity chosen, and a
   * what-if's projected peak (null: none). */
  draw(memory, projected) {
    this.summary.textContent = capacityText(memory);
    if (memory.allocator_peak_bytes) {
      this.summary.appendChild(el('div', 'mw-card-note', `CUDA allocator peak over the recorded steps: ${si(memory.allocator_peak_bytes, 'B')}`));
    }
    drawMemoryChart(this.chart, memory, this.categories, projected);
    this.notes.textContent = memoryNotes(memory, projected);
  }

  async whatIf(query) {
    const request = ++this.latestWhatIf;
    const selection = this.selection;
    const params = new URLSearchParams(selection);
    for (const [key, value] of query) params.set(key, value);
    this.resultBox.classList.add('mw-loading');
    let result;
    try {
      result = await this.getJSON(`./memory_whatif?${params}`);
    } catch (error) {
      if (request !== this.latestWhatIf) return;
      this.resultBox.classList.remove('mw-loading');
      this.resultBox.textContent = '';
      this.resultBox.appendChild(el('div', 'mw-error mw-whatif-error', error.message));
      return;
    }
    if (request !== this.latestWhatIf || selection !== this.selection) return;
    this.resultBox.classList.remove('mw-loading');
    renderResult(this.resultBox, this.memory, this.categories, result);
    // another device's capacity: the capacity line, the chart's scale and its notes are that
    // device's; a capacity alone changes no peak, so the chart draws no what-if peak for it
    const device = query.get('device');
    const memory = device ? {...this.memory, capacity_bytes: result.capacity_bytes,
      capacity_source: result.capacity_source} : this.memory;
    const projected = [...query.keys()].some((key) => key !== 'device') ? result : null;
    this.draw(memory, projected);
  }
}
