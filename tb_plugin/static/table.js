// The operator table: sortable, filterable (name, module prefix, phase, bound), and virtualised so
// that 10,000 rows stay fast (only the rows in view are in the DOM). As measured, each row says how
// far it is from its roofs (shares of the peaks, headroom: the time a kernel at the roof would
// save); in a what-if, those columns give way to each op's projected time on the what-if's device
// and the speed-up over the measured time.

import {levelClass} from './chart.js';
import {change, duration, el, num, pct, share, si, times} from './format.js';

const ROW_HEIGHT = 24;
const VIEWPORT_ROWS = 24;
const VIRTUAL_ABOVE = 500;  // more lines than this: only those in view are drawn
// each column: its key in the row (what it sorts by), its label, its cell's text, and its header's
// tooltip (what the figure is)
const COLUMNS = [
  {key: 'op', label: 'op', text: (r) => r.op.replace(/^aten\./, ''), title: 'the aten op (its shapes and dtype in the tooltip)'},
  {key: 'module', label: 'module', text: (r) => r.module || '(top level)', title: 'the innermost module it ran in'},
  {key: 'phase', label: 'phase', text: (r) => r.phase},
  {key: 'calls', label: 'calls', text: (r) => r.calls.toLocaleString(), numeric: true},
  {key: 'time_s', label: 'time', text: (r) => duration(r.time_s), numeric: true,
    title: 'measured time, summed over its calls (its share of the op time in the tooltip)'},
  {key: 'flops', label: 'FLOPs', text: (r) => si(r.flops), numeric: true},
  {key: 'bytes', label: 'bytes', text: (r) => si(r.bytes, 'B'), numeric: true, title: 'bytes moved (read and written)'},
  {key: 'intensity', label: 'FLOP/B', text: (r) => num(r.intensity), numeric: true, title: 'arithmetic intensity: FLOPs per byte moved'},
  {key: 'achieved_flops_per_s', label: 'FLOP/s', text: (r) => si(r.achieved_flops_per_s), numeric: true,
    title: 'achieved: FLOPs over measured time'},
  {key: 'achieved_bytes_per_s', label: 'B/s', text: (r) => si(r.achieved_bytes_per_s, 'B/s'), numeric: true,
    title: 'achieved: bytes over measured time'},
  {key: 'peak_flops_fraction', label: '% peak FLOP/s', text: (r) => share(r.peak_flops_fraction), numeric: true,
    measured: true, title: 'achieved FLOP/s as a share of the peak for its dtype'},
  {key: 'peak_bandwidth_fraction', label: '% peak B/s', text: (r) => share(r.peak_bandwidth_fraction), numeric: true,
    measured: true, title: 'achieved bytes/s as a share of the bandwidth of the memory level it is placed under (a collective: the link)'},
  {key: 'efficiency', label: '% of roof', text: (r) => share(r.efficiency), numeric: true, measured: true,
    title: 'achieved as a share of the roof above it (the lower of the compute peak and intensity × bandwidth)'},
  {key: 'headroom_s', label: 'headroom', text: (r) => duration(r.headroom_s), numeric: true, measured: true,
    title: 'measured time minus roofline time: the seconds a kernel at its roof would save'},
  {key: 'bound', label: 'bound', text: (r) => r.bound, className: 'mw-bound-cell'},
  // the memory level its data came from (L2, DRAM); none for a collective, which is on the link
  {key: 'memory_level', label: 'level',
    text: (r) => (r.bound === 'communication' ? '' : (r.memory_level || '') + (r.memory_level_mixed ? ' +' : ''))},
];
// a what-if's projection: measured time against another device's roofs means nothing, so the
// columns that compare the two give way to the projected time there and the speed-up over the
// measured time
const PROJECTED = COLUMNS.filter((c) => !c.measured).map((c) => (c.key === 'time_s' ? {...c, label: 'measured'} : c))
    .concat([
      {key: 'projected_time_s', label: 'projected', text: (r) => duration(r.projected_time_s), numeric: true,
        title: 'the least time on the what-if\'s device: a roofline bound, not a measurement'},
      {key: 'speedup', label: 'speed-up', text: (r) => times(r.speedup), numeric: true},
    ]);
