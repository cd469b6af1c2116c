// The tab's distributed parts: a rank's collectives under the link's roof (achieved bus bandwidth
// against message size, and a table), and every rank of the run side by side.

import {logAxes, svg} from './chart.js';
import {change, duration, el, pct, si, table} from './format.js';

const WIDTH = 760;
const HEIGHT = 300;
const MARGIN = {left: 72, right: 24, top: 16, bottom: 44};

function text(tag, attrs, content) {
  const node = svg(tag, attrs);
  node.textContent = content;
  return node;
}

/** Achieved bus bandwidth of each timed collective against its message size, under the link's roof. */
function drawLinkRoof(container, comm) {
  const points = comm.collectives.filter((c) => c.bus_bandwidth_bytes_per_s > 0 && c.message_bytes_per_call > 0);
  const roof = comm.link.bytes_per_s;
  // several nodes: the network between them is a second, lower roof
  const inter = comm.inter_link && comm.inter_link.bytes_per_s ? comm.inter_link : null;
  if (!points.length) {
    container.appendChild(el('div', 'mw-empty', 'No collective was timed on the host (device collectives complete on the device).'));
    return;
  }
  const xs = points.map((c) => c.message_bytes_per_call);
  const ys = points.map((c) => c.bus_bandwidth_bytes_per_s).concat(roof ? [roof] : [])
      .concat(inter ? [inter.bytes_per_s] : []);
  const x0 = Math.min(...xs) / 4, x1 = Math.max(...xs) * 4;
  const y0 = Math.min(...ys) / 4, y1 = Math.max(...ys) * 3;
  const root = svg('svg', {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'mw-chart mw-link-chart', role: 'img'});
  root.appendChild(text('title', {}, 'Collectives: achieved bus bandwidth against message size, under the link roof'));
  const {sx, sy} = logAxes(root, {width: WIDTH, height: HEIGHT, margin: MARGIN}, [x0, x1, y0, y1],
      {xTitle: 'message per call (bytes)', yTitle: 'bus bandwidth (B/s)', xTick: (v) => si(v, 'B'), yTick: (v) => si(v)});
  if (roof) {
    root.appendChild(svg('line', {x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(roof), y2: sy(roof),
      class: 'mw-roof mw-link-roof'}));
    root.appendChild(text('text', {x: MARGIN.left + 6, y: sy(roof) - 6, class: 'mw-roof-label mw-link-label'},
        `${comm.link.name}: ${si(roof, 'B/s')} per direction (${comm.link.source})`));
  }
  if (inter) {
    const y = sy(inter.bytes_per_s);
    root.appendChild(svg('line', {x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y,
      class: 'mw-roof mw-link-roof mw-inter-roof'}));
    root.appendChild(text('text', {x: MARGIN.left + 6, y: y + 14, class: 'mw-roof-label mw-link-label mw-inter-label'},
        `between nodes: ${inter.name}: ${si(inter.bytes_per_s, 'B/s')} per direction (${inter.source})`));
  }
  const longest = Math.max(...points.map((c) => c.time_s));
  for (const c of points) {
    const r = 4 + 10 * Math.sqrt(c.time_s / (longest || 1));
    const dot = svg('circle', {cx: sx(c.message_bytes_per_call), cy: sy(c.bus_bandwidth_bytes_per_s), r,
      class: 'mw-point mw-communication'});
    dot.appendChild(text('title', {}, `${c.kind} (${c.op}) ${c.phase}: ${si(c.message_bytes_per_call, 'B')} per call, ` +
        `${si(c.bus_bandwidth_bytes_per_s, 'B/s')} bus, ${pct(c.efficiency)} of the link`));
    root.appendChild(dot);
  }
  container.appendChild(root);
}

const COLUMNS = [
  ['collective', (c) => c.kind, false],
  ['op', (c) => c.op, false],
  ['phase', (c) => c.phase, false],
  ['module', (c) => c.module || '(top level)', false],
  ['calls', (c) => c.calls.toLocaleString(), true],
  ['message/call', (c) => si(c.message_bytes_per_call, 'B'), true],
  ['sent', (c) => si(c.bytes_moved, 'B'), true],
  ['time', (c) => (c.timed_calls ? duration(c.time_s) : '-'), true],
  ['bus B/s', (c) => si(c.bus_bandwidth_bytes_per_s), true],
  ['bound', (c) => c.bound, false],
  ['% of link', (c) => pct(c.efficiency), true],
];

function roofOf(link) {
  return link.bytes_per_s ? `${si(link.bytes_per_s, 'B/s')} per direction (${link.source})` : 'unknown bandwidth';
}

