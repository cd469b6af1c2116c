// The Memory Wall tab: TensorBoard loads this module in its iframe and calls render().

import {chartView, describePoint, drawRoofline, highlightPoints} from './chart.js';
import {renderComm, renderRanks} from './comm.js';
import {renderCompare} from './compare.js';
import {duration, el, num, pct, shareOf, si, table as figures, times} from './format.js';
import {MemoryView} from './memory.js';
import {OperatorTable} from './table.js';
import {renderTree} from './tree.js';

const state = {runs: [], run: '', job: '', rank: '', window: 'all', phase: '', points: 'op', device: '', bpe: '',
  dtype: '', baseline: '', worldSize: '', intraLink: '', interLink: ''};

async function getJSON(url) {
  const response = await fetch(url);
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function select(label, className, options, value, onChange) {
  const wrap = el('label', 'mw-control');
  wrap.appendChild(el('span', '', label));
  const node = el('select', className);
  for (const [optionValue, text] of options) {
    const option = el('option', '', text);
    option.value = optionValue;
    node.appendChild(option);
  }
  node.value = value;
  node.addEventListener('change', () => onChange(node.value));
  wrap.appendChild(node);
  return wrap;
}

/**
 * Follow TensorBoard's theme: it toggles a `dark-mode` class on its own page's body (from its
 * settings menu, `?darkMode=true`, or the browser's prefers-color-scheme), and this tab's iframe is
 * same-origin, so it watches that class. Outside TensorBoard (or where the parent page cannot be
 * read), the browser's preference decides. The stylesheet swaps its colors under :root.mw-dark.
 */
function followTheme() {
  const root = document.documentElement;
  const prefersDark = window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;
  let parentBody = null;
  try {
    if (window.parent !== window && window.parent.document.body) parentBody = window.parent.document.body;
  } catch (error) {
    parentBody = null;  // another origin: not TensorBoard's page
  }
  const apply = () => {
    const dark = parentBody ? parentBody.classList.contains('dark-mode') : Boolean(prefersDark && prefersDark.matches);
    root.classList.toggle('mw-dark', dark);
  };
  apply();
  if (parentBody) new MutationObserver(apply).observe(parentBody, {attributes: true, attributeFilter: ['class']});
  else if (prefersDark) prefersDark.addEventListener('change', apply);
}

/** The console's findings as a list of text; a `name` in one becomes code (as text, never HTML). */
function renderFindings(part, list, findings, phase) {
  list.textContent = '';
  part.hidden = !findings || !findings.length;
  // the findings are the whole run's: under a phase filter the title says so
  const title = part.querySelector('h2');
  if (title) title.textContent = phase ? `What to do (the whole run, not only ${phase})` : 'What to do';
  for (const finding of findings || []) {
    const item = el('li', 'mw-finding');
    finding.split('`').forEach((piece, i) => {
      if (piece) item.appendChild(i % 2 ? el('code', '', piece) : document.createTextNode(piece));
    });
    list.appendChild(item);
  }
}

export async function render() {
  const sheet = document.createElement('link');
  sheet.rel = 'stylesheet';
  sheet.href = './static/style.css';
  document.head.appendChild(sheet);
  followTheme();

  const app = el('div', 'mw-app');
  const header = el('div', 'mw-header');
  header.appendChild(el('h1', '', 'Memory Wall'));
  const controls = el('div', 'mw-controls');
  header.appendChild(controls);
  const status = el('div', 'mw-status');
  // a what-if's projection: what it is (a roofline bound), and the ops whose bound flips there
  const projection = el('div', 'mw-projection');
  projection.hidden = true;
  // a run analysed from a torch.profiler trace: which file, where its times came from, what is uncounted
  const traceBanner = el('div', 'mw-trace');
  traceBanner.hidden = true;
  // a run that ended early (an exception or a signal inside the profiled block): its last step is partial
  const incompleteBanner = el('div', 'mw-incomplete');
  incompleteBanner.hidden = true;
  const cards = el('div', 'mw-cards');
  // what to do: the console's findings for this run, largest effect first
  const findingsPart = el('div', 'mw-findings-part');
  const findingsList = el('ul', 'mw-findings');
  findingsPart.append(el('h2', '', 'What to do'), findingsList);
  findingsPart.hidden = true;
  const chartBox = el('div', 'mw-chart-box');
  const changesPart = el('div', 'mw-changes-part');
  const changesBox = el('div', 'mw-changes');
  changesPart.append(el('h2', '', 'Ops that change side of the ridge'), changesBox);
  changesPart.hidden = true;
  const tableBox = el('div', 'mw-table-box');
  const treeBox = el('div', 'mw-tree');
  // the run's own sections: hidden while there is no report to show (an error, a trace analysing)
  const rooflinePart = el('div', 'mw-roofline-part');
  rooflinePart.append(el('h2', '', 'Roofline'), chartBox, changesPart);
  const operatorsPart = el('div', 'mw-operators-part');
  operatorsPart.append(el('h2', '', 'Operators'), tableBox);
  // the console's Phases table: the report's rows rolled up by phase (/report's phase_groups)
  const phasesPart = el('div', 'mw-phases-part');
  const phasesBox = el('div', 'mw-phases');
  phasesPart.append(el('h2', '', 'Phases'), phasesBox);
  const modulesPart = el('div', 'mw-modules-part');
  modulesPart.append(el('h2', '', 'Modules (rolled up)'), treeBox);
  // torch.distributed runs only: every rank side by side, and this rank's collectives
  const ranksPart = el('div', 'mw-ranks-part');
  const ranksBox = el('div', 'mw-ranks');
  ranksPart.append(el('h2', '', 'Ranks side by side'), ranksBox);
  const commPart = el('div', 'mw-comm-part');
  const commBox = el('div', 'mw-comm');
  commPart.append(el('h2', '', 'Communication: collectives on the interconnect roof'), commBox);
  ranksPart.hidden = commPart.hidden = true;
  // compare mode: this run against a baseline run (speed-ups, wins and losses, bound changes)
  const comparePart = el('div', 'mw-compare-part');
  const compareTitle = el('h2', '', 'Compared with a baseline');
  const compareBox = el('div', 'mw-compare');
  comparePart.append(compareTitle, compareBox);
  comparePart.hidden = true;
  // the capacity wall: what held memory over the peak step, per module, and the what-ifs
  const memoryPart = el('div', 'mw-memory-part');
  const memoryBox = el('div', 'mw-memory');
  memoryPart.append(el('h2', '', 'Memory: what held it over the peak step'), memoryBox);
  app.append(header, status, incompleteBanner, traceBanner, projection, cards, findingsPart, comparePart, ranksPart,
      rooflinePart, operatorsPart, phasesPart, memoryPart, commPart, modulesPart);
  const runParts = [rooflinePart, operatorsPart, phasesPart, memoryPart, modulesPart];
  document.body.appendChild(app);
  const table = new OperatorTable(tableBox);
  const view = chartView();  // the chart's filters, zoom and selection, kept across redraws
  // a click on a row marks its point (or its module's); a click on a point selects its rows
  table.selectListener = (ids) => {
    view.selected = new Set(ids);
    highlightPoints(chartBox, view);
  };
  // the memory peak's card: against the what-if device's capacity when one is chosen
  const memoryView = new MemoryView(memoryBox, getJSON,
      (memory) => memoryCard(cards, memory, devices.find((d) => d.key === state.device) || null));

  let devices = [];
  try {
    devices = (await getJSON('./devices')).devices;
    state.runs = (await getJSON('./runs')).runs;
  } catch (error) {
    status.textContent = `Could not list runs: ${error.message}`;
    status.className = 'mw-status mw-error';
    return;
  }
  if (!state.runs.length) {
    status.textContent = 'No memwall reports or torch.profiler traces in this logdir yet. Profile a run with ' +
        'memwall.profile(logdir=...), or record one with torch.profiler (record_shapes=True).';
    return;
  }
  state.run = state.runs[0].run;

  let latest = 0;  // a response for an older selection must not overwrite a newer one

  function clearView() {
    cards.textContent = ''; chartBox.textContent = ''; treeBox.textContent = ''; phasesBox.textContent = '';
    projection.hidden = changesPart.hidden = traceBanner.hidden = incompleteBanner.hidden = true;
    for (const part of runParts) part.hidden = true;
    renderFindings(findingsPart, findingsList, []);
    table.setRows([]);
    ranksPart.hidden = commPart.hidden = comparePart.hidden = true;
    memoryView.clear('');
  }

  async function update() {
    const request = ++latest;
    const run = state.runs.find((r) => r.run === state.run);
    controls.textContent = '';
    controls.appendChild(select('run', 'mw-run', state.runs.map((r) => [r.run, runLabel(r)]), state.run, (v) => {
      state.run = v; state.job = ''; state.rank = ''; state.window = 'all'; state.phase = '';
      if (state.baseline === v) state.baseline = '';
      update();
    }));
    // runs written into one logdir are separate jobs, never summed: the newest first
    // a torch.profiler trace is one report (analysed on the server): no job, rank or steps to choose
    const trace = run.kind === 'trace' ? run.trace : null;
    const jobs = trace ? [] : run.jobs || [];
    const job = jobs.find((j) => j.job === state.job) || jobs[0];
    state.job = job ? job.job : '';
    if (jobs.length > 1) {
      const when = (j) => new Date(j.created_unix_s * 1000).toLocaleString();
      controls.appendChild(select('job', 'mw-job', jobs.map((j, i) => [j.job, `${i === 0 ? 'newest: ' : ''}${when(j)}`]),
          state.job, (v) => { state.job = v; state.rank = ''; state.window = 'all'; state.phase = ''; update(); }));
    }
    const jobRanks = trace ? [] : job ? job.ranks : run.ranks;
    if (trace) {
      state.rank = ''; state.window = 'all';
    } else {
      const ranks = jobRanks.map((r) => [String(r), `rank ${r}`]);
      if (!state.rank || !jobRanks.includes(Number(state.rank))) state.rank = ranks.length ? ranks[0][0] : String(run.ranks[0]);
      controls.appendChild(select('rank', 'mw-rank', ranks, state.rank, (v) => { state.rank = v; state.window = 'all'; update(); }));
      const inJob = (w) => !job || job.windows.includes(w.id);
      const windows = [['all', 'all steps']].concat(run.windows.filter((w) => String(w.rank) === state.rank && inJob(w)).map((w) =>
        [w.id, w.first_step >= 0 ? `steps ${w.first_step}–${w.last_step}` : w.id]));
      controls.appendChild(select('steps', 'mw-window', windows, state.window, (v) => { state.window = v; update(); }));
    }
    const others = state.runs.filter((r) => r.run !== state.run).map((r) => [r.run, runLabel(r)]);
    if (others.length) {
      controls.appendChild(select('compare with', 'mw-baseline', [['', 'no baseline']].concat(others), state.baseline,
          (v) => { state.baseline = v; update(); }));
    }

    const params = selectionParams();
    if (state.phase) params.set('phase', state.phase);
    if (state.device) params.set('device', state.device);
    if (state.bpe) params.set('bytes_per_element', state.bpe);
    if (state.dtype) params.set('dtype', state.dtype);
    // the interconnect what-if: collectives projected to another scale and other links
    if (state.worldSize) params.set('world_size', state.worldSize);
    if (state.intraLink) params.set('intra_link', state.intraLink);
    if (state.interLink) params.set('inter_link', state.interLink);
    status.className = 'mw-status';
    if (trace && trace.state !== 'analysed') {
      // the first request analyses the trace on the server (once; later ones are cached): say so,
      // and show nothing of the run chosen before meanwhile
      status.textContent = `Analysing ${trace.file} (${si(trace.size_bytes, 'B')}), a torch.profiler trace, on the ` +
          'server: memwall counts each of its ops once. A large trace takes a while…';
      status.classList.add('mw-analysing');
      clearView();
    } else {
      status.textContent = 'Loading…';
    }
    let data;
    try {
      data = await getJSON(`./report?${params}`);
    } catch (error) {
      if (request !== latest) return;
      if (trace) setTraceState(run, 'failed');
      status.textContent = `This run's report cannot be shown: ${error.message}`;
      status.className = 'mw-status mw-error';
      clearView();
      return;
    }
    if (trace && trace.state !== 'analysed') setTraceState(run, 'analysed');
    if (request !== latest) return;
    status.textContent = '';
    status.className = 'mw-status';
    controls.appendChild(select('phase', 'mw-phase', [['', 'all phases']].concat(data.phases.map((p) => [p, p])),
        state.phase, (v) => { state.phase = v; update(); }));
    controls.appendChild(select('points', 'mw-points', [['op', 'per operator'], ['module', 'per module'],
      ['module_phase', 'per module and phase']], state.points, (v) => { state.points = v; view.zoom = null; draw(data); }));
    controls.appendChild(select('what-if device', 'mw-device', [['', 'as measured']].concat(
        devices.map((d) => [d.key, d.name])), state.device, (v) => { state.device = v; update(); }));
    controls.appendChild(select('bytes/element', 'mw-bpe', [['', 'as measured'], ['1', '1 (8-bit)'], ['2', '2 (16-bit)'],
      ['4', '4 (32-bit)']], state.bpe, (v) => { state.bpe = v; update(); }));
    // "in bf16": floating-point ops under that dtype's peak, tensors at its size (unless bytes/element says)
    controls.appendChild(select('compute in', 'mw-dtype', [['', 'as measured'], ['bf16', 'bf16'], ['fp16', 'fp16'],
      ['fp8', 'fp8'], ['fp32', 'fp32']], state.dtype, (v) => { state.dtype = v; update(); }));
    for (const part of runParts) part.hidden = false;
    headline(cards, data);
    renderIncomplete(incompleteBanner, data.headline);
    renderTrace(traceBanner, data.trace);
    renderFindings(findingsPart, findingsList, data.findings, data.phase);
    renderProjection(projection, changesPart, changesBox, data);
    compare = null;
    if (state.baseline) {
      // the same selection as the report's, against the baseline's newest job (same rank)
      const query = new URLSearchParams(params);
      query.set('baseline', state.baseline);
      try {
        compare = await getJSON(`./compare?${query}`);
        if (request !== latest) return;
        compareTitle.textContent = `Compared with ${compare.baseline} (the baseline)`;
        renderCompare(compareBox, compare);
      } catch (error) {
        if (request !== latest) return;
        compareTitle.textContent = `Compared with ${state.baseline}`;
        compareBox.textContent = '';
        compareBox.appendChild(el('div', 'mw-status mw-error', `The runs cannot be compared: ${error.message}`));
      }
    }
    comparePart.hidden = !state.baseline;
    view.zoom = null;  // a new selection: its own range
    view.selected = new Set();
    draw(data);
    table.setRows(data.rows, Boolean(data.projection));
    renderPhases(phasesBox, data);
    renderTree(treeBox, data.tree, data.headline.time_s, Boolean(data.trace));
    commPart.hidden = !data.comm;
    if (data.comm) {
      renderComm(commBox, data.comm, {world_size: state.worldSize, intra_link: state.intraLink,
        inter_link: state.interLink}, (what) => {
        state.worldSize = what.world_size; state.intraLink = what.intra_link; state.interLink = what.inter_link;
        update();
      });
    }
    const selection = selectionParams();
    // the memory what-ifs start from the what-if device's capacity (and may choose another there)
    const memoryLoaded = memoryView.load(selection.toString(), devices, state.device);
    ranksPart.hidden = jobRanks.length < 2;
    if (jobRanks.length > 1) {
      try {
        const query = new URLSearchParams({run: state.run});
        if (state.job) query.set('job', state.job);
        const ranks = await getJSON(`./ranks?${query}`);
        if (request !== latest) return;
        renderRanks(ranksBox, ranks, state.rank, (r) => { state.rank = r; state.window = 'all'; update(); });
      } catch (error) {
        if (request !== latest) return;
        ranksBox.textContent = `The ranks cannot be compared: ${error.message}`;
      }
    }
    await memoryLoaded;
  }

  let compare = null;  // the comparison with the baseline, when one is chosen

  /** The parameters that select the report shown (a trace's run is one report: its name only). */
  function selectionParams() {
    const params = new URLSearchParams({run: state.run});
    if (state.rank) params.set('rank', state.rank);
    if (state.window && state.rank) params.set('window', state.window);
    if (state.job) params.set('job', state.job);
    return params;
  }

  /** A trace analysed (or failed) on the server: its state, and its entry in the run list. */
  function setTraceState(run, stateName) {
    run.trace.state = stateName;
    run.trace.note = {analysed: 'torch.profiler trace, analysed by memwall',
      failed: 'torch.profiler trace memwall cannot analyse'}[stateName] || run.trace.note;
    for (const option of controls.querySelectorAll('select.mw-run option, select.mw-baseline option')) {
      if (option.value === run.run) option.textContent = runLabel(run);
    }
  }

  function draw(data) {
    const kind = {op: ['rows', 'baseline_rows'], module: ['modules', 'baseline_modules'],
      module_phase: ['module_phases', 'baseline_module_phases']}[state.points];
    const baseline = compare ? {label: `baseline: ${compare.baseline}`, points: compare[kind[1]] || []} : null;
    // only the roofs the rows are placed under (an fp32 run draws no fp16 or int8 roof)
    const roofs = new Set(data.rows.concat(baseline ? compare.baseline_rows : []).map((r) => r.roof).filter(Boolean));
    drawRoofline(chartBox, data.device, data[kind[0]], describePoint, {
      projected: Boolean(data.projection), baseline, program: data.program_points || [], roofs,
      labelled: state.points !== 'op', view,
      onSelect: (ids) => table.select(ids),
    });
  }

  await update();
}

/** A run's name in the run list; a torch.profiler trace says so, and whether it is analysed yet. */
function runLabel(run) {
  return run.kind === 'trace' && run.trace ? `${run.run} — ${run.trace.note}` : run.run;
}

/**
 * The banner of a report analysed from a torch.profiler trace (`memwall analyze`, or a trace the
 * tab found): its file, where the times came from, the calls memwall could not count and why, and
 * what to do when the trace has no input shapes. Hidden for memwall's own reports.
 */
function renderTrace(banner, trace) {
  banner.textContent = '';
  banner.hidden = !trace;
  if (!trace) return;
  banner.appendChild(el('strong', '', 'Analysed from a torch.profiler trace: '));
  banner.appendChild(el('code', 'mw-trace-file', trace.file));
  const ops = trace.ops === null || trace.ops === undefined ? '' : `${trace.ops} op call(s); `;
  banner.appendChild(el('span', 'mw-trace-time', ` — ${ops}times from ${trace.time_from}.`));
  const uncounted = el('div', 'mw-trace-uncounted');
  if (trace.uncounted_total) {
    uncounted.appendChild(document.createTextNode(`${trace.uncounted_total} call(s) uncounted (listed with their ` +
        'times, no FLOPs): '));
    uncounted.appendChild(document.createTextNode(
        trace.uncounted_calls.map((u) => `${u.reason}: ${u.calls}`).join(' · ')));
  } else {
    uncounted.textContent = 'Every call counted (input shapes recorded, output shapes from a replay on meta tensors).';
  }
  banner.appendChild(uncounted);
  if (trace.float32_assumed) {
    const a = trace.float32_assumed;
    banner.appendChild(el('div', 'mw-trace-assumed', `${a.calls} call(s) of ${a.ops.join(', ')} counted with ` +
        `their tensor lists taken as float32: ${a.why}.`));
  }
  if (trace.hint) banner.appendChild(el('div', 'mw-trace-hint', `To count them: ${trace.hint}.`));
}

/**
 * The banner of a run that ended early (`headline.incomplete`: the report's meta.incomplete, an
 * exception or a signal inside the profiled block): its last recorded step is partial.
 */
function renderIncomplete(banner, head) {
  banner.textContent = '';
  banner.hidden = !head.incomplete;
  if (!head.incomplete) return;
  banner.appendChild(el('strong', '', 'Incomplete run: '));
  const last = head.steps.length ? ` (step ${head.steps[head.steps.length - 1]})` : '';
  banner.appendChild(el('span', '', `this run ended early (an exception or a signal): its last step${last} is ` +
      'partial, so its figures cover less than a whole step.'));
}

/**
 * The headline card of the memory: the peak and its share of the capacity. `device`: a what-if
 * device (the tab's device selector); its capacity, where memwall knows it, replaces the measured
 * one, and otherwise the card says the capacity is the measured machine's.
 */
function memoryCard(container, memory, device = null) {
  for (const old of container.querySelectorAll('.mw-memory-card')) old.remove();
  if (!memory) return;
  const box = el('div', 'mw-card mw-memory-card');
  box.appendChild(el('div', 'mw-card-label', 'memory peak'));
  box.appendChild(el('div', 'mw-card-value', si(memory.peak_bytes, 'B')));
  let note;
  if (device && device.memory_bytes) {
    note = `${shareOf(memory.peak_bytes / device.memory_bytes, si(device.memory_bytes, 'B'))} (${device.name}, the what-if device)`;
  } else if (memory.capacity_bytes) {
    const whose = device ? `, the measured machine's: ${device.name}'s is unknown` : '';
    note = `${shareOf(memory.peak_bytes / memory.capacity_bytes, si(memory.capacity_bytes, 'B'))} ` +
        `(${memory.capacity_source}${whose})`;
  } else {
    note = 'capacity unknown';
  }
  box.appendChild(el('div', 'mw-card-note', note));
  container.appendChild(box);
}

function headline(container, data) {
  const h = data.headline;
  container.textContent = '';
  const card = (label, value, note, className) => {
    const box = el('div', className ? `mw-card ${className}` : 'mw-card');
    box.appendChild(el('div', 'mw-card-label', label));
    box.appendChild(el('div', 'mw-card-value', value));
    if (note) box.appendChild(el('div', 'mw-card-note', note));
    container.appendChild(box);
  };
  const steps = `${h.steps.length} step(s)${h.incomplete ? ' · INCOMPLETE' : ''}`;
  const p = data.projection;
  if (p) {  // a what-if: the projection on its device, against the measured time of the same ops
    const where = data.device ? data.device.name : 'the what-if';
    card('projected time', duration(h.projected_time_s), `counted ops on ${where} · ${steps} · a roofline bound`,
        'mw-projected-time');
    card('speed-up', `${times(h.speedup)} faster`,
        `measured ${duration(h.counted_time_s)} on ${p.measured_on || 'the run\'s device'}`, 'mw-speedup');
    card('memory-bound', pct(h.projected_memory_bound_fraction),
        `share of projected time at ${where}'s memory roofs${p.launch_floor_s ? ' (the launch floor apart)' : ''}`);
    card('projected rate', si(h.projected_flops_per_s, 'FLOP/s'), p.launch_floor_s
      ? `${pct(h.launch_floor_fraction)} of the time is the launch floor (${duration(p.launch_floor_s)} per kernel)`
      : 'no launch floor on a CPU');
  } else {
    card('time in ops', duration(h.time_s), steps);
    const setup = h.setup_time_s > 0 && h.setup_time_s < h.time_s ? ` · set-up (${duration(h.setup_time_s)}) left out` : '';
    card('memory-bound', pct(h.memory_bound_fraction), `share of op time${setup}`);
    card('achieved', si(h.achieved_flops_per_s, 'FLOP/s'), `${si(h.achieved_bytes_per_s, 'B/s')} moved`);
  }
  card('intensity', `${si(h.intensity)} FLOP/B`, `${si(h.flops, 'FLOP')} · ${si(h.bytes, 'B')}`);
  card('coverage', pct(h.coverage), `${h.uncounted_rows} uncounted row(s)`);
  const comm = data.comm;
  if (comm) {
    const overlap = comm.overlap_fraction === null ? 'overlap not measured' : `${pct(comm.overlap_fraction)} overlapped`;
    card('communication', comm.comm_share === null ? si(comm.bytes_moved, 'B') : `${pct(comm.comm_share)} of wall`,
        `rank ${comm.rank} of ${comm.world_size} · ${si(comm.bytes_moved, 'B')} sent · ${overlap}`);
  }
  const device = data.device;
  if (device) {
    const peaks = device.peaks.filter((p) => ['fp32', 'bf16', 'fp16'].includes(p.dtype))
        .map((p) => `${p.dtype} ${si(p.flops_per_s, 'FLOP/s')} (${p.source})`).join(' · ');
    const bw = device.bandwidth ? `${si(device.bandwidth.bytes_per_s, 'B/s')} (${device.bandwidth.source})` : 'unknown';
    const whatIf = data.measured_on && data.measured_on !== device.name ? ` · times measured on ${data.measured_on}` : '';
    const bpe = (data.compute_dtype ? ` · floating-point ops in ${data.compute_dtype}` : '') +
        (data.bytes_per_element ? ` · tensors re-sized to ${data.bytes_per_element} B/element` : '');
    card('device', device.name, `${peaks} · memory ${bw}${whatIf}${bpe}`);
  }
}

/**
 * The console's Phases table (`memwall report`): each phase's calls, time and its share of the op
 * time, FLOPs, bytes, intensity and bound, and its roof reached (in a what-if, its projected time
 * and speed-up), from /report's phase_groups in the console's order (data.phases).
 */
function renderPhases(box, data) {
  box.textContent = '';
  const total = data.headline.time_s;
  const order = (g) => data.phases.indexOf(g.key);
  const groups = [...data.phase_groups].sort((a, b) => order(a) - order(b));
  const columns = [
    ['phase', (g) => g.key, false],
    ['calls', (g) => g.calls.toLocaleString(), true],
    [data.projection ? 'measured' : 'time', (g) => duration(g.time_s), true],
    ['share', (g) => pct(total ? g.time_s / total : null), true],
    ['FLOPs', (g) => si(g.flops), true],
    ['bytes', (g) => si(g.bytes, 'B'), true],
    ['FLOP/B', (g) => num(g.intensity), true],
    ['bound', (g) => g.bound, false],
  ].concat(data.projection
    ? [['projected', (g) => duration(g.projected_time_s), true], ['speed-up', (g) => times(g.speedup), true]]
    : [['% of roof', (g) => pct(g.efficiency), true]]);
  box.appendChild(figures(columns, groups, (g) => `mw-phase-row mw-${g.bound}`));
}

/**
 * A what-if's projection: a banner saying what it is (each op's least time on the device, a
 * roofline bound, not a measurement), and the ops whose bound flips between the measured
 * placement and the what-if's (hidden for a report as measured).
 */
function renderProjection(banner, part, box, data) {
  const p = data.projection;
  banner.hidden = part.hidden = !p;
  banner.textContent = '';
  box.textContent = '';
  if (!p) return;
  const where = p.device || 'the what-if\'s device';
  banner.appendChild(el('strong', '', `Projected on ${where}: a roofline bound, not a measurement.`));
  const sized = (data.compute_dtype ? ` Every floating-point op computed in ${data.compute_dtype}.` : '') +
      (data.bytes_per_element ? ` Every tensor at ${data.bytes_per_element} B/element.` : '');
  banner.appendChild(el('span', '', ` ${p.note}.${sized} Times were measured on ` +
      `${p.measured_on || 'the run\'s device'}; no kernel reaches its roof, so the real time is longer.`));
  const changes = p.bound_changes;
  part.querySelector('h2').textContent = `Ops that change side of the ridge on ${where}: ${changes.length}`;
  if (!changes.length) {
    box.appendChild(el('div', 'mw-empty', 'Every op stays on its side of the ridge.'));
    return;
  }
  const table = el('table', 'mw-table mw-changes-table');
  const head = el('tr');
  for (const label of ['op', 'module', 'phase', 'FLOP/B', 'measured on', `on ${where}`, 'ridge there']) {
    head.appendChild(el('th', '', label));
  }
  table.appendChild(el('thead')).appendChild(head);
  const body = el('tbody');
  const shown = changes.slice(0, 50);
  for (const c of shown) {
    const tr = el('tr', `mw-row mw-change mw-${c.after}`);
    tr.dataset.id = String(c.id);
    const cells = [c.op.replace(/^aten\./, ''), c.module || '(top level)', c.phase, num(c.intensity),
      `${c.before}-bound`, `${c.after}-bound`, `${num(c.ridge_after)} FLOP/B`];
    for (const text of cells) tr.appendChild(el('td', '', text));
    tr.children[0].title = `${c.op} ${c.shapes}`;
    body.appendChild(tr);
  }
  table.appendChild(body);
  const scroller = el('div', 'mw-scroller mw-changes-scroller');
  scroller.appendChild(table);
  box.appendChild(scroller);
  if (changes.length > shown.length) {
    box.appendChild(el('div', 'mw-note', `and ${changes.length - shown.length} more (the longest measured first)`));
  }
}
