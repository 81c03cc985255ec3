// A channel's page: status and counters (refreshed every second and on
// each lifecycle event), its last closed archive files, its schema, strip
// charts of its numeric fields from the live WebSocket, and an export of
// its archive.
import {
  el, getJSON, post, count, rate, bytes, duration, clock, badge, archiveHealth, serverInfo, keepFresh, tokenControl,
} from '/assets/common.js';
import { registrationForm, removeChannel } from '/assets/register.js';
import { holdsSection } from '/assets/holds.js';
import { channelExport } from '/assets/export.js';
import { Series, StripChart } from '/assets/stripchart.js';

const name = decodeURIComponent(location.pathname.split('/')[2] || '');
const enc = encodeURIComponent(name);
const $ = (id) => document.getElementById(id);
document.title = `speeddata-relay · ${name}`;
$('name').textContent = name;

/** Points kept per charted field: 10 minutes at the default 100 records/s. */
const CAPACITY = 65536;
/** At most this many charts at once. */
const MAX_CHARTS = 12;
const NUMERIC = ['int', 'long', 'float', 'double'];

let status = null;
let writes = false;
const exporter = channelExport(name);
$('export-here').replaceChildren(exporter.node);

// ---- status, counters, files ------------------------------------------

async function refresh() {
  try {
    status = await getJSON(`/api/v1/channels/${enc}`);
    $('error').classList.add('hidden');
  } catch (e) {
    $('error').textContent = e.message;
    $('error').classList.remove('hidden');
    return;
  }
  const c = status;
  $('badge').replaceChildren(badge(c));
  $('proc').textContent = [
    c.pid ? `pid ${c.pid}` : null,
    c.uptime_s != null ? `up ${duration(c.uptime_s)}` : null,
    `${count(c.restarts)} restart${c.restarts === 1 ? '' : 's'}`,
  ].filter(Boolean).join(' · ');
  $('restart').disabled = $('edit').disabled = $('remove').disabled = !writes;
  showDecimation(c.decimation);
  showProblems(c);
  showCounters(c);
  showFiles(c.archive_files || []);
  $('schema-file').textContent = `channel file ${c.file}`;
}

function showProblems(c) {
  const out = [];
  if (c.config_error) out.push(el('div', { class: 'banner warn wrap' }, el('strong', { text: 'Config error: ' }), c.config_error));
  if (c.reason && c.state !== 'ready') out.push(el('div', { class: 'banner bad wrap' }, el('strong', { text: `${c.state}: ` }), c.reason));
  if (c.last_exit) {
    out.push(el('div', { class: 'small muted' }, `Last exit: ${c.last_exit.description} at ${clock(c.last_exit.at)}`));
  }
  if (c.last_stderr?.length && c.state !== 'ready') {
    out.push(el('details', { class: 'small' }, el('summary', { text: 'last stderr lines' }),
      el('pre', { class: 'wrap', text: c.last_stderr.join('\n') })));
  }
  $('problems').replaceChildren(...out);
}

const SKIP = new Set(['channel', 'rejected_by_reason', 'archive_healthy', 'joined', 'final']);
function showCounters(c) {
  const k = c.counters;
  $('reported').textContent = c.last_report_at ? `last report ${clock(c.last_report_at)}` : 'no report yet';
  if (!k) { $('cards').replaceChildren(el('span', { class: 'muted', text: 'no counters yet' })); return; }
  const health = archiveHealth(c);
  const cards = [el('div', { class: 'card' },
    el('div', { class: 'k', text: 'archive' }),
    el('div', { class: `v ${health.bad ? 'flag-bad' : 'flag-ok'}`, text: health.text }),
    el('div', { class: 'r', text: k.joined ? 'receiving' : 'waiting for the multicast join' }))];
  for (const [key, v] of Object.entries(k)) {
    if (SKIP.has(key) || typeof v !== 'number') continue;
    const r = c.rates?.[`${key}_per_s`];
    const bad = ['kernel_drops', 'archive_dropped', 'archive_errors', 'receive_errors', 'send_errors_full', 'send_errors_decimated', 'quarantine_dropped'].includes(key) && v > 0;
    cards.push(el('div', { class: 'card', 'data-counter': key },
      el('div', { class: 'k', text: key.replaceAll('_', ' ') }),
      el('div', { class: `v ${bad ? 'flag-bad' : ''}`, text: key.startsWith('bytes') ? bytes(v) : count(v) }),
      el('div', { class: 'r', text: r === undefined ? '' : `${key.startsWith('bytes') ? bytes(Math.round(r)) : rate(r)}/s` })));
  }
  $('cards').replaceChildren(...cards);
  const reasons = Object.entries(k.rejected_by_reason || {}).filter(([, n]) => n > 0);
  $('reasons').replaceChildren(...(reasons.length ? [
    el('p', {}, el('strong', { text: 'Rejected by reason: ' }),
      ...reasons.flatMap(([r, n], i) => [i ? ', ' : '', el('code', { text: r }), ` ${count(n)}`]))] : []));
}

