// ops.js: the operator console (/ops). Signs in with a bearer token (kept in this tab's
// sessionStorage, sent only in the Authorization header, never in a URL), then every 2 s reads
// /api/stats for the chosen window and redraws the charts (uPlot, served by the gateway from
// node_modules) and tables; reads /api/knobs and /api/audit, and sends knob changes as one
// all-or-nothing POST. Every text that comes from the server is set with textContent: knob
// names, values and audit entries are never parsed as HTML.
'use strict';

const TOKEN_KEY = 'duel-ops-token';
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  role: null,
  knobs: [],        // as /api/knobs last said
  charts: {},       // id -> uPlot
  timer: null,
  busy: false,
  lastStats: null,
};
window.duelOps = state; // for the browser tests: the charts' data

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = {Authorization: `Bearer ${state.token}`};
  if (options.body) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {...options, headers, cache: 'no-store'});
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) throw new ApiError(res.status, (body && body.error) || `HTTP ${res.status}`);
  return body;
}

function show(el, on) { el.hidden = !on; }

function text(el, value) { el.textContent = value == null ? '' : String(value); }

function fmt(v, digits = 3, unit = '') {
  if (v == null || !Number.isFinite(v)) return '–';
  return `${Number(v).toPrecision(digits).replace(/\.?0+(e|$)/, '$1')}${unit}`;
}

function cell(row, value, cls) {
  const td = document.createElement('td');
  text(td, value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

// ---- sign in / out -----------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.role = null;
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  show($('console'), false);
  show($('login'), true);
  for (const id of ['who', 'sign-out', 'window-label']) show($(id), false);
  text($('updated'), '');
  const err = $('login-error');
  text(err, message || '');
  show(err, Boolean(message));
}

async function signIn() {
  try {
    const k = await api('/api/knobs');
    state.role = k.you.role;
    text($('who'), `signed in as ${k.you.name} (${k.you.role})`);
    for (const id of ['who', 'sign-out', 'window-label']) show($(id), true);
    show($('login'), false);
    show($('console'), true);
    renderKnobs(k);
    await refresh();
    state.timer = setInterval(refresh, REFRESH_MS);
  } catch (e) {
    signOut(e.status === 401 ? 'That token is not valid.'
      : e.status === 429 ? 'Too many failed attempts from this address; wait a minute.'
        : `Cannot sign in: ${e.message}`);
  }
}

$('login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const t = $('token').value.trim();
  $('token').value = '';
  if (!t) return;
  state.token = t;
  sessionStorage.setItem(TOKEN_KEY, t);
  signIn();
});
$('sign-out').addEventListener('click', () => signOut(''));

// ---- charts ------------------------------------------------------------------------------

const COLORS = ['#1d4ed8', '#b45309', '#15803d', '#9f1239', '#6d28d9'];

// id -> series of /api/stats shown there, each [name, label, scale]
const CHARTS = {
  'c-regret': [['regret_mean', 'R-hat mean', 'y'], ['regret_p50', 'p50', 'y'], ['regret_p95', 'p95', 'y']],
  'c-erm': [['agree', 'agreement with users', 'share'], ['disagree_mean', 'disagreement', 'y']],
  'c-votes': [['votes_a', 'A', 'y'], ['votes_b', 'B', 'y'], ['votes_tie', 'tie', 'y'],
    ['votes_both_bad', 'both bad', 'y']],
  'c-duels': [['duels_per_s', 'duels/s', 'rate'], ['ttd_p50', 'time to duel p50 (s)', 's'],
    ['ttd_p95', 'p95 (s)', 's']],
  'c-lag': [['trainer_lag_entries', 'votes behind', 'y'], ['trainer_lag_s', 'oldest (s)', 's']],
  'c-loss': [['loss', 'DAP loss', 'y'], ['erm_loss', 'ERM loss', 'y'], ['kl', 'KL', 'kl']],
  'c-latency': [['vote_to_serving_s', 'vote to serving, slowest gateway (s)', 's'],
    ['vote_to_publish_s', 'vote to snapshot (s)', 's'], ['publish_to_serve_s', 'snapshot to serving (s)', 's']],
};

