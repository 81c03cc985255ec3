// Holds on the console: "keep" the last minutes (or a range) of one
// channel or of every channel past retention, list the holds with what they
// keep, delete one. Through /api/v1/holds.
import { el, getJSON, send, bytes, clock } from '/assets/common.js';

const two = (n) => String(n).padStart(2, '0');
function stamp(d) {
  return `${d.getUTCFullYear()}${two(d.getUTCMonth() + 1)}${two(d.getUTCDate())}-${two(d.getUTCHours())}${two(d.getUTCMinutes())}${two(d.getUTCSeconds())}`;
}

/** Makes a hold; resolves to the API's answer, throws with its error. */
async function makeHold(channel, from, to, note) {
  const body = {
    name: `keep-${channel || 'all'}-${stamp(new Date())}`,
    from: from.toISOString(),
    to: to.toISOString(),
  };
  if (channel) body.channels = [channel];
  if (note) body.note = note;
  const r = await send('POST', '/api/v1/holds', body);
  const answer = await r.json().catch(() => ({}));
  if (r.status !== 201) throw new Error(answer.error || `HTTP ${r.status}`);
  return answer;
}

/**
 * The holds section: keep buttons (for `channel`, or every channel when
 * null) and the list of holds (those covering `channel`, or all).
 * `writes`: whether this server takes write requests.
 */
export function holdsSection(channel, writes) {
  const status = el('span', { id: 'hold-status', class: 'small muted' });
  const body = el('tbody', { id: 'holds' });
  const fromIn = el('input', { type: 'datetime-local', id: 'hold-from', step: 1 });
  const toIn = el('input', { type: 'datetime-local', id: 'hold-to', step: 1 });
  const note = el('input', { type: 'text', id: 'hold-note', placeholder: 'note (why)', size: 24 });

  async function keep(from, to) {
    status.textContent = 'keeping…';
    try {
      const h = await makeHold(channel, from, to, note.value.trim());
      const files = h.channels.reduce((n, c) => n + c.files.length, 0);
      status.textContent = `kept as ${h.hold.name}: ${files} file(s) now, ${bytes(h.bytes)}`;
      refresh();
    } catch (e) {
      status.textContent = `not kept: ${e.message}`;
    }
  }
  const minutes = (m) => el('button', {
    class: 'keep', 'data-minutes': m, disabled: !writes, text: `last ${m} min`,
    onclick: () => keep(new Date(Date.now() - m * 60000), new Date()),
  });
  const range = el('button', {
    class: 'keep-range', disabled: !writes, text: 'keep range',
    onclick: () => {
      if (!fromIn.value || !toIn.value) { status.textContent = 'pick both ends of the range'; return; }
      keep(new Date(fromIn.value), new Date(toIn.value));
    },
  });

  async function refresh() {
    let list;
    try {
      list = (await getJSON('/api/v1/holds')).holds;
    } catch (e) {
      status.textContent = e.message;
      return;
    }
    if (channel) list = list.filter((h) => !h.hold.channels || h.hold.channels.includes(channel));
    if (!list.length) {
      body.replaceChildren(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'no holds' })));
      return;
    }
    body.replaceChildren(...list.map((h) => {
      const files = h.channels.reduce((n, c) => n + c.files.length, 0);
      return el('tr', { 'data-hold': h.hold.name },
        el('td', { class: 'mono', text: h.hold.name }),
        el('td', { text: `${clock(h.hold.from)} – ${clock(h.hold.to)}` }),
        el('td', { text: h.hold.channels ? h.hold.channels.join(', ') : 'every channel' }),
        el('td', { class: 'num', text: String(files) }),
        el('td', { class: 'num', 'data-bytes': h.bytes, text: bytes(h.bytes) }),
        el('td', { class: 'small' }, h.hold.note || '', h.hold.created_by ? el('span', { class: 'muted', text: ` (${h.hold.created_by})` }) : ''),
        el('td', {}, el('button', {
          class: 'hold-delete', disabled: !writes, text: 'Delete',
          onclick: async () => {
            if (!window.confirm(`Delete hold ${h.hold.name}? Its files go at the next retention pass that finds them past retention.`)) return;
            const r = await send('DELETE', `/api/v1/holds/${encodeURIComponent(h.hold.name)}`);
            status.textContent = r.status === 204 ? `deleted ${h.hold.name}` : `not deleted: HTTP ${r.status}`;
            refresh();
          },
        })));
    }));
  }
  refresh();
  setInterval(refresh, 5000);

  return el('section', { id: 'holds-section' },
    el('h2', { text: channel ? `Holds: keep ${channel}'s data past retention` : 'Holds: keep data past retention' }),
    el('div', { class: 'live-controls' },
      el('span', { class: 'small', text: channel ? 'Keep this channel:' : 'Keep every channel:' }),
      minutes(5), minutes(15), minutes(60),
      el('span', { class: 'small muted', text: 'or from' }), fromIn, el('span', { class: 'small muted', text: 'to' }), toIn, range,
      note, status),
    el('div', { class: 'panel table-wrap' },
      el('table', {},
        el('thead', {}, el('tr', {},
          el('th', { text: 'Hold' }), el('th', { text: 'Range' }), el('th', { text: 'Channels' }),
          el('th', { class: 'num', text: 'Files' }), el('th', { class: 'num', text: 'Size' }), el('th', { text: 'Note' }), el('th', {}))),
        body)));
}