function showFiles(files) {
  if (!files.length) return;
  $('files').replaceChildren(...files.map((f) => el('tr', {},
    el('td', { class: 'mono', text: f.path }),
    el('td', { class: 'num', text: count(f.records) }),
    el('td', { class: 'num', text: bytes(f.bytes) }),
    el('td', { text: clock(f.closed_at) }))));
}

function showDecimation(d) {
  if (!d) { $('decimation').textContent = '· this channel has no decimated output'; return; }
  const window = d.factor != null ? `1 window per ${count(d.factor)} records` : `${d.rate_hz} windows/s`;
  const keep = d.keep_last?.length ? `, last value of ${d.keep_last.join(', ')}` : '';
  $('decimation').textContent = `· decimated stream ${d.group}: ${d.algorithm}, ${window}${keep}`;
}

$('restart').addEventListener('click', async () => {
  const b = $('restart');
  b.disabled = true;
  b.textContent = 'Restarting…';
  try { await post(`/api/v1/channels/${enc}/restart`); } catch (e) {
    $('error').textContent = `Restart failed: ${e.message}`;
    $('error').classList.remove('hidden');
  }
  b.textContent = 'Restart';
  refresh();
});

$('edit').addEventListener('click', async () => {
  let cfg;
  try {
    cfg = await getJSON(`/api/v1/channels/${enc}/config`);
  } catch (e) {
    $('error').textContent = e.message;
    $('error').classList.remove('hidden');
    return;
  }
  $('register').replaceChildren(registrationForm({
    name,
    channel: cfg.channel,
    schema: cfg.schema == null ? '' : JSON.stringify(cfg.schema, null, 2),
    onSaved: () => { refresh(); loadSchema(); setTimeout(() => $('register').replaceChildren(), 1500); },
    onCancel: () => $('register').replaceChildren(),
  }));
});

$('remove').addEventListener('click', async () => {
  try {
    if (await removeChannel(name)) location.href = '/';
  } catch (e) {
    $('error').textContent = `Remove failed: ${e.message}`;
    $('error').classList.remove('hidden');
  }
});

// ---- schema -----------------------------------------------------------

let numericFields = [];

async function loadSchema() {
  let schema;
  try {
    schema = await getJSON(`/api/v1/channels/${enc}/schema`);
  } catch (e) {
    $('schema').textContent = e.message;
    return;
  }
  $('schema').textContent = JSON.stringify(schema, null, 2);
  exporter.setSchema(schema);
  numericFields = numericPaths(schema);
  if (!selected.length) {
    selected = numericFields.filter((f) => !f.logical).slice(0, 4).map((f) => f.path);
  }
  selected = selected.filter((p) => numericFields.some((f) => f.path === p));
  buildPicker();
  buildCharts();
}

/** The dotted paths of the schema's numeric fields (through nested
 *  records and unions with null), with their type and logical type. */