function chartWidth(fig) { return Math.max(240, fig.clientWidth - 22); }

function drawCharts(stats) {
  if (typeof uPlot === 'undefined') {
    show($('no-charts'), true);
    return;
  }
  for (const [id, series] of Object.entries(CHARTS)) {
    const fig = $(id);
    const data = [stats.t, ...series.map(([name]) => stats.series[name] || [])];
    let u = state.charts[id];
    if (!u) {
      const scales = [...new Set(series.map((s) => s[2]))];
      const opts = {
        width: chartWidth(fig),
        height: 190,
        legend: {live: false},
        scales: {x: {time: true}},
        series: [{}, ...series.map(([, label, scale], i) => ({
          label, scale, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
          points: {size: 4}, // a step with data between empty ones still shows
        }))],
        axes: [{}, ...scales.map((scale, i) => ({scale, side: i === 0 ? 3 : 1, size: 50,
          grid: {show: i === 0}}))],
      };
      u = new uPlot(opts, data, fig);
      state.charts[id] = u;
    } else {
      u.setData(data);
    }
  }
}

window.addEventListener('resize', () => {
  for (const [id, u] of Object.entries(state.charts)) u.setSize({width: chartWidth($(id)), height: 190});
});

// ---- tables ------------------------------------------------------------------------------

function renderTotals(stats) {
  const t = stats.totals;
  text($('t-duels'), t.duels);
  text($('t-regret'), fmt(t.regret_mean));
  const trend = t.regret_trend_per_h;
  text($('t-trend'), trend == null ? '–' : `${trend > 0 ? 'rising' : 'falling'} ${fmt(Math.abs(trend), 2)}/h`);
  text($('t-agree'), t.agree == null ? '–' : `${fmt(100 * t.agree, 3)} %`);
  text($('t-ttd'), `${fmt(t.ttd_p50, 2, ' s')} / ${fmt(t.ttd_p95, 2, ' s')}`);
  const tr = stats.trainer;
  text($('t-lag'), tr ? `${tr.lag_entries} votes, ${fmt(tr.lag_s, 2, ' s')}` : 'no trainer');
}

