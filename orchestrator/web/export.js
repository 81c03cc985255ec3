// Exports on the console: a channel's signals (the channel page) or
// several channels (the fleet page) over a range, as HDF5, Parquet, Arrow
// or CSV, through GET /api/v1/pivot/export. The file is fetched (with the
// API token when one was given, which a plain link could not send) and
// handed to the browser as a download; the API's errors are shown beside
// the form.
import { el, send, count, bytes } from '/assets/common.js';

/** The range presets: label and the `last` parameter (ISO 8601). */
const PRESETS = [
  ['last 30 s', 'PT30S'],
  ['last 5 min', 'PT5M'],
  ['last 1 h', 'PT1H'],
  ['last 24 h', 'PT24H'],
];
const FORMATS = [['hdf5', 'HDF5'], ['parquet', 'Parquet'], ['arrow', 'Arrow IPC'], ['csv', 'CSV']];

/**
 * The signals of a channel's schema that an export can name: its
 * top-level fields and, through nested records (inline or named), their
 * dotted sub-fields, in the schema's order; `{ path, type }` each.
 */
export function signalPaths(schema) {
  const named = new Map();
  const fullName = (name, ns) => (name.includes('.') || !ns ? name : `${ns}.${name}`);
  // Every named type, wherever it is defined (a record may be defined
  // inside a union or an array and used by name later).
  const collect = (t, ns, depth) => {
    if (depth > 64 || t == null || typeof t !== 'object') return;
    if (Array.isArray(t)) { t.forEach((b) => collect(b, ns, depth + 1)); return; }
    const space = t.namespace ?? ns;
    if (t.name && ['record', 'error', 'enum', 'fixed'].includes(t.type)) {
      const full = fullName(t.name, space);
      named.set(full, t);
      const inner = full.includes('.') ? full.slice(0, full.lastIndexOf('.')) : '';
      for (const f of t.fields || []) collect(f.type, inner, depth + 1);
      return;
    }
    collect(t.items, space, depth + 1);
    collect(t.values, space, depth + 1);
    if (typeof t.type === 'object') collect(t.type, space, depth + 1);
  };
  collect(schema, '', 0);
  const resolve = (t, ns) => {
    if (typeof t === 'string') return named.get(fullName(t, ns)) || named.get(t) || t;
    if (t && typeof t === 'object' && !Array.isArray(t) && typeof t.type === 'object') return resolve(t.type, ns);
    return t;
  };
  const label = (t) => {
    if (typeof t === 'string') return t;
    if (Array.isArray(t)) return t.map(label).join(' | ');
    if (t && typeof t === 'object') return t.logicalType ? `${t.type} (${t.logicalType})` : (t.name || t.type);
    return '';
  };
  const out = [];
  const walk = (record, prefix, ns, open) => {
    const space = record.namespace ?? ns;
    const full = record.name ? fullName(record.name, space) : '';
    const inner = full.includes('.') ? full.slice(0, full.lastIndexOf('.')) : space;
    for (const f of record.fields || []) {
      const path = prefix + f.name;
      const t = resolve(f.type, inner);
      const recordName = t && typeof t === 'object' && t.name ? fullName(t.name, t.namespace ?? inner) : null;
      if (t && typeof t === 'object' && (t.type === 'record' || t.type === 'error') && !open.includes(recordName)) {
        walk(t, `${path}.`, inner, [...open, recordName]);
      } else {
        out.push({ path, type: label(f.type) });
      }
    }
  };
  const root = resolve(schema, '');
  if (root && typeof root === 'object' && root.type === 'record') {
    walk(root, '', '', [root.name ? fullName(root.name, root.namespace ?? '') : '']);
  }
  return out;
}

/** The file name of a Content-Disposition header, or null. */
function fileName(disposition) {
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition || '');
  return m ? decodeURIComponent(m[1]) : null;
}

/**
 * A group of checkboxes with an "all" toggle ahead of them: `items`
 * `{ value, label, title }`, `dataKey` the attribute each box carries its
 * value in. `onChange` runs after any change.
 */
