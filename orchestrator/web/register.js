// Adding, replacing and removing channels from the console, through the
// registration API (PUT/DELETE /api/v1/channels/{name}): the API writes the
// files of channels.d, which stays the source of truth. Problems are shown
// before anything is written (a dry run), each as file: key: message.
import { el, send } from '/assets/common.js';

/** Reads a file the user picked into a textarea. */
function loadInto(textarea) {
  return (e) => {
    const f = e.target.files[0];
    if (f) f.text().then((t) => { textarea.value = t; });
  };
}

/**
 * A form to add a channel (no `name`) or replace channel `name`, with the
 * channel file's text and schema prefilled if given. `onSaved(status)`
 * runs after a successful save.
 */
export function registrationForm({ name = '', channel = '', schema = '', onSaved, onCancel }) {
  const nameInput = el('input', { id: 'reg-name', value: name, placeholder: 'channel name', required: true, pattern: '[a-z0-9_\\-]{1,64}', readOnly: !!name });
  const toml = el('textarea', { id: 'reg-channel', rows: 14, spellcheck: 'false', placeholder: '[receive]\nbind = "127.0.0.1:26010"\n\n[archive]\ncodec = "zstd"' });
  toml.value = channel;
  const avsc = el('textarea', { id: 'reg-schema', rows: 14, spellcheck: 'false', placeholder: '{"type": "record", "name": "Sample", "fields": [...]}' });
  avsc.value = schema;
  const result = el('div', { id: 'reg-result', class: 'small' });
  const saveBtn = el('button', { id: 'reg-save', type: 'submit', text: name ? 'Check and replace' : 'Check and add' });
  const checkBtn = el('button', { id: 'reg-check', type: 'button', text: 'Check only' });

  function show(kind, text, problems = []) {
    result.className = `small banner ${kind}`;
    result.replaceChildren(el('div', { text }),
      problems.length ? el('ul', { id: 'reg-problems' }, problems.map((p) =>
        el('li', {}, el('code', { text: p.file.split('/').pop() }), ': ', el('code', { text: p.key || '(file)' }), ': ', p.message))) : '');
  }

  async function submit(dryRun) {
    const n = nameInput.value.trim();
    let schemaJson;
    try {
      schemaJson = JSON.parse(avsc.value);
    } catch (e) {
      show('bad', `The schema is not JSON: ${e.message}`);
      return;
    }
    saveBtn.disabled = checkBtn.disabled = true;
    show('warn', dryRun ? 'Checking…' : 'Checking and writing; waiting for the channel to start…');
    try {
      const r = await send('PUT', `/api/v1/channels/${encodeURIComponent(n)}?${dryRun ? 'dry_run=true' : 'wait=ready'}`,
        { channel: toml.value, schema: schemaJson });
      const body = await r.json().catch(() => ({}));
      if (r.status === 422 || r.status === 409) {
        show('bad', r.status === 409 ? 'It conflicts with another channel; nothing was written:' : 'Problems; nothing was written:', body.problems || []);
      } else if (!r.ok) {
        show('bad', body.error || `HTTP ${r.status}`);
      } else if (dryRun) {
        show('ok', 'No problems: saving would write it.');
      } else {
        show('ok', `${r.status === 201 ? 'Added' : 'Replaced'} channel ${n}: ${body.state}.`);
        onSaved?.(body);
      }
    } catch (e) {
      show('bad', e.message);
    } finally {
      saveBtn.disabled = checkBtn.disabled = false;
    }
  }

  checkBtn.addEventListener('click', () => submit(true));
  const form = el('form', { id: 'reg-form', class: 'panel pad reg-form' },
    el('h2', { text: name ? `Replace channel ${name}` : 'Add a channel' }),
    el('p', { class: 'small muted', text: 'Written into channels.d as {name}.toml and {name}.avsc once every check passes (the same checks as `orchestrator check`). A `schema` key is not needed: it is set to {name}.avsc.' }),
    el('label', {}, 'Name ', nameInput),
    el('div', { class: 'reg-grid' },
      el('div', {}, el('div', { class: 'small' }, 'Channel file (TOML) ', el('input', { type: 'file', accept: '.toml,text/plain', onchange: loadInto(toml) })), toml),
      el('div', {}, el('div', { class: 'small' }, 'Schema (Avro, JSON) ', el('input', { type: 'file', accept: '.avsc,.json,application/json', onchange: loadInto(avsc) })), avsc)),
    el('div', { class: 'reg-actions' }, saveBtn, checkBtn,
      el('button', { type: 'button', text: 'Cancel', onclick: () => onCancel?.() })),
    result);
  form.addEventListener('submit', (e) => { e.preventDefault(); submit(false); });
  return form;
}

/** Asks, then removes channel `name`; resolves true once it is removed. */
export async function removeChannel(name) {
  if (!window.confirm(`Remove channel ${name}? Its file goes from channels.d and it stops; its archive is kept.`)) return false;
  const r = await send('DELETE', `/api/v1/channels/${encodeURIComponent(name)}`);
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error(body.error || `HTTP ${r.status}`);
  }
  return true;
}