function ago(seconds) {
  if (seconds == null) return '–';
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function renderInstances(stats) {
  const body = $('instances').tBodies[0];
  body.replaceChildren();
  for (const inst of stats.instances) {
    const row = body.insertRow();
    cell(row, inst.instance);
    cell(row, inst.role);
    // serving: the snapshot new duels get; trainer: the newest it published
    if (inst.role === 'trainer') cell(row, inst.version > 0 ? `published v${inst.version}` : 'none published');
    else cell(row, inst.version === 0 ? 'base' : `v${inst.version}`);
    cell(row, ago(inst.age_s));
    cell(row, inst.stale ? 'stale' : 'healthy', inst.stale ? 'stale' : 'healthy');
  }
  if (!stats.instances.length) cell(body.insertRow(), 'no instance has written stats yet');
}

function renderGroups(stats) {
  const body = $('groups').tBodies[0];
  body.replaceChildren();
  for (const g of stats.groups) {
    const row = body.insertRow();
    cell(row, g.arm);
    cell(row, g.strategy);
    cell(row, g.duels);
    cell(row, `${g.votes.a}/${g.votes.b}/${g.votes.tie}/${g.votes.both_bad}`);
    cell(row, fmt(g.regret_mean));
    cell(row, fmt(g.regret_p50));
    cell(row, fmt(g.regret_p95));
    cell(row, g.agree == null ? '–' : `${fmt(100 * g.agree, 3)} %`);
    cell(row, fmt(g.ttd_p50, 2, ' s'));
  }
}

function allowed(k) {
  if (k.type === 'choice') return k.choices.join(', ');
  return `${k.min_exclusive ? '(' : '['}${k.min}, ${k.max}]`;
}

function renderKnobs(k) {
  state.knobs = k.knobs;
  const readOnly = state.role !== 'admin';
  show($('knobs-readonly'), readOnly);
  $('knobs-apply').disabled = readOnly;
  $('knobs-revert').disabled = readOnly;
  const ignored = $('knobs-ignored');
  ignored.replaceChildren();
  for (const message of k.ignored || []) {
    const li = document.createElement('li');
    text(li, `duel:knobs holds a value the table refuses, ignored: ${message}`);
    ignored.appendChild(li);
  }
  const body = $('knobs').tBodies[0];
  body.replaceChildren();
  for (const knob of k.knobs) {
    const row = body.insertRow();
    row.dataset.knob = knob.name;
    const name = cell(row, knob.name);
    name.title = knob.help;
    cell(row, knob.readers.join(', '));
    const td = row.insertCell();
    let input;
    if (knob.type === 'choice') {
      input = document.createElement('select');
      for (const c of knob.choices) {
        const o = document.createElement('option');
        o.value = c;
        text(o, c);
        input.appendChild(o);
      }
    } else {
      input = document.createElement('input');
      input.type = 'text';
      input.inputMode = 'decimal';
    }
    input.value = knob.value;
    input.dataset.current = knob.value;
    input.name = knob.name;
    input.setAttribute('aria-label', knob.name);
    input.disabled = readOnly;
    input.addEventListener('input', () => row.classList.toggle('changed', input.value !== input.dataset.current));
    td.appendChild(input);
    cell(row, knob.default);
    cell(row, allowed(knob));
  }
}

function editsPending() {
  return [...$('knobs').querySelectorAll('input, select')].some((i) => i.value !== i.dataset.current);
}

$('knobs-revert').addEventListener('click', async () => {
  text($('knobs-message'), '');
  renderKnobs(await api('/api/knobs'));
});

$('knobs-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const changes = {};
  for (const i of $('knobs').querySelectorAll('input, select'))
    if (i.value !== i.dataset.current) changes[i.name] = i.value.trim();
  const msg = $('knobs-message');
  if (!Object.keys(changes).length) {
    text(msg, 'Nothing changed.');
    return;
  }
  msg.className = '';
  try {
    const r = await api('/api/knobs', {method: 'POST', body: JSON.stringify({changes})});
    renderKnobs(r);
    text(msg, `Applied: ${describeChange(r.audit)}`);
    renderAudit(await api('/api/audit'));
  } catch (e) {
    msg.className = 'error';
    text(msg, e.status === 403 ? 'Viewers cannot change knobs.' : `Refused, nothing changed: ${e.message}`);
  }
});

function describeChange(entry) {
  if (!entry || !entry.after) return '';
  return Object.keys(entry.after).map((name) => {
    const before = entry.before ? entry.before[name] : undefined;
    const after = entry.after[name];
    return `${name}: ${before ?? '?'} → ${after === null ? '(default)' : after}`;
  }).join(', ');
}

function renderAudit(a) {
  const body = $('audit').tBodies[0];
  body.replaceChildren();
  for (const e of a.entries) {
    const row = body.insertRow();
    cell(row, Number.isFinite(e.ts_ms) ? new Date(e.ts_ms).toLocaleString() : e.id);
    cell(row, e.who);
    cell(row, describeChange(e), 'wrap');
  }
  if (!a.entries.length) cell(body.insertRow(), 'no changes yet');
}

// ---- rollout and arena -------------------------------------------------------------------
// /api/rollout and /api/arena (docs/SERVING.md "Rollouts"): the spec's arms, its status and the
// controller's last check; an admin's buttons send one action each after a confirmation.

function rolloutAction(body, question) {
  if (!window.confirm(question)) return;
  const msg = $('rollout-message');
  api('/api/rollout', {method: 'POST', body: JSON.stringify(body)})
    .then((r) => {
      text(msg, `done: revision ${r.rollout.revision}, status ${r.rollout.status}`);
      renderRollout(r);
    })
    .catch((e) => text(msg, `refused: ${e.message}`));
}