const TEXT_KEYS = ['op', 'module', 'phase', 'bound', 'memory_level'];

/** A row's tooltip: what identifies it (op, overload, shapes, dtype, module, phase); a compiled
 * region's also the ops it fused and what they would move run eagerly. */
function describe(r) {
  const name = r.overload ? `${r.op}.${r.overload}` : r.op;
  const kernels = r.kernels && r.kernels.length ? `\nkernels: ${r.kernels.join(', ')}` : '';
  return `${name} ${r.shapes} (${r.dtype}) · ${r.module || '(top level)'} · ${r.phase}${kernels}${fusion(r)}`;
}

/** What a compiled region fused, and what compiling saved: its eager counterfactual (the same ops
 * run one by one), from the row's eager_ops. '' for any other row. */
function fusion(r) {
  if (!r.eager_ops || !r.eager_ops.length) return '';
  const ops = r.eager_ops.map((o) => `${o.op.replace(/^aten\./, '')} ×${o.calls.toLocaleString()}`).join(', ');
  return `\nfused ${r.eager_calls.toLocaleString()} eager op calls: ${ops}` +
    `\neagerly they move ${si(r.eager_bytes, 'B')}; compiling saved ${si(r.fusion_saved_bytes, 'B')} (${saving(r)})` +
    roofTimes(r);
}

/** The least time main memory's roofline allows the ops run eagerly and the compiled call (a
 * projection on the same roofs, not a measurement of the eager ops); '' where either is unknown. */
function roofTimes(r) {
  const eager = r.eager_dram_roofline_time_s, fused = r.dram_roofline_time_s;
  if (eager == null || fused == null || !(eager > 0)) return '';
  return `\nleast time on main memory's roofline: ${duration(eager)} eagerly, ${duration(fused)} compiled ` +
    `(${signedShare(fused / eager - 1)})`;
}

/** The bytes compiling saved as a signed share of the eager bytes ("−66.7%"). */
function saving(r) {
  if (!r.eager_bytes) return '';
  return signedShare(-r.fusion_saved_bytes / r.eager_bytes);
}

/** A relative change as a signed percentage ("−66.7%", "+3.0%"; beyond +999% "×38"). */
function signedShare(value) {
  return change(value, 1);
}

export class OperatorTable {
  constructor(container) {
    this.container = container;
    this.rows = [];
    this.view = [];
    this.lines = [];  // what is drawn: the rows in view, each followed by its variants when expanded
    this.expanded = new Set();  // ids of the rows whose shape variants are shown
    this.sortKey = 'time_s';
    this.descending = true;
    this.filters = {name: '', module: '', bound: ''};
    this.total = 0;
    this.columns = COLUMNS;
    this.selected = new Set();  // the ids of the rows selected (by a click here or on a point)
    this.selectListener = null;  // (ids) => ...: a row was clicked
    // the table is one Tab stop: the ▸ of this row (else the first drawn) is in the tab order,
    // ArrowUp and ArrowDown move between the rows' ▸
    this.current = null;
    this.build();
  }

