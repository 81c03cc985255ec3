// Shared helpers of the console pages. Everything shown comes from the
// API and is put into the page as text (textContent), never as HTML.

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-')) e.setAttribute(k, String(v));
    else if (k in e && typeof v !== 'string') e[k] = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** GET a JSON document of the API; throws with the server's error text. */
export async function getJSON(path) {
  const r = await fetch(path, { cache: 'no-store' });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error) || `${path}: HTTP ${r.status}`);
  return body;
}

/** The API token this browser tab was given (servers with http.token_file). */
const TOKEN_KEY = 'speeddata-api-token';
export function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

/** A write request to the API, with the token if one was given; resolves
 *  to the Response. */
export function send(method, path, body) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

/** POST to the API; resolves to the answer's JSON, throws with its error. */
export async function post(path) {
  const r = await send('POST', path);
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error) || `${path}: HTTP ${r.status}`);
  return body;
}

/** Where the server wants a token for writes: a field for it (kept for
 *  this tab only), else nothing. */
export function tokenControl(info) {
  if (info.auth !== 'token') return null;
  const input = el('input', { type: 'password', id: 'api-token', placeholder: 'API token', autocomplete: 'off', size: 18 });
  input.value = token();
  input.addEventListener('change', () => sessionStorage.setItem(TOKEN_KEY, input.value.trim()));
  return el('label', { class: 'small muted', title: 'Write requests (restart, add, remove) need the API token (http.token_file)' }, 'token ', input);
}

const intFmt = new Intl.NumberFormat('en-US');

/** 1234567 -> "1,234,567"; missing -> "–". */
export function count(n) {
  return typeof n === 'number' ? intFmt.format(n) : '–';
}

/** A rate a second, short: 0, 0.5, 12, 1,234, 12.3k, 4.56M. */
export function rate(n) {
  if (typeof n !== 'number') return '–';
  const a = Math.abs(n);
  if (a >= 1e6) return (n / 1e6).toFixed(2) + 'M';
  if (a >= 1e5) return (n / 1e3).toFixed(1) + 'k';
  if (a >= 100 || n === Math.round(n)) return intFmt.format(Math.round(n));
  return n.toFixed(1);
}

/** Bytes, binary units. */
export function bytes(n) {
  if (typeof n !== 'number') return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n >= 100 ? 0 : 1)) + ' ' + units[i];
}

/** Seconds as "3d 4h", "2h 05m", "4m 07s", "12.3s". */
export function duration(s) {
  if (typeof s !== 'number') return '–';
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + 's';
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  const two = (x) => String(x).padStart(2, '0');
  if (d > 0) return `${d}d ${h % 24}h`;
  if (h > 0) return `${h}h ${two(m % 60)}m`;
  return `${m}m ${two(Math.floor(s % 60))}s`;
}

/** An RFC 3339 time as local wall-clock time, with the date if not today. */
export function clock(t) {
  if (!t) return '–';
  const d = t instanceof Date ? t : new Date(t);
  if (isNaN(d)) return String(t);
  const time = d.toLocaleTimeString([], { hour12: false });
  return d.toDateString() === new Date().toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

/** The word shown for a channel's state; a channel killed for not
 *  reporting reads "hung" while it waits to be restarted. */
export function stateWord(c) {
  if (c.state === 'backoff' && c.last_exit && /stopped reporting/.test(c.last_exit.description)) {
    return 'hung';
  }
  return c.state;
}

/** "bad" (failed, hung, archive trouble), "warn" (starting, backoff, a
 *  config error) or "" for a row. */
export function severity(c) {
  const word = stateWord(c);
  const k = c.counters;
  if (word === 'failed' || word === 'hung') return 'bad';
  if (k && (!k.archive_healthy || c.rates?.archive_dropped_per_s > 0)) return 'bad';
  if (word !== 'ready' && word !== 'stopped') return 'warn';
  if (c.config_error) return 'warn';
  return '';
}

/** A state badge. */
export function badge(c) {
  const word = stateWord(c);
  return el('span', { class: `state ${word}`, 'data-state': c.state, text: word });
}

/** The archive's health in words, and whether it is bad. */
export function archiveHealth(c) {
  const k = c.counters;
  if (!k) return { text: '–', bad: false };
  if (!k.archive_healthy) return { text: 'cannot write', bad: true };
  if (c.rates && c.rates.archive_dropped_per_s > 0) return { text: 'dropping', bad: true };
  if (k.archive_errors > 0) return { text: `ok (${count(k.archive_errors)} errors)`, bad: false };
  return { text: 'ok', bad: false };
}

/** The server's info: version, and whether writes (restart) are allowed. */
let infoPromise;
export function serverInfo() {
  infoPromise ??= getJSON('/api/v1/info').catch(() => ({ writes: false, writes_refused: 'the API did not answer' }));
  return infoPromise;
}

/**
 * Calls `refresh` now, every `everyMs`, and soon after each lifecycle
 * event of the event stream `eventsUrl`; shows the connection's state in
 * `connEl`. The returned object's `onEvent(f)` gets every event.
 */
export function keepFresh(refresh, connEl, eventsUrl = '/api/v1/events', everyMs = 1000) {
  let timer = null;
  const soon = () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; refresh(); }, 30);
  };
  const events = new EventSource(eventsUrl);
  const kinds = ['started', 'ready', 'hung', 'exited', 'restarting', 'failed', 'stopped', 'reloaded', 'config_error', 'lagged'];
  for (const k of kinds) events.addEventListener(k, (e) => { soon(); onEvent(k, e); });
  events.onopen = () => { connEl.textContent = 'live'; connEl.className = 'conn on'; soon(); };
  events.onerror = () => { connEl.textContent = 'reconnecting…'; connEl.className = 'conn off'; };
  setInterval(refresh, everyMs);
  refresh();
  const listeners = [];
  function onEvent(kind, e) {
    let data = null;
    try { data = JSON.parse(e.data); } catch { /* a keep-alive */ }
    for (const l of listeners) l(kind, data);
  }
  return { onEvent: (l) => listeners.push(l) };
}