function numericPaths(schema) {
  const named = {};
  const out = [];
  const walk = (t, path, depth, ns) => {
    if (depth > 16 || t == null) return;
    if (typeof t === 'string') {
      if (NUMERIC.includes(t)) out.push({ path, type: t });
      else if (named[t] || named[`${ns}.${t}`]) walk(named[t] || named[`${ns}.${t}`], path, depth + 1, ns);
      return;
    }
    if (Array.isArray(t)) {
      const branches = t.filter((b) => b !== 'null');
      if (branches.length === 1) walk(branches[0], path, depth, ns);
      return;
    }
    if (typeof t !== 'object') return;
    const space = t.namespace ?? ns;
    if (t.name) {
      named[t.name] = t;
      named[t.name.includes('.') ? t.name : `${space}.${t.name}`] = t;
    }
    if (t.type === 'record' || t.type === 'error') {
      for (const f of t.fields || []) walk(f.type, path ? `${path}.${f.name}` : f.name, depth + 1, space);
    } else if (NUMERIC.includes(t.type) && t.logicalType !== 'decimal') {
      out.push({ path, type: t.type, logical: t.logicalType });
    }
  };
  walk(schema, '', 0, '');
  return out;
}

// ---- live data and charts ---------------------------------------------

const hash = new URLSearchParams(location.hash.slice(1));
let selected = hash.get('fields') ? hash.get('fields').split(',').filter(Boolean) : [];
let windowS = Number(hash.get('window')) || 60;
if (![10, 30, 60, 120, 300, 600].includes(windowS)) windowS = 60;
$('window').value = String(windowS);
let paused = null; // the time (ms) the view froze at, or null
const series = new Map(); // path -> Series
const charts = new Map(); // path -> { chart, canvas, latest, info }
let lastRecordAt = null;
let lastRecord = null;
let lastMessageAt = 0;
let records = 0;
let dropped = 0;
let dirty = true;

function saveHash() {
  const h = new URLSearchParams({ fields: selected.join(','), window: String(windowS) });
  history.replaceState(null, '', `#${h}`);
}

function buildPicker() {
  $('fields').replaceChildren(
    el('span', { class: 'muted', text: numericFields.length ? 'Chart:' : 'No numeric fields to chart.' }),
    ...numericFields.map((f) => el('label', { title: f.logical ? `${f.type} (${f.logical})` : f.type },
      el('input', {
        type: 'checkbox',
        'data-field': f.path,
        checked: selected.includes(f.path),
        onchange: (e) => {
          if (e.target.checked) {
            if (selected.length >= MAX_CHARTS) { e.target.checked = false; return; }
            selected.push(f.path);
          } else {
            selected = selected.filter((p) => p !== f.path);
          }
          saveHash();
          buildCharts();
        },
      }), ' ', f.path)));
}

function buildCharts() {
  for (const p of [...series.keys()]) if (!selected.includes(p)) series.delete(p);
  const order = numericFields.map((f) => f.path).filter((p) => selected.includes(p));
  const nodes = order.map((p, i) => {
    if (!series.has(p)) series.set(p, new Series(CAPACITY));
    let c = charts.get(p);
    if (!c) {
      const canvas = el('canvas', { 'data-field': p, 'data-points': 0 });
      c = {
        canvas,
        chart: new StripChart(canvas),
        latest: el('span', { class: 'latest mono' }),
        info: el('span', { class: 'muted small' }),
        node: null,
      };
      c.node = el('div', { class: 'chart' },
        el('div', { class: 'head' }, el('span', { class: 'name', text: p }), c.latest, el('span', { class: 'spacer' }), c.info),
        canvas);
      charts.set(p, c);
    }
    c.color = `--series-${(i % 6) + 1}`;
    return c.node;
  });
  for (const p of [...charts.keys()]) if (!selected.includes(p)) charts.delete(p);
  $('charts').replaceChildren(...nodes);
  dirty = true;
}

/** The value at a dotted path of a record, or undefined. */
function pick(record, path) {
  let v = record;
  for (const part of path.split('.')) {
    if (v == null || typeof v !== 'object') return undefined;
    v = v[part];
  }
  return v;
}

function onRecords(list) {
  const now = Date.now();
  // Records that came together are spread over the time since the last
  // message, at most a second.
  const span = Math.min(1000, Math.max(0, now - lastMessageAt));
  lastMessageAt = now;
  list.forEach((r, i) => {
    const t = now - (span * (list.length - 1 - i)) / list.length;
    for (const [p, s] of series) {
      const v = pick(r, p);
      const x = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : NaN;
      if (Number.isFinite(x)) s.push(t, x);
    }
  });
  records += list.length;
  lastRecord = list[list.length - 1];
  lastRecordAt = now;
  dirty = true;
}