  build() {
    const bar = el('div', 'mw-filters');
    const name = el('input', 'mw-filter-name');
    name.placeholder = 'op name contains…';
    const module = el('input', 'mw-filter-module');
    module.placeholder = 'module prefix (transformer.h.0)';
    const bound = el('select', 'mw-filter-bound');
    for (const [value, label] of [['', 'any bound'], ['memory', 'memory-bound'], ['compute', 'compute-bound'],
      ['none', 'views (none)'], ['unknown', 'uncounted']]) {
      const option = el('option', '', label);
      option.value = value;
      bound.appendChild(option);
    }
    name.addEventListener('input', () => { this.filters.name = name.value.trim().toLowerCase(); this.refresh(); });
    module.addEventListener('input', () => { this.filters.module = module.value.trim(); this.refresh(); });
    bound.addEventListener('change', () => { this.filters.bound = bound.value; this.refresh(); });
    this.count = el('span', 'mw-count');
    bar.append(name, module, bound, this.count);

    this.table = el('table', 'mw-table');
    this.head = el('thead');
    this.body = el('tbody');
    this.table.append(this.head, this.body);
    this.heading();
    this.scroller = el('div', 'mw-scroller');
    this.scroller.appendChild(this.table);
    // a scroll redraws only a virtualised table, and only when the rows in view change: a
    // redraw replaces the lines, and with them the cell the keyboard is on
    this.painted = null;  // [first, last] of the lines drawn, when virtualised
    this.scroller.addEventListener('scroll', () => {
      if (this.lines.length > VIRTUAL_ABOVE && !sameRange(this.range(), this.painted)) this.paint();
    });
    this.body.addEventListener('focusin', (event) => {
      const tr = event.target.closest('tr.mw-row');
      if (tr && event.target.classList.contains('mw-expandable')) this.rove(Number(tr.dataset.id));
    });
    this.body.addEventListener('click', (event) => {
      const tr = event.target.closest('tr.mw-row');
      if (!tr) return;
      this.select([Number(tr.dataset.id)], false);
      if (this.selectListener) this.selectListener([...this.selected]);
    });
    this.container.append(bar, this.scroller);
  }