/** Columns a multi-node job adds (each collective's bytes inside and between nodes), and a
 * communication what-if's (its projected time there, and whether it becomes exposed). */
function commColumns(comm) {
  let columns = COLUMNS.slice();
  if (comm.inter_link) {
    const at = columns.findIndex((c) => c[0] === 'time');
    columns.splice(at, 0, ['intra-node', (c) => (c.intra_bytes === null ? '-' : si(c.intra_bytes, 'B')), true],
        ['inter-node', (c) => (c.inter_bytes === null ? '-' : si(c.inter_bytes, 'B')), true]);
  }
  if (comm.projection) {
    const byIndex = new Map(comm.projection.collectives.map((p) => [p.index, p]));
    columns = columns.concat([
      ['projected', (c) => (c.projected_time_s === null ? '?' : duration(c.projected_time_s)), true],
      ['exposed', (c) => {
        const p = byIndex.get(c.id);
        if (!p || p.exposed_s === null) return '?';
        return p.exposed ? `exposed +${duration(p.exposed_s)}` : 'hidden';
      }, false],
    ]);
  }
  return columns;
}

/** The interconnect what-if's inputs: ranks, and each level's bandwidth (bytes/s per direction). */
function whatIfForm(container, current, onWhatIf) {
  const form = el('form', 'mw-comm-whatif');
  form.appendChild(el('span', 'mw-label', 'interconnect what-if: '));
  const inputs = {};
  for (const [key, label, hint] of [['world_size', 'ranks', 'e.g. 64'], ['intra_link', 'intra-node B/s', 'as measured'],
    ['inter_link', 'inter-node B/s', 'e.g. 50e9']]) {
    const wrap = el('label', 'mw-comm-input', `${label} `);
    const input = el('input', `mw-${key.replace('_', '-')}`);
    input.name = key;
    input.size = 8;
    input.placeholder = hint;
    input.value = current[key] || '';
    inputs[key] = input;
    wrap.appendChild(input);
    form.appendChild(wrap);
  }
  const go = el('button', 'mw-comm-project', 'project');
  go.type = 'submit';
  form.appendChild(go);
  const reset = el('button', 'mw-comm-reset', 'as measured');
  reset.type = 'button';
  reset.addEventListener('click', () => onWhatIf({world_size: '', intra_link: '', inter_link: ''}));
  form.appendChild(reset);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    onWhatIf({world_size: inputs.world_size.value.trim(), intra_link: inputs.intra_link.value.trim(),
      inter_link: inputs.inter_link.value.trim()});
  });
  container.appendChild(form);
}

/** A communication what-if's summary: the scale, projected comm and step time, the exposed ones. */
function projectionLines(comm) {
  const p = comm.projection;
  const box = el('div', 'mw-comm-projection');
  box.appendChild(el('div', 'mw-comm-projected', `Projected at ${p.world_size.toLocaleString()} ranks ` +
      `(${p.nodes.toLocaleString()} node(s) of ${p.ranks_per_node}): ` + (p.step_time_s === null ?
        'a link\'s bandwidth is unknown: give it above' :
        `${duration(p.comm_time_s)} of collectives per step (algorithmic bus time), ${duration(p.exposed_s)} exposed; ` +
        `step ${duration(p.measured_step_s)} → ${duration(p.step_time_s)}`)));
  const exposed = p.exposed.map((i) => comm.collectives.find((c) => c.id === i)).filter(Boolean);
  box.appendChild(el('div', 'mw-comm-exposed', 'exposed (longer than the compute they overlapped): ' +
      (exposed.length ? exposed.map((c) => `${c.kind} (${c.phase})`).join(', ') : 'none')));
  return box;
}

/** The Communication section: the link(s), totals, the link-roof chart and the collectives table;
 * `onWhatIf` (optional) asks for the interconnect what-if. */