function checkList(id, dataKey, onChange) {
  const box = el('div', { id, class: 'export-checks' });
  const all = el('input', { type: 'checkbox', 'data-all': '' });
  let items = [];
  const boxes = () => [...box.querySelectorAll(`input[${dataKey}]`)];
  function sync() {
    const b = boxes();
    const n = b.filter((x) => x.checked).length;
    all.checked = b.length > 0 && n === b.length;
    all.indeterminate = n > 0 && n < b.length;
    onChange?.();
  }
  all.addEventListener('change', () => {
    for (const x of boxes()) x.checked = all.checked;
    sync();
  });
  return {
    node: box,
    /** Shows `list`, keeping what was checked; new items get `checked`. */
    set(list, checked) {
      const was = new Map(boxes().map((x) => [x.getAttribute(dataKey), x.checked]));
      if (items.length === list.length && items.every((it, i) => it.value === list[i].value)) return;
      items = list;
      box.replaceChildren(
        el('label', { class: 'all' }, all, ' all'),
        ...list.map((it) => el('label', { title: it.title },
          el('input', { type: 'checkbox', [dataKey]: it.value, checked: was.has(it.value) ? was.get(it.value) : checked, onchange: sync }),
          ' ', it.label)));
      sync();
    },
    /** The values checked, and whether every one is. */
    chosen() {
      const b = boxes();
      const on = b.filter((x) => x.checked).map((x) => x.getAttribute(dataKey));
      return { values: on, all: b.length > 0 && on.length === b.length };
    },
  };
}

/**
 * The export form. `channel`: the channel page's channel (signals are
 * chosen from its schema: `setSchema`); null for the fleet page (channels
 * are chosen: `setChannels`, and every signal comes).
 */
