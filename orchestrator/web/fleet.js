// The fleet page: one row per channel, refreshed every second and at once
// on each lifecycle event; an export of several channels.
import {
  el, getJSON, post, count, rate, duration, clock, badge, severity, archiveHealth, serverInfo, keepFresh, tokenControl,
} from '/assets/common.js';
import { registrationForm } from '/assets/register.js';
import { holdsSection } from '/assets/holds.js';
import { fleetExport } from '/assets/export.js';

const tbody = document.querySelector('#channels tbody');
const errorBox = document.getElementById('error');
let writes = false;
const exporter = fleetExport();
document.getElementById('export-here').replaceChildren(exporter.node);

async function refresh() {
  let list;
  try {
    list = (await getJSON('/api/v1/channels')).channels;
    errorBox.classList.add('hidden');
  } catch (e) {
    errorBox.textContent = `The orchestrator does not answer: ${e.message}`;
    errorBox.classList.remove('hidden');
    return;
  }
  document.getElementById('empty').classList.toggle('hidden', list.length > 0);
  exporter.setChannels(list.map((c) => c.name));
  const byState = {};
  for (const c of list) byState[c.state] = (byState[c.state] || 0) + 1;
  document.getElementById('summary').textContent = `${list.length} channel${list.length === 1 ? '' : 's'}: ` +
    (Object.entries(byState).map(([s, n]) => `${n} ${s}`).join(', ') || 'none');
  // Keep the rejection breakdowns a reader opened.
  const open = new Set([...tbody.querySelectorAll('tr')]
    .filter((tr) => tr.querySelector('details[open]')).map((tr) => tr.dataset.channel));
  tbody.replaceChildren(...list.map(row));
  for (const tr of tbody.querySelectorAll('tr')) {
    if (open.has(tr.dataset.channel)) tr.querySelector('details')?.setAttribute('open', '');
  }
}

function rejected(c) {
  const k = c.counters;
  if (!k) return '–';
  const reasons = Object.entries(k.rejected_by_reason || {}).filter(([, n]) => n > 0);
  if (reasons.length === 0) return count(k.rejected);
  const title = reasons.map(([r, n]) => `${r}: ${count(n)}`).join('\n');
  return el('details', { title },
    el('summary', { text: count(k.rejected) }),
    el('ul', {}, reasons.map(([r, n]) => el('li', {}, el('code', { text: r }), `: ${count(n)}`))));
}

function lastExit(c) {
  const parts = [];
  if (c.last_exit) {
    parts.push(el('div', { class: 'small' }, c.last_exit.description,
      el('span', { class: 'muted', text: ` · ${clock(c.last_exit.at)}` })));
  }
  if (c.reason && c.state !== 'ready' && !c.config_error) parts.push(el('div', { class: 'small flag-bad wrap', text: c.reason }));
  if (c.config_error) {
    parts.push(el('div', { class: 'small wrap' }, el('span', { class: 'flag-bad', text: 'config error: ' }), c.config_error));
  }
  return parts.length ? parts : el('span', { class: 'muted', text: '–' });
}

function row(c) {
  const k = c.counters;
  const health = archiveHealth(c);
  const restart = el('button', {
    class: 'restart',
    disabled: !writes,
    title: writes ? `Restart ${c.name} now` : 'Writes are refused by this server',
    text: 'Restart',
    onclick: async (ev) => {
      const b = ev.currentTarget;
      b.disabled = true;
      b.textContent = 'Restarting…';
      try {
        await post(`/api/v1/channels/${encodeURIComponent(c.name)}/restart`);
      } catch (e) {
        errorBox.textContent = `Restart of ${c.name} failed: ${e.message}`;
        errorBox.classList.remove('hidden');
      }
      refresh();
    },
  });
  return el('tr', { class: severity(c), 'data-channel': c.name, 'data-state': c.state, 'data-pid': c.pid ?? '' },
    el('td', {}, el('a', { href: `/channels/${encodeURIComponent(c.name)}`, text: c.name })),
    el('td', {}, badge(c)),
    el('td', { class: 'num', text: c.pid ?? '–' }),
    el('td', { class: 'num', text: duration(c.uptime_s) }),
    el('td', { class: 'num', 'data-restarts': c.restarts, text: count(c.restarts) }),
    el('td', { class: 'num', text: rate(c.rates?.received_per_s) }),
    el('td', { class: 'num', text: count(k?.archived) }),
    el('td', { class: 'num' }, rejected(c)),
    el('td', { class: `num ${k?.kernel_drops > 0 ? 'flag-bad' : ''}`, text: count(k?.kernel_drops) }),
    el('td', { class: health.bad ? 'flag-bad' : '', text: health.text }),
    el('td', {}, lastExit(c)),
    el('td', {}, restart));
}

const eventsList = document.getElementById('events');
function showEvent(kind, e) {
  if (!e || kind === 'lagged') return;
  const detail = Object.entries(e)
    .filter(([k]) => !['seq', 'time', 'event', 'channel'].includes(k))
    .map(([k, v]) => `${k}=${v && typeof v === 'object' ? (v.description ?? JSON.stringify(v)) : v}`)
    .join(' ');
  if (eventsList.firstElementChild?.classList.contains('muted')) eventsList.replaceChildren();
  eventsList.prepend(el('li', {},
    el('span', { class: 'muted', text: clock(e.time) + ' ' }),
    el('strong', { text: e.event }), ' ',
    e.channel ? el('a', { href: `/channels/${encodeURIComponent(e.channel)}`, text: e.channel }) : '',
    detail ? el('span', { class: 'muted', text: ' ' + detail }) : ''));
  while (eventsList.children.length > 30) eventsList.lastElementChild.remove();
}

function openForm() {
  const box = document.getElementById('register');
  box.replaceChildren(registrationForm({
    onSaved: (status) => { refresh(); setTimeout(() => box.replaceChildren(), 1500); return status; },
    onCancel: () => box.replaceChildren(),
  }));
  document.getElementById('reg-name').focus();
}

serverInfo().then((info) => {
  writes = !!info.writes;
  const add = document.getElementById('add');
  add.classList.toggle('hidden', !writes);
  add.addEventListener('click', openForm);
  const t = tokenControl(info);
  if (t) document.getElementById('token').replaceChildren(t);
  document.getElementById('holds-here').replaceChildren(holdsSection(null, writes));
  if (info.version) document.getElementById('version').textContent = `v${info.version}`;
  if (!writes && info.writes_refused) {
    const w = document.getElementById('writes');
    w.textContent = `Read-only: ${info.writes_refused}.`;
    w.classList.remove('hidden');
  }
  keepFresh(refresh, document.getElementById('conn'), '/api/v1/events?since=0').onEvent(showEvent);
});