export function renderComm(container, comm, current = {}, onWhatIf = null) {
  container.textContent = '';
  const link = comm.link;
  const lines = el('div', 'mw-comm-lines');
  if (comm.inter_link) {
    lines.appendChild(el('div', 'mw-comm-link', `rank ${comm.rank} of ${comm.world_size}` +
        `${comm.backend ? ` · ${comm.backend}` : ''} · ${comm.nodes} nodes of ${comm.ranks_per_node} ranks`));
    lines.appendChild(el('div', 'mw-comm-link mw-comm-intra', `inside a node: ${link.name}, ${roofOf(link)}` +
        (link.note ? ` · ${link.note}` : '')));
    lines.appendChild(el('div', 'mw-comm-link mw-comm-inter', `between nodes: ${comm.inter_link.name}, ` +
        `${roofOf(comm.inter_link)}` + (comm.inter_link.note ? ` · ${comm.inter_link.note}` : '')));
    if (comm.intra_bytes !== null) {
      lines.appendChild(el('div', '', `${si(comm.intra_bytes, 'B')} sent inside the node, ${si(comm.inter_bytes, 'B')} ` +
          'between nodes (hierarchical algorithm)'));
    }
  } else {
    lines.appendChild(el('div', 'mw-comm-link', `rank ${comm.rank} of ${comm.world_size}` +
        `${comm.backend ? ` · ${comm.backend}` : ''} · link: ${link.name}, ${roofOf(link)}`));
    if (link.note) lines.appendChild(el('div', 'mw-card-note', link.note));
  }
  const time = comm.comm_time_s === null ? 'time not measured on the host' :
    `${duration(comm.comm_time_s)} with a collective in flight (${pct(comm.comm_share)} of wall), ` +
    `${pct(comm.overlap_fraction)} overlapped by other work, ${duration(comm.exposed_s)} exposed`;
  lines.appendChild(el('div', '', `${si(comm.message_bytes, 'B')} in messages, ${si(comm.bytes_moved, 'B')} sent · ${time}`));
  if (comm.untimed_calls) {
    lines.appendChild(el('div', 'mw-card-note', `${comm.untimed_calls} call(s) not timed (in flight at a step's end, failed, or on a device)`));
  }
  container.appendChild(lines);
  const chart = el('div', 'mw-chart-box');
  drawLinkRoof(chart, comm);
  container.appendChild(chart);
  if (onWhatIf) whatIfForm(container, current, onWhatIf);
  if (comm.projection) container.appendChild(projectionLines(comm));
  const box = el('div', 'mw-scroller mw-collectives');
  const exposed = new Set(comm.projection ? comm.projection.exposed : []);
  box.appendChild(table(commColumns(comm), comm.collectives,
      (c) => `mw-row mw-collective${exposed.has(c.id) ? ' mw-exposed' : ''}`));
  container.appendChild(box);
}

const RANK_COLUMNS = [
  ['rank', (r) => `rank ${r.rank}`, false],
  ['steps', (r) => String(r.steps), true],
  ['wall', (r) => duration(r.wall_time_s), true],
  ['in ops', (r) => duration(r.op_time_s), true],
  ['FLOPs', (r) => si(r.flops), true],
  ['bytes', (r) => si(r.bytes, 'B'), true],
  ['comm sent', (r) => si(r.comm_bytes_moved, 'B'), true],
  ['comm share', (r) => pct(r.comm_share), true],
  ['exposed comm', (r) => duration(r.exposed_comm_s), true],
  ['', (r) => [r.slowest ? 'slowest' : '', r.incomplete ? 'incomplete' : ''].filter(Boolean).join(' · '), false],
];

const SPREAD_ROWS = [
  ['in ops', 'op_time_s', duration],
  ['wall', 'wall_time_s', duration],
  ['memory-bound', 'memory_bound_fraction', pct],
  ['in collectives', 'comm_time_s', duration],
  ['comm share', 'comm_share', pct],
  ['sent', 'comm_bytes_moved', (v) => si(v, 'B')],
];

const SPREAD_COLUMNS = [
  ['', (r) => r[0], false],
  ['min', (r) => r[2](r[1].min), true],
  ['median', (r) => r[2](r[1].median), true],
  ['p90', (r) => r[2](r[1].p90), true],
  ['max', (r) => r[2](r[1].max), true],
];

function signed(share) {
  return change(share);
}

function why(o) {
  return `${o.because} (${o.reason_delta_s >= 0 ? '+' : '-'}${duration(Math.abs(o.reason_delta_s))})`;
}

const OUTLIER_COLUMNS = [
  ['rank', (o) => `rank ${o.rank}`, false],
  ['', (o) => o.side, false],
  ['node', (o) => o.node, false],
  ['in ops', (o) => duration(o.op_time_s), true],
  ['vs median', (o) => signed(o.share), true],
  ['why', why, false],
];

const NODE_COLUMNS = [
  ['node', (n) => n.node, false],
  ['ranks', (n) => n.ranks.length.toLocaleString(), true],
  ['median in ops', (n) => duration(n.op_time_s.median), true],
  ['max in ops', (n) => duration(n.op_time_s.max), true],
  ['slowest rank', (n) => String(n.slowest_rank), true],
  ['comm share', (n) => pct(n.comm_share ? n.comm_share.median : null), true],
];
const TOP_NODES = 8;

