// Number formatting shared by the panel's parts.

const PREFIXES = [[1e15, 'P'], [1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];

/** 12.3 G, 4.56 M: three significant digits with an SI prefix; "-" for unknown. */
export function si(value, unit = '') {
  if (value === null || value === undefined || !isFinite(value)) return '-';
  for (const [factor, prefix] of PREFIXES) {
    if (Math.abs(value) >= factor) return `${(value / factor).toPrecision(3)} ${prefix}${unit}`.trim();
  }
  return `${Number(value.toPrecision(3))} ${unit}`.trim();
}

export function pct(value) {
  if (value === null || value === undefined || !isFinite(value)) return '-';
  return value >= 0.1 ? `${(value * 100).toFixed(0)}%` : `${(value * 100).toFixed(1)}%`;
}

/** A share that may be tiny (a kernel's share of a peak): 42%, 3.5%, 0.042%, <0.001%; "-" for unknown. */
export function share(value) {
  if (value === null || value === undefined || !isFinite(value)) return '-';
  if (value === 0 || value >= 0.001) return pct(value);
  return value >= 1e-5 ? `${Number((value * 100).toPrecision(2))}%` : '<0.001%';
}

export function num(value) {
  if (value === null || value === undefined || !isFinite(value)) return '-';
  return String(Number(value.toPrecision(3)));
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '-';
  if (seconds === 0) return '0';
  if (seconds >= 1) return `${seconds.toPrecision(3)} s`;
  if (seconds >= 1e-3) return `${(seconds * 1e3).toPrecision(3)} ms`;
  return `${(seconds * 1e6).toPrecision(3)} µs`;
}

/** A speed-up: 976×, 2.5×, 0.62× ("-" unknown). */
export function times(value) {
  if (value === null || value === undefined || !isFinite(value)) return '-';
  return `${multiple(value)}×`;
}

function multiple(value) {
  return value >= 100 ? Math.round(value).toLocaleString('en-US') : String(Number(value.toPrecision(2)));
}

// past this a percentage reads as a long run of digits (a what-if on a much larger batch or a
// much faster device): the figure is written as the multiple it is
const MANY_TIMES = 9.995;  // 999%

/** A relative change: +12%, −66% (`digits`: −66.7%); beyond +999% the multiple it makes, ×38,077
 * (as times() writes one); "-" unknown. */
export function change(value, digits) {
  if (value === null || value === undefined || !isFinite(value)) return '-';
  if (value >= MANY_TIMES) return `×${multiple(value + 1)}`;
  const size = digits === undefined ? pct(Math.abs(value)) : `${Math.abs(value * 100).toFixed(digits)}%`;
  return `${value < 0 ? '−' : '+'}${size}`;
}

/** A part of a whole that may be many times it (a peak against a capacity): "85% of 80 GB", and
 * beyond 999% the multiple, "3,808× 80 GB"; without `whole` the figure alone. "-" unknown. */
export function shareOf(value, whole) {
  if (value === null || value === undefined || !isFinite(value)) return '-';
  const figure = value >= MANY_TIMES ? times(value) : pct(value);
  if (!whole) return figure;
  return value >= MANY_TIMES ? `${figure} ${whole}` : `${figure} of ${whole}`;
}

/** An element with a class and text; never HTML. */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/** A table of `rows`: `columns` are [label, cell(row), numeric]; `rowClass(row)` each row's class,
 * a row's `label` (where it has one) its tooltip. The collectives', ranks' and comparisons'. */
export function table(columns, rows, rowClass) {
  const node = el('table', 'mw-table');
  const head = el('tr');
  for (const [label, , numeric] of columns) head.appendChild(el('th', numeric ? 'mw-num' : '', label));
  const thead = el('thead');
  thead.appendChild(head);
  const body = el('tbody');
  for (const row of rows) {
    const tr = el('tr', rowClass(row));
    for (const [, cell, numeric] of columns) tr.appendChild(el('td', numeric ? 'mw-num' : '', cell(row)));
    if (row.label) tr.title = row.label;
    body.appendChild(tr);
  }
  node.append(thead, body);
  return node;
}