function exportForm(channel) {
  const prefix = channel ? 'export' : 'fleet-export';
  const status = el('span', { id: `${prefix}-status`, class: 'small muted', role: 'status' });
  const error = el('div', { id: `${prefix}-error`, class: 'small banner bad export-error hidden', role: 'alert' });
  const fromIn = el('input', { type: 'datetime-local', id: `${prefix}-from`, step: 1, 'data-field': 'start' });
  const toIn = el('input', { type: 'datetime-local', id: `${prefix}-to`, step: 1, 'data-field': 'end' });
  const format = el('select', { id: `${prefix}-format`, 'data-field': 'format' },
    FORMATS.map(([v, l]) => el('option', { value: v, text: l })));
  const button = el('button', { id: `${prefix}-download`, class: 'primary', type: 'button', text: 'Download' });

  // The range: a preset (`last`), or from and to.
  let last = 'PT5M';
  const presets = PRESETS.map(([text, iso]) => el('button', {
    type: 'button', class: 'preset', 'data-last': iso, text,
    onclick: () => { last = iso; showRange(); },
  }));
  const presetBox = el('span', { class: 'presets', 'data-field': 'last' }, presets);
  const custom = () => { last = null; showRange(); };
  fromIn.addEventListener('input', custom);
  toIn.addEventListener('input', custom);
  fromIn.addEventListener('focus', custom);
  toIn.addEventListener('focus', custom);
  const customBox = el('span', { class: 'custom' },
    el('span', { class: 'small muted', text: 'or from' }), fromIn, el('span', { class: 'small muted', text: 'to' }), toIn);
  function showRange() {
    for (const b of presets) {
      const on = b.dataset.last === last;
      b.classList.toggle('on', on);
      b.setAttribute('aria-pressed', String(on));
    }
    customBox.classList.toggle('on', last == null);
  }
  showRange();

  const picks = channel
    ? checkList(`${prefix}-signals`, 'data-signal')
    : checkList(`${prefix}-channels`, 'data-channel');
  picks.node.dataset.field = channel ? 'signals' : 'channels';

  function clearError() {
    error.classList.add('hidden');
    error.replaceChildren();
    for (const x of form.querySelectorAll('.invalid')) x.classList.remove('invalid');
  }
  /** Shows an error (the API's, or the form's own) and marks its field. */
  function showError(message, field) {
    status.textContent = '';
    error.replaceChildren(field ? el('strong', { text: `${field}: ` }) : '', message);
    error.dataset.field = field || '';
    error.classList.remove('hidden');
    const target = { start: fromIn, end: toIn, duration: toIn, last: presetBox, format, signals: picks.node, channels: picks.node }[field];
    target?.classList.add('invalid');
  }

  /** The query, or null after showing why there is none. */
  function query() {
    const q = new URLSearchParams();
    const chosen = picks.chosen();
    if (channel) {
      q.set('channels', channel);
      if (!chosen.values.length) { showError('choose at least one signal (the time column always comes)', 'signals'); return null; }
      if (!chosen.all) q.set('signals', chosen.values.join(','));
    } else {
      // None chosen: the API says so.
      q.set('channels', chosen.values.join(','));
    }
    if (last) {
      q.set('last', last);
    } else {
      if (!fromIn.value || !toIn.value) { showError('pick both ends of the range', !fromIn.value ? 'start' : 'end'); return null; }
      const from = new Date(fromIn.value), to = new Date(toIn.value);
      if (isNaN(from) || isNaN(to)) { showError('not a time', isNaN(from) ? 'start' : 'end'); return null; }
      q.set('start', from.toISOString());
      q.set('end', to.toISOString());
    }
    q.set('format', format.value);
    return q;
  }

  async function download() {
    clearError();
    const q = query();
    if (!q) return;
    button.disabled = true;
    status.className = 'small muted';
    delete status.dataset.bytes;
    delete status.dataset.file;
    status.textContent = 'exporting…';
    try {
      const r = await send('GET', `/api/v1/pivot/export?${q}`);
      if (!r.ok) {
        const body = await r.json().catch(() => null);
        showError((body && body.error) || `HTTP ${r.status}`, body && body.field);
        return;
      }
      // Read as it comes, to show how far it got.
      const parts = [];
      let got = 0;
      const reader = r.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parts.push(value);
        got += value.length;
        status.textContent = `exporting… ${bytes(got)}`;
      }
      const type = r.headers.get('Content-Type') || 'application/octet-stream';
      const blob = new Blob(parts, { type });
      const name = fileName(r.headers.get('Content-Disposition')) || `export.${format.value}`;
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: name, class: 'hidden' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      const empty = (r.headers.get('X-Export-Empty-Channels') || '').split(',').filter(Boolean);
      status.className = 'small';
      status.dataset.bytes = String(blob.size);
      status.dataset.file = name;
      status.replaceChildren(`downloaded ${name} (${count(blob.size)} bytes)`,
        empty.length ? el('span', { class: 'muted', text: ` · no data in the range: ${empty.join(', ')}` }) : '');
    } catch (e) {
      showError(`the export failed: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }
  button.addEventListener('click', download);

  const row = (label, ...controls) => el('div', { class: 'export-row' },
    el('span', { class: 'export-label small', text: label }), el('div', { class: 'export-controls' }, ...controls));
  const form = el('div', { class: 'panel pad export-form' },
    row('Range', presetBox, customBox),
    row(channel ? 'Signals' : 'Channels', picks.node,
      channel ? el('span', { class: 'small muted', text: 'the time column always comes' })
        : el('span', { class: 'small muted', text: 'every signal of each' })),
    row('Format', format, button, status),
    error);
  return { form, picks };
}

/** The channel page's export section; `setSchema(schema)` fills its
 *  signals (all checked at first). */
export function channelExport(channel) {
  const { form, picks } = exportForm(channel);
  const node = el('section', { id: 'export-section' },
    el('h2', {}, `Export: ${channel}'s data as a file `,
      el('span', { class: 'muted small', text: '· HDF5, Parquet, Arrow or CSV' })),
    form);
  return {
    node,
    setSchema(schema) {
      picks.set(signalPaths(schema).map((s) => ({ value: s.path, label: s.path, title: s.type })), true);
    },
  };
}

/** The fleet page's export section; `setChannels(names)` keeps its
 *  checkboxes up to date (none checked at first). */
export function fleetExport() {
  const { form, picks } = exportForm(null);
  const node = el('section', { id: 'fleet-export-section' },
    el('h2', {}, 'Export: channels as files ',
      el('span', { class: 'muted small', text: '· several channels come as one zip (HDF5: one file)' })),
    form);
  return {
    node,
    setChannels(names) {
      picks.set(names.map((n) => ({ value: n, label: n })), false);
    },
  };
}
