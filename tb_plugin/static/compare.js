// Compare mode: this run against a baseline run (/compare, the records `memwall diff` prints): the
// speed-up overall and per phase (time baseline / time this run), the biggest wins and losses, and
// the ops that crossed the ridge. The roofline shows the baseline's points beside this run's (chart.js).

import {duration, el, num, table} from './format.js';

/** 2.31× / 0.52×, and whether this run is faster (above 1) or slower. */
export function speedup(value) {
  return value === null || value === undefined || !isFinite(value) ? '-' : `${Number(value.toPrecision(3))}×`;
}

function speedClass(value) {
  if (value === null || value === undefined) return '';
  return value >= 1.05 ? ' mw-faster' : value <= 1 / 1.05 ? ' mw-slower' : '';
}

function signed(seconds) {
  return seconds === 0 ? '0' : `${seconds > 0 ? '+' : '−'}${duration(Math.abs(seconds))}`;
}

function card(container, label, value, note, className) {
  const box = el('div', `mw-card${className || ''}`);
  box.appendChild(el('div', 'mw-card-label', label));
  box.appendChild(el('div', 'mw-card-value', value));
  if (note) box.appendChild(el('div', 'mw-card-note', note));
  container.appendChild(box);
  return box;
}

/** What an entry is: its op (aten. dropped), module and phase; a module or a phase alone. */
const KEYS = [
  ['op', (c) => (c.op || '').replace(/^aten\./, '')],
  ['module', (c) => (c.module === null ? '' : c.module || '(top level)')],
  ['phase', (c) => c.phase || ''],
];

const time = (side) => (side ? duration(side.time_s) : '-');
const presence = (c) => (!c.a ? 'new here' : !c.b ? 'gone here' : speedup(c.speedup));

function changeColumns(keys) {
  return KEYS.filter(([key]) => keys.includes(key)).map(([label, cell]) => [label, cell, false]).concat([
    ['baseline', (c) => time(c.a), true],
    ['this run', (c) => time(c.b), true],
    ['change', (c) => signed(c.time_delta_s), true],
    ['speed-up', presence, true],
  ]);
}

const BOUND_COLUMNS = [
  ['op', KEYS[0][1], false],
  ['module', KEYS[1][1], false],
  ['phase', KEYS[2][1], false],
  ['FLOP/B baseline', (c) => num(c.a.intensity), true],
  ['FLOP/B this run', (c) => num(c.b.intensity), true],
  ['bound', (c) => `${c.a.bound} → ${c.b.bound}`, false],
];

/** Render the comparison `data` (/compare) into `container`. */
export function renderCompare(container, data) {
  container.textContent = '';
  const total = data.total;
  const cards = el('div', 'mw-cards mw-compare-cards');
  card(cards, 'speed-up', speedup(data.speedup),
      `time in ops: ${duration(total.a.time_s)} baseline → ${duration(total.b.time_s)} this run`,
      ` mw-speedup mw-speedup-total${speedClass(data.speedup)}`);
  for (const phase of data.phases) {
    const note = `${time(phase.a)} → ${time(phase.b)}`;
    const box = card(cards, phase.phase, phase.a && phase.b ? speedup(phase.speedup) : presence(phase), note,
        ` mw-speedup mw-speedup-phase${speedClass(phase.speedup)}`);
    box.dataset.phase = phase.phase;
  }
  container.appendChild(cards);
  const roofs = data.same_roofs ? `both on ${data.b.device || 'no device'}` :
    `the roofs differ: baseline on ${data.a.device || 'no device'}, this run on ${data.b.device || 'no device'}`;
  container.appendChild(el('div', 'mw-card-note', `speed-up = time of the baseline (${data.baseline}) / time of ` +
      `this run (${data.run}): above 1, this run is faster · ${roofs}`));
  for (const note of data.notes) container.appendChild(el('div', 'mw-card-note mw-compare-note', note));

  const keys = data.by === 'op' ? ['op', 'module', 'phase'] : [data.by];
  const what = data.by === 'op' ? 'ops' : `${data.by}s`;
  const sides = el('div', 'mw-compare-changes');
  for (const [title, rows, kind, className] of [
    [`Biggest wins (${what} this run spends less time in)`, data.wins, 'win', 'mw-compare-wins'],
    [`Biggest losses (${what} this run spends more time in)`, data.losses, 'loss', 'mw-compare-losses']]) {
    const part = el('div', className);
    part.appendChild(el('h3', '', title));
    if (rows.length) part.appendChild(table(changeColumns(keys), rows.slice(0, 8), () => `mw-row mw-${kind}`));
    else part.appendChild(el('div', 'mw-empty', 'none'));
    sides.appendChild(part);
  }
  container.appendChild(sides);

  const changes = data.bound_changes;
  container.appendChild(el('h3', 'mw-bound-title', `Bound changes: ${changes.length} op${changes.length === 1 ? '' : 's'} ` +
      'crossed the ridge (matched by op, module and phase; shapes folded)'));
  if (changes.length) {
    const node = table(BOUND_COLUMNS, changes, (c) => `mw-row mw-bound-change mw-${c.b.bound}`);
    node.querySelectorAll('tbody tr').forEach((tr, i) => {
      tr.dataset.op = changes[i].op;
      tr.dataset.module = changes[i].module;
      tr.dataset.phase = changes[i].phase;
    });
    container.appendChild(node);
  } else {
    container.appendChild(el('div', 'mw-empty', 'No op changed side of the ridge.'));
  }
}
