// The module tree with rolled-up totals (forward and backward time), as nested <details>.

import {duration, el, num, pct, si} from './format.js';

/** `trace`: the report was analysed from a torch.profiler trace (its module paths come from the
 * trace's own records of them, not from memwall's hooks). */
export function renderTree(container, nodes, totalTime, trace = false) {
  container.textContent = '';
  if (!nodes.length || (nodes.length === 1 && nodes[0].key === '')) {
    container.appendChild(el('div', 'mw-empty', trace
      ? 'No module paths recorded: this torch.profiler trace does not say which module ran each op. Record it ' +
        'with torch.profiler.profile(with_stack=True), whose nn.Module ranges name them, to see them here ' +
        '(or profile the run with memwall.profile(model=...)).'
      : 'No module paths recorded (pass model= or run modules).'));
    return;
  }
  const children = new Map();
  for (const node of nodes) {
    if (node.parent === null) continue;
    if (!children.has(node.parent)) children.set(node.parent, []);
    children.get(node.parent).push(node);
  }
  const root = nodes.find((n) => n.key === '');
  if (!root) return;
  const top = branch(root, children, totalTime, 0);
  container.appendChild(top);
  rove(top);
}

/**
 * The tree is one Tab stop: one ▸ (a <summary>) is in the tab order, the one last focused;
 * ArrowUp and ArrowDown move between the ▸ in view (not those inside a folded branch), and
 * Enter or Space fold and unfold as a <summary> does.
 */
function rove(top) {
  const all = [...top.querySelectorAll('summary')];
  const tabTo = (summary) => { for (const s of all) s.tabIndex = s === summary ? 0 : -1; };
  tabTo(all[0]);
  top.addEventListener('focusin', (event) => { if (event.target.tagName === 'SUMMARY') tabTo(event.target); });
  top.addEventListener('keydown', (event) => {
    if (event.target.tagName !== 'SUMMARY' || (event.key !== 'ArrowDown' && event.key !== 'ArrowUp')) return;
    event.preventDefault();
    // in view: no branch above its own is folded
    const shown = all.filter((s) => !s.parentElement.parentElement.closest('details:not([open])'));
    const next = shown[shown.indexOf(event.target) + (event.key === 'ArrowDown' ? 1 : -1)];
    if (next) next.focus();
  });
}

function branch(node, children, totalTime, depth) {
  const kids = (children.get(node.key) || []).sort((a, b) => b.time_s - a.time_s);
  const line = el('span', 'mw-tree-line');
  line.appendChild(el('span', 'mw-tree-name', node.key ? node.key.split('.').pop() : '(model)'));
  // the optimizer step, the grad scaler and work outside any phase are neither forward nor backward
  const opt = node.optimizer_time_s > 0.005 * node.time_s ? ` · opt ${duration(node.optimizer_time_s)}` : '';
  const other = opt + (node.other_time_s > 0.005 * node.time_s ? ` · other ${duration(node.other_time_s)}` : '');
  line.appendChild(el('span', 'mw-tree-stat', `${pct(totalTime ? node.time_s / totalTime : null)} · ` +
      `fwd ${duration(node.forward_time_s)} · bwd ${duration(node.backward_time_s)}${other} · ` +
      `${si(node.flops, 'FLOP')} · ${num(node.intensity)} FLOP/B`));
  line.appendChild(el('span', `mw-badge mw-${node.bound}`, node.bound));
  line.title = node.key || '(model)';
  if (!kids.length) {
    const leaf = el('div', 'mw-tree-leaf');
    leaf.appendChild(line);
    return leaf;
  }
  const details = el('details', 'mw-tree-node');
  details.open = depth < 2;
  const summary = el('summary');
  summary.appendChild(line);
  details.appendChild(summary);
  for (const kid of kids) details.appendChild(branch(kid, children, totalTime, depth + 1));
  return details;
}