function renderRollout(r) {
  const spec = r.rollout;
  const body = $('rollout-arms').tBodies[0];
  body.replaceChildren();
  const admin = state.role === 'admin';
  show($('rollout-actions'), admin && Boolean(spec));
  if (!spec) {
    text($('rollout-status'), 'no rollout: every duel follows the latest snapshot');
    text($('rollout-check'), '');
    return;
  }
  const step = spec.steps && spec.steps.length ? `, step ${spec.step} of ${spec.steps.length}` : '';
  text($('rollout-status'), `revision ${spec.revision}: ${spec.status}${step}, ` +
    `arena ${fmt(100 * spec.arena_fraction, 3)} % of duels`);
  for (const arm of spec.arms) {
    const row = body.insertRow();
    row.dataset.arm = arm.name;
    cell(row, arm.name + (arm.name === spec.stable ? ' (stable)' : ''));
    cell(row, arm.snapshot);
    cell(row, arm.weight, 'weight');
    const td = row.insertCell();
    if (admin && arm.name !== spec.stable) {
      const input = document.createElement('input');
      Object.assign(input, {type: 'number', min: 0, max: 100, step: 1, value: arm.weight});
      input.setAttribute('aria-label', `new weight of ${arm.name}`);
      const set = document.createElement('button');
      set.type = 'button';
      set.textContent = 'Set weight';
      set.addEventListener('click', () => rolloutAction(
        {action: 'weight', arm: arm.name, weight: Number(input.value)},
        `Set ${arm.name} to ${input.value} % (the stable arm takes the rest)?`));
      td.append(input, set);
    }
  }
  const a = r.analysis;
  text($('rollout-check'), a && a.last
    ? `controller (${a.instance}): ${a.last.verdict}, ${a.last.why}; ${a.failures} failed in a row`
    : 'no analysis check yet');
}

function renderLeaderboard(board) {
  const body = $('leaderboard').tBodies[0];
  body.replaceChildren();
  for (const arm of board.arms) {
    const row = body.insertRow();
    cell(row, arm.rank);
    cell(row, arm.name);
    cell(row, fmt(arm.rating, 4));
    cell(row, `${fmt(arm.lower, 4)} – ${fmt(arm.upper, 4)}`);
    cell(row, arm.battles);
  }
  if (!board.arms.length) cell(body.insertRow(), 'no arena battles yet');
}

$('rollout-pause').addEventListener('click', () => rolloutAction({action: 'pause'}, 'Pause the rollout?'));
$('rollout-resume').addEventListener('click', () => rolloutAction({action: 'resume'}, 'Resume the rollout?'));
$('rollout-promote').addEventListener('click', () =>
  rolloutAction({action: 'promote'}, 'Promote the canary to stable at 100 %?'));
$('rollout-abort').addEventListener('click', () =>
  rolloutAction({action: 'abort'}, 'Abort: every arm but the stable one to 0 %?'));

// ---- refresh -----------------------------------------------------------------------------

let ticks = 0;

async function refresh() {
  if (state.busy || !state.token) return;
  state.busy = true;
  try {
    const stats = await api(`/api/stats?window=${$('window').value}`);
    state.lastStats = stats;
    renderTotals(stats);
    drawCharts(stats);
    renderInstances(stats);
    renderGroups(stats);
    if (ticks++ % 2 === 0) {
      renderRollout(await api('/api/rollout'));
      renderLeaderboard(await api('/api/arena'));
      renderAudit(await api('/api/audit'));
      if (!editsPending()) renderKnobs(await api('/api/knobs'));
    }
    text($('updated'), `updated ${new Date().toLocaleTimeString()}`);
    show($('problem'), false);
  } catch (e) {
    if (e.status === 401) signOut('The token is no longer accepted; sign in again.');
    else {
      text($('problem'), `Cannot read the figures: ${e.message}`);
      show($('problem'), true);
    }
  } finally {
    state.busy = false;
  }
}

$('window').addEventListener('change', () => {
  for (const u of Object.values(state.charts)) u.destroy();
  for (const id of Object.keys(CHARTS)) $(id).querySelectorAll('.uplot').forEach((n) => n.remove());
  state.charts = {};
  refresh();
});

if (state.token) signIn();
else signOut('');