let ws = null;
let retryMs = 1000;
let unwatchable = null;

function connect() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(`${proto}//${location.host}/api/v1/channels/${enc}/live`);
  ws.onopen = () => { retryMs = 1000; liveText(); };
  ws.onmessage = (m) => {
    let d;
    try { d = JSON.parse(m.data); } catch { return; }
    if (Array.isArray(d)) onRecords(d);
    else if (d && typeof d === 'object') {
      const keys = Object.keys(d);
      if (keys.length === 1 && keys[0] === 'error') { unwatchable = d.error; liveText(); }
      else if (keys.length === 1 && keys[0] === 'dropped') { dropped += d.dropped; }
      else onRecords([d]);
    }
  };
  ws.onclose = () => {
    ws = null;
    liveText();
    if (!unwatchable) {
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    }
  };
}

function liveText() {
  let text;
  if (unwatchable) text = unwatchable;
  else if (!ws || ws.readyState !== WebSocket.OPEN) text = 'live stream: reconnecting…';
  else text = `${count(records)} records received${dropped ? `, ${count(dropped)} dropped for this page` : ''}`;
  $('live-status').textContent = text;
}

function showLatest() {
  if (!lastRecord) return;
  const rows = [];
  const flat = (v, path) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      for (const [k, x] of Object.entries(v)) flat(x, path ? `${path}.${k}` : k);
    } else {
      const raw = typeof v === 'string' ? v : JSON.stringify(v);
      rows.push(el('tr', {},
        el('td', { class: 'mono', text: path }),
        el('td', { class: 'num', 'data-field': path, 'data-value': raw, text: raw })));
    }
  };
  flat(lastRecord, '');
  $('latest').replaceChildren(...rows);
}

function showStale() {
  const box = $('stale');
  const quiet = lastRecordAt == null ? null : Date.now() - lastRecordAt;
  if (unwatchable || quiet == null || quiet < 2000) {
    box.classList.add('hidden');
    return;
  }
  box.textContent = `Data stopped: the last record arrived at ${clock(new Date(lastRecordAt))} (${duration(quiet / 1000)} ago).`;
  box.classList.remove('hidden');
}

let lastDraw = 0;
function frame(ts) {
  requestAnimationFrame(frame);
  if (ts - lastDraw < 33 && !dirty) return; // ~30 frames a second
  lastDraw = ts;
  const tEnd = paused ?? Date.now();
  for (const [p, c] of charts) {
    const s = series.get(p);
    if (!s) continue;
    const color = getComputedStyle(document.documentElement).getPropertyValue(c.color).trim();
    const r = c.chart.draw(s, tEnd, windowS * 1000, color);
    c.canvas.dataset.points = String(r.points);
    const last = s.len ? s.v[s.at(s.len - 1)] : null;
    c.latest.textContent = last == null ? '' : String(last);
    c.info.textContent = r.points ? `${count(r.points)} points · min ${+r.min.toPrecision(6)} · max ${+r.max.toPrecision(6)}` : 'no points in the window';
  }
  if (dirty) { showLatest(); liveText(); }
  dirty = false;
}

// The status line and stale banner tick once a second even when no
// record comes.
setInterval(() => { showStale(); liveText(); }, 500);

$('window').addEventListener('change', (e) => {
  windowS = Number(e.target.value);
  saveHash();
  dirty = true;
});
$('pause').addEventListener('click', () => {
  paused = paused == null ? Date.now() : null;
  $('pause').textContent = paused == null ? 'Pause' : 'Resume';
  $('pause').classList.toggle('paused', paused != null);
  dirty = true;
});

serverInfo().then((info) => {
  writes = !!info.writes;
  $('restart').title = writes ? `Restart ${name} now` : info.writes_refused || 'writes are refused';
  const t = tokenControl(info);
  if (t) $('token').replaceChildren(t);
  $('holds-here').replaceChildren(holdsSection(name, writes));
  keepFresh(refresh, $('conn')).onEvent((kind, e) => {
    if (e && e.channel === name && kind === 'started') loadSchema();
  });
});
loadSchema().then(connect);
requestAnimationFrame(frame);