function selectable(node, rows, current, onSelect) {
  node.querySelectorAll('tbody tr').forEach((tr, i) => {
    tr.dataset.rank = String(rows[i].rank);
    if (String(rows[i].rank) === current) tr.classList.add('mw-current');
    tr.addEventListener('click', () => onSelect(String(rows[i].rank)));
  });
  return node;
}

/** A job of many ranks: the spread of their figures, the outlying ranks (slowest first) with why,
 * the slowest nodes; a button fetches every rank. */
function renderSpread(container, data, current, onSelect) {
  const spread = data.spread;
  const lead = el('div', 'mw-comm-lines mw-spread-lead');
  lead.appendChild(el('div', '', `${data.rank_count.toLocaleString()} ranks on ${spread.nodes.toLocaleString()} node(s)` +
      (spread.slowest_node ? ` · slowest node: ${spread.slowest_node}` : '')));
  const first = spread.slowest[0];
  if (first) {
    lead.appendChild(el('div', 'mw-straggler', `Slowest: rank ${first.rank} (${first.node}), ` +
        `${signed(first.share)} in ops vs the median: ${why(first)}`));
  }
  container.appendChild(lead);
  const figures = SPREAD_ROWS.filter(([, key]) => spread[key]).map(([label, key, show]) => [label, spread[key], show]);
  container.appendChild(table(SPREAD_COLUMNS, figures, () => 'mw-row mw-spread'));
  const outliers = spread.slowest.map((o) => ({...o, side: 'slowest'}))
      .concat(spread.fastest.map((o) => ({...o, side: 'fastest'})));
  container.appendChild(el('h3', '', 'Outliers (more than 1% from the median in ops; a click shows the rank)'));
  if (outliers.length) {
    container.appendChild(selectable(table(OUTLIER_COLUMNS, outliers, (o) => `mw-row mw-rank mw-outlier mw-${o.side}`),
        outliers, current, onSelect));
  } else {
    container.appendChild(el('div', 'mw-card-note', 'No rank is more than 1% from the median in ops.'));
  }
  if (spread.by_node.length > 1) {
    container.appendChild(el('h3', '', `Nodes (${spread.by_node.length.toLocaleString()}, slowest first by median time in ops)`));
    container.appendChild(table(NODE_COLUMNS, spread.by_node.slice(0, TOP_NODES), () => 'mw-row mw-node'));
    if (spread.by_node.length > TOP_NODES) {
      container.appendChild(el('div', 'mw-card-note', `... ${(spread.by_node.length - TOP_NODES).toLocaleString()} more nodes`));
    }
  }
}

/** Every rank of the run side by side (above 16, their spread and outliers, every rank one click
 * away); a click on a rank shows its report. */
export function renderRanks(container, data, current, onSelect) {
  container.textContent = '';
  const rows = data.ranks;
  if (data.condensed) {
    renderSpread(container, data, current, onSelect);
    const more = el('button', 'mw-all-ranks', `Show all ${data.rank_count.toLocaleString()} ranks`);
    more.addEventListener('click', async () => {
      const query = new URLSearchParams({run: data.run, all: '1'});
      if (data.job) query.set('job', data.job);
      more.disabled = true;
      try {
        const response = await fetch(`./ranks?${query}`);
        if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
        const full = await response.json();
        renderRanks(container, full, current, onSelect);
        const back = el('button', 'mw-all-ranks', 'Show the spread and outliers');
        back.addEventListener('click', () => renderRanks(container, data, current, onSelect));
        container.insertBefore(back, container.firstChild);
      } catch (error) {
        more.disabled = false;
        container.appendChild(el('div', 'mw-card-note', `The ranks cannot be listed: ${error.message}`));
      }
    });
    container.appendChild(more);
  } else {
    const node = table(RANK_COLUMNS, rows, (r) =>
      `mw-row mw-rank${r.slowest ? ' mw-slowest' : ''}${String(r.rank) === current ? ' mw-current' : ''}`);
    node.querySelectorAll('tbody tr').forEach((tr, i) => {
      tr.dataset.rank = String(rows[i].rank);
      tr.addEventListener('click', () => onSelect(String(rows[i].rank)));
    });
    container.appendChild(node);
  }
  const notes = [];
  if (data.slowest !== null && !data.condensed) notes.push(`slowest: rank ${data.slowest} (most time in ops; the others wait for it in collectives)`);
  if (data.missing.length) {
    const shown = data.missing.slice(0, 20).join(', ');
    notes.push(`no report from rank(s) ${shown}${data.missing.length > 20 ? ` and ${data.missing.length - 20} more` : ''}`);
  }
  for (const e of data.errors) notes.push(`rank ${e.rank}: ${e.error}`);
  for (const note of notes) container.appendChild(el('div', 'mw-card-note', note));
}