  heading() {
    this.head.textContent = '';
    const tr = el('tr');
    this.headers = {};
    for (const column of this.columns) {
      const th = el('th', column.numeric ? 'mw-num' : '', column.label);
      if (column.title) th.title = column.title;
      // a header sorts by its column: a click, or Enter or Space on it (it is in the tab order)
      th.tabIndex = 0;
      th.setAttribute('aria-sort', 'none');
      th.addEventListener('click', () => this.sortBy(column.key));
      th.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); this.sortBy(column.key); }
      });
      th.dataset.key = column.key;
      this.headers[column.key] = th;
      tr.appendChild(th);
    }
    this.head.appendChild(tr);
  }

  /** The rows to show; `projected`: a what-if's, with their projected times instead of the roof. */
  setRows(rows, projected = false) {
    this.rows = rows;
    this.selected = new Set();
    this.expanded = new Set();
    this.current = null;
    this.total = rows.reduce((sum, r) => sum + r.time_s, 0);
    const columns = projected ? PROJECTED : COLUMNS;
    if (columns !== this.columns) {
      this.columns = columns;
      if (!columns.some((c) => c.key === this.sortKey)) { this.sortKey = 'time_s'; this.descending = true; }
      this.heading();
    }
    this.refresh();
  }

  sortBy(key) {
    if (this.sortKey === key) this.descending = !this.descending;
    else { this.sortKey = key; this.descending = !TEXT_KEYS.includes(key); }
    this.refresh();
  }

  refresh() {
    const {name, module, bound} = this.filters;
    const prefix = module.replace(/\.$/, '');
    this.view = this.rows.filter((r) =>
      (!name || r.op.toLowerCase().includes(name)) &&
      (!prefix || r.module === prefix || r.module.startsWith(prefix + '.')) &&
      (!bound || r.bound === bound));
    this.view.sort(this.compare());
    const key = this.sortKey;
    for (const [k, th] of Object.entries(this.headers)) {
      th.classList.toggle('mw-sorted', k === key);
      th.dataset.direction = k === key ? (this.descending ? 'desc' : 'asc') : '';
      th.setAttribute('aria-sort', k === key ? (this.descending ? 'descending' : 'ascending') : 'none');
    }
    this.count.textContent = `${this.view.length.toLocaleString()} of ${this.rows.length.toLocaleString()} rows`;
    this.table.dataset.rows = String(this.view.length);
    this.scroller.scrollTop = 0;
    this.flatten();
  }

  /** Rows ordered by the sorted column (unknowns last), whichever the direction. */
  compare() {
    const key = this.sortKey, sign = this.descending ? -1 : 1;
    return (a, b) => {
      const x = a[key], y = b[key];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sign;
    };
  }

  // The lines to draw: each row in view, and under an expanded one its shape variants, sorted as
  // the rows are.
  flatten() {
    this.lines = [];
    for (const row of this.view) {
      this.lines.push({row});
      if (row.variants && this.expanded.has(row.id)) {
        for (const variant of [...row.variants].sort(this.compare())) this.lines.push({row: variant, parent: row});
      }
    }
    this.paint();
  }

  /** Mark the rows `ids` selected; `scroll`: bring the first of them into view. */
  select(ids, scroll = true) {
    this.selected = new Set(ids);
    const index = this.lines.findIndex((line) => !line.parent && this.selected.has(line.row.id));
    if (scroll && index >= 0 && this.lines.length > VIRTUAL_ABOVE) this.scroller.scrollTop = Math.max(0, (index - 3) * ROW_HEIGHT);
    this.paint();
    const tr = this.body.querySelector('tr.mw-selected');
    if (scroll && tr) tr.scrollIntoView({block: 'nearest'});
  }

  toggle(row) {
    if (this.expanded.has(row.id)) this.expanded.delete(row.id);
    else this.expanded.add(row.id);
    this.flatten();
  }

  /** The row `id`'s ▸ becomes the table's Tab stop. */
  rove(id) {
    this.current = id;
    const cells = this.body.querySelectorAll('td.mw-expandable');
    const mine = this.body.querySelector(`tr.mw-row[data-id="${id}"] td.mw-expandable`);
    cells.forEach((cell, i) => { cell.tabIndex = (mine ? cell === mine : i === 0) ? 0 : -1; });
  }

  /** ArrowDown (`step` 1) or ArrowUp (-1) from row `id`: the focus to the next row's ▸ that way,
   * drawn first where the table is virtualised and it is out of view. */
  step(id, step) {
    const index = this.lines.findIndex((line) => !line.parent && line.row.id === id);
    let next = index + step;
    while (next >= 0 && next < this.lines.length && (this.lines[next].parent || !this.lines[next].row.variants)) next += step;
    if (index < 0 || next < 0 || next >= this.lines.length) return;
    const target = this.lines[next].row.id;
    this.current = target;
    if (this.painted && (next < this.painted[0] || next >= this.painted[1])) {
      this.scroller.scrollTop = Math.max(0, (next - (step > 0 ? VIEWPORT_ROWS - 4 : 3)) * ROW_HEIGHT);
      this.paint();
    }
    const cell = this.body.querySelector(`tr.mw-row[data-id="${target}"] td.mw-expandable`);
    if (cell) cell.focus();
  }

  /** The lines to draw: [first, last) of `this.lines`, all of them unless virtualised. */
  range() {
    const lines = this.lines;
    if (lines.length <= VIRTUAL_ABOVE) return [0, lines.length];
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / ROW_HEIGHT) - 8);
    return [first, Math.min(lines.length, first + VIEWPORT_ROWS + 16)];
  }

  // Render the lines in view, with spacer rows standing in for the rest. The cell the keyboard
  // was on (a ▸) is focused again in its new line, where that line is still drawn.
  paint() {
    const lines = this.lines;
    const [first, last] = this.range();
    this.painted = lines.length > VIRTUAL_ABOVE ? [first, last] : null;
    const focused = this.body.contains(document.activeElement) ? document.activeElement.closest('tr') : null;
    const refocus = focused && focused.classList.contains('mw-row') ? focused.dataset.id : null;
    this.body.textContent = '';
    if (first > 0) this.body.appendChild(spacer(first * ROW_HEIGHT));
    for (let i = first; i < last; i++) {
      const {row, parent} = lines[i];
      this.body.appendChild(parent ? this.variantLine(row, parent, i) : this.rowLine(row, i));
    }
    if (last < lines.length) this.body.appendChild(spacer((lines.length - last) * ROW_HEIGHT));
    this.rove(this.current);
    if (refocus !== null) {
      const cell = this.body.querySelector(`tr.mw-row[data-id="${refocus}"] td.mw-expandable`);
      if (cell) cell.focus({preventScroll: true});
    }
  }

  rowLine(r, i) {
    const tr = el('tr', `mw-row mw-${r.bound}${i % 2 ? ' mw-odd' : ''}${this.selected.has(r.id) ? ' mw-selected' : ''}`);
    tr.dataset.id = String(r.id);
    tr.title = describe(r);
    for (const column of this.columns) {
      const td = this.cell(column, r);
      if (column.key === 'op') {
        td.title = describe(r);
        if (r.variants) {
          // ran with several input shapes: the op's cell (a ▸ before it) shows each one's own figures
          const open = this.expanded.has(r.id);
          td.classList.add('mw-expandable');
          td.tabIndex = -1;  // rove() puts one ▸ in the tab order
          td.setAttribute('role', 'button');
          td.setAttribute('aria-expanded', String(open));
          td.title = `${describe(r)}\n${open ? 'hide' : 'show'} its ${r.variants.length} input shapes (click)`;
          td.addEventListener('click', () => this.toggle(r));
          td.addEventListener('keydown', (event) => {
            if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); this.toggle(r); }
            if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
              event.preventDefault();  // not a scroll: the next row's ▸
              this.step(r.id, event.key === 'ArrowDown' ? 1 : -1);
            }
          });
          tr.classList.add('mw-has-variants');
        }
      }
      if (column.key === 'module') td.title = r.module;
      if (column.key === 'memory_level' && r.memory_level_mixed) {
        td.title = `its bytes came from several levels, most of their time from ${r.memory_level}: its roof, ` +
            `${si(r.bandwidth_bytes_per_s, 'B/s')}, is the rate they flow at together`;
      }
      if (column.key === 'memory_level' && r.in_cache) {
        td.title = (td.title ? `${td.title}; ` : '') + `from a cache: ${pct(r.dram_efficiency)} of main memory's roof`;
        if (/^L\d$/.test(r.memory_level)) td.classList.add('mw-cache', levelClass(r.memory_level));
      }
      tr.appendChild(td);
    }
    return tr;
  }

  // One input shape of an expanded row: its shapes where the op's name is, its own figures beside.
  variantLine(v, parent, i) {
    const tr = el('tr', `mw-variant mw-${v.bound}${i % 2 ? ' mw-odd' : ''}`);
    tr.dataset.parent = String(parent.id);
    tr.title = describe(v);
    for (const column of this.columns) {
      let td;
      if (column.key === 'op') {
        td = el('td', 'mw-variant-shapes', v.shapes);
        td.title = describe(v);
      } else if (column.key === 'module' || column.key === 'phase') {
        td = el('td');  // its row's
      } else {
        td = this.cell(column, v);
      }
      td.dataset.key = column.key;
      tr.appendChild(td);
    }
    return tr;
  }

  cell(column, r) {
    const classes = [column.numeric ? 'mw-num' : '', column.className || ''].join(' ').trim();
    const td = el('td', classes, column.text(r, this.total));
    td.dataset.key = column.key;
    if (column.key === 'time_s' && this.total) td.title = `${pct(r.time_s / this.total)} of the op time shown`;
    if (column.key === 'bytes' && r.eager_ops && r.eager_ops.length && r.eager_bytes) {
      // a compiled region: the traffic its fusion saved against the same ops run eagerly
      td.appendChild(el('span', 'mw-fusion-saved', ` ${saving(r)}`));
      td.title = `run eagerly, its ${r.eager_calls.toLocaleString()} fused op calls move ${si(r.eager_bytes, 'B')}: ` +
        `compiling saved ${si(r.fusion_saved_bytes, 'B')} (${saving(r)})`;
    }
    return td;
  }
}

function sameRange(a, b) {
  return Boolean(a && b) && a[0] === b[0] && a[1] === b[1];
}

function spacer(height) {
  const tr = el('tr', 'mw-spacer');
  const td = el('td');
  td.colSpan = 32;  // every column, whichever set is shown
  td.style.height = `${height}px`;
  tr.appendChild(td);
  return tr;
}
