// The web console in a real browser: Debian's chromium, driven by
// playwright-core, against a running orchestrator that tests/tests/console.rs
// started. Exits 0 when every check passed; otherwise prints what failed
// and exits 1. Screenshots go to $CONSOLE_SCREENSHOTS on every run.
//
// Environment:
//   CONSOLE_BASE         http://127.0.0.1:PORT of the orchestrator
//   CONSOLE_LIVE         the channel with a decimated output (downsample)
//   CONSOLE_KILL         a channel whose relay this script kills with -9
//   CONSOLE_RECEIVE      the live channel's receive address (ip:port)
//   CONSOLE_LOADGEN      the loadgen binary (the sender of example records)
//   CONSOLE_SCREENSHOTS  where the screenshots go
//   CONSOLE_MARKER       text of the live channel's schema doc that holds HTML
//   CONSOLE_BROKEN       a channel whose file does not validate (optional)
//
// The exports downloaded from the pages are saved beside the screenshots.
//
// Network safety: the browser opens only the orchestrator on 127.0.0.1 (any
// other request fails the test and is refused); loadgen sends to a
// 127.0.0.1 address, bounded in count and time.

import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdirSync, readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BASE = env('CONSOLE_BASE');
const LIVE = env('CONSOLE_LIVE');
const KILL = env('CONSOLE_KILL');
const RECEIVE = env('CONSOLE_RECEIVE');
const LOADGEN = env('CONSOLE_LOADGEN');
const SHOTS = env('CONSOLE_SCREENSHOTS');
const MARKER = env('CONSOLE_MARKER');
/** A channel whose file does not validate (optional). */
const BROKEN = process.env.CONSOLE_BROKEN;
/** The example records' message: HTML that must be shown as text. */
const MESSAGE = '<img src="/xss-message" onerror="window.__xss=3">';
/** loadgen's first counter. */
const START = 1000;

mkdirSync(SHOTS, { recursive: true });

const failures = [];
function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
  return ok;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

// Every URL any page asks for; anything outside the orchestrator fails the
// test (and is refused, so nothing leaves this machine).
const foreign = [];
async function newContext(colorScheme) {
  const ctx = await browser.newContext({ colorScheme, viewport: { width: 1280, height: 900 } });
  await ctx.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(BASE + '/') || url.startsWith('data:')) return route.continue();
    foreign.push(url);
    return route.abort();
  });
  ctx.on('page', (page) => {
    page.on('websocket', (ws) => {
      const u = new URL(ws.url());
      if (`http://${u.host}` !== BASE) foreign.push(ws.url());
    });
    page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') console.log(`  browser console: ${m.text()}`); });
  });
  return ctx;
}

let loadgen = null;
let loadgenOut = '';
function startSender(seconds) {
  loadgen = spawn(LOADGEN, [
    '--to', RECEIVE, '--rate', '200', '--count', String(200 * seconds), '--duration', `${seconds}s`,
    '--start-counter', String(START), '--message', MESSAGE,
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  loadgen.stdout.on('data', (d) => { loadgenOut += d; });
  return new Promise((resolve) => loadgen.on('exit', resolve));
}

try {
  const light = await newContext('light');
  const page = await light.newPage();

  // ---- the fleet page ---------------------------------------------------
  await page.goto(BASE + '/');
  await page.waitForFunction(([a, b]) => {
    const state = (n) => document.querySelector(`#channels tbody tr[data-channel="${n}"]`)?.dataset.state;
    return state(a) === 'ready' && state(b) === 'ready';
  }, [LIVE, KILL], { timeout: 30000 });
  const names = await page.$$eval('#channels tbody tr', (rows) => rows.map((r) => r.dataset.channel));
  check(names.includes(LIVE) && names.includes(KILL), `the fleet page lists ${LIVE} and ${KILL} as ready (${names})`);
  if (BROKEN) {
    const broken = await page.$eval(`#channels tbody tr[data-channel="${BROKEN}"]`, (r) => ({ state: r.dataset.state, cls: r.className, text: r.textContent }));
    check(broken.state === 'failed' && broken.cls === 'bad', `the broken channel ${BROKEN} stands out as failed (${broken.state}, row class ${broken.cls})`);
    check(/config error/.test(broken.text), `its row shows its configuration error`);
  }

  // kill -9 of one relay: the page shows it leave `ready`, then come back
  // with a new pid and one more restart, without a reload.
  const row = (n) => `#channels tbody tr[data-channel="${n}"]`;
  const before = await page.$eval(row(KILL), (r) => ({ pid: Number(r.dataset.pid), restarts: Number(r.querySelector('[data-restarts]').dataset.restarts) }));
  check(before.pid > 0, `${KILL} shows its pid (${before.pid})`);
  const killedAt = Date.now();
  process.kill(before.pid, 'SIGKILL');
  await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.state !== 'ready', row(KILL), { timeout: 10000, polling: 20 });
  const seenAfter = Date.now() - killedAt;
  check(seenAfter < 2000, `the kill -9 shows on the page without a reload (${seenAfter} ms)`);
  const during = await page.$eval(row(KILL), (r) => ({ state: r.dataset.state, text: r.textContent }));
  check(['backoff', 'starting'].includes(during.state), `${KILL} reads ${during.state} while it restarts`);
  await page.waitForFunction(([sel, pid]) => {
    const r = document.querySelector(sel);
    return r && r.dataset.state === 'ready' && r.dataset.pid && Number(r.dataset.pid) !== pid;
  }, [row(KILL), before.pid], { timeout: 30000 });
  const after = await page.$eval(row(KILL), (r) => ({ pid: Number(r.dataset.pid), restarts: Number(r.querySelector('[data-restarts]').dataset.restarts), text: r.textContent }));
  check(after.restarts === before.restarts + 1, `${KILL} is back, restarts ${before.restarts} -> ${after.restarts}, pid ${before.pid} -> ${after.pid}`);
  check(after.text.includes('SIGKILL'), `its last exit says SIGKILL`);

  // The restart button restarts the channel.
  await page.click(`${row(KILL)} button.restart`);
  await page.waitForFunction(([sel, n]) => {
    const r = document.querySelector(sel);
    return r && r.dataset.state === 'ready' && Number(r.querySelector('[data-restarts]').dataset.restarts) === n;
  }, [row(KILL), after.restarts + 1], { timeout: 30000 });
  check(true, `the restart button restarted ${KILL} (restarts ${after.restarts + 1})`);

  // ---- the channel page -------------------------------------------------
  const sent = startSender(60);
  // Three datagrams that are not records: rejected, by reason.
  const sock = dgram.createSocket('udp4');
  const [host, port] = RECEIVE.split(':');
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve, reject) => sock.send(Buffer.from([0xff, 0xff, 0xff, 0xff]), Number(port), host, (e) => (e ? reject(e) : resolve())));
  }
  sock.close();
  const num = (sel) => page.$eval(sel, (td) => Number(td.textContent.replace(/,/g, '')));
  await page.waitForFunction((sel) => Number(document.querySelector(sel)?.textContent.replace(/,/g, '')) > 0,
    `${row(LIVE)} td:nth-child(6)`, { timeout: 15000 });
  check(await num(`${row(LIVE)} td:nth-child(6)`) > 0, `received/s of ${LIVE} shows its rate`);
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.startsWith('3'), `${row(LIVE)} td:nth-child(8) summary`, { timeout: 15000 });
  await page.click(`${row(LIVE)} td:nth-child(8) summary`);
  const reasons = await page.$eval(`${row(LIVE)} td:nth-child(8) details`, (d) => ({ open: d.open, text: d.textContent, title: d.title }));
  check(reasons.open && /: 3/.test(reasons.text) && reasons.title.includes(': 3'), `the 3 rejections are broken down by reason on expand and hover (${reasons.title})`);
  await sleep(1500); // the next refreshes keep the breakdown open
  check(await page.$eval(`${row(LIVE)} td:nth-child(8) details`, (d) => d.open), 'the breakdown stays open across refreshes');
  await page.screenshot({ path: `${SHOTS}/fleet.png` });

  await page.goto(`${BASE}/channels/${LIVE}`);
  const points = (f) => page.$eval(`canvas[data-field="${f}"]`, (c) => Number(c.dataset.points));
  await page.waitForSelector('canvas[data-field="ramp"]', { timeout: 15000 });
  await page.waitForFunction(() => Number(document.querySelector('canvas[data-field="ramp"]').dataset.points) > 20, null, { timeout: 15000 });
  const p1 = await points('ramp');
  await sleep(1500);
  const p2 = await points('ramp');
  check(p2 > p1, `the ramp chart's points grow (${p1} -> ${p2})`);

  // The values shown are the values sent: loadgen's record for counter c
  // has time t (µs) with ramp = (t mod 1 s) / 1 s, sine = sin(2π·ramp),
  // square = sign(sine), and our message.
  for (let i = 0; i < 5; i++) {
    const v = await page.$$eval('#latest td[data-field]', (tds) => Object.fromEntries(tds.map((td) => [td.dataset.field, td.dataset.value])));
    const counter = Number(v.counter), time = Number(v.time), ramp = Number(v.ramp);
    const sine = Number(v.sine_wave), square = Number(v.square_wave);
    const wantRamp = (time % 1e6) / 1e6;
    check(Number.isInteger(counter) && counter >= START && counter < START + 200 * 60, `shown counter ${counter} is one that was sent`);
    check(ramp === wantRamp, `shown ramp ${ramp} is the ramp sent with time ${time} (${wantRamp})`);
    check(Math.abs(sine - Math.sin(2 * Math.PI * wantRamp)) < 1e-12, `shown sine_wave ${sine} is the one sent`);
    check(Math.abs(sine) < 1e-9 || square === (sine >= 0 ? 1 : -1), `shown square_wave ${square} is the one sent`);
    check(v.message === MESSAGE, `the message is shown as sent, as text (${v.message})`);
    const chartLatest = await page.$eval('canvas[data-field="ramp"]', (c) => c.closest('.chart').querySelector('.latest').textContent);
    check(Number.isFinite(Number(chartLatest)) && Number(chartLatest) >= 0 && Number(chartLatest) < 1, `the ramp chart shows its latest value (${chartLatest})`);
    await sleep(300);
  }

  // HTML in the schema's doc and in the records is text, never markup.
  const schemaText = await page.textContent('#schema');
  check(schemaText.includes(JSON.stringify(MARKER).slice(1, -1)), 'the schema is shown, with the HTML of its doc as text');
  check((await page.$$('#schema *')).length === 0 && (await page.$$('#latest img')).length === 0, 'no element was made from the schema or a record');
  check(await page.evaluate(() => window.__xss === undefined), 'no script from the schema or a record ran');

  // Shown on the page: the decimation in use, counters, the live status.
  const decimation = await page.textContent('#decimation');
  check(/downsample/.test(decimation), `the decimation is shown (${decimation.trim()})`);
  check(await page.$eval('[data-counter="received"] .v', (e) => Number(e.textContent.replace(/,/g, '')) > 0), 'the received counter is shown');

  // Pick a field: its chart appears, and fills.
  await page.check('input[data-field="noise"]');
  await page.waitForFunction(() => Number(document.querySelector('canvas[data-field="noise"]')?.dataset.points) > 5, null, { timeout: 10000 });
  check(page.url().includes('noise'), 'the chosen fields are kept in the URL');

  // Pause freezes the charts while the data goes on.
  await page.click('#pause');
  await sleep(200); // the frame that draws the frozen window
  const frozen = await points('ramp');
  await sleep(1000);
  check(await points('ramp') === frozen, `paused, the chart stays still (${frozen} points)`);
  await page.click('#pause');
  await page.waitForFunction((n) => Number(document.querySelector('canvas[data-field="ramp"]').dataset.points) !== n, frozen, { timeout: 5000 });
  check(true, 'resumed, the chart moves again');

  // A 10 s window holds fewer points than 1 min once more than 10 s came.
  await page.selectOption('#window', '10');
  await sleep(200);
  const p10 = await points('ramp');
  check(p10 > 0 && p10 <= 100 * 10 + 50, `a 10 s window holds at most 10 s of records (${p10})`);
  await page.selectOption('#window', '60');
  await sleep(3000);
  await page.screenshot({ path: `${SHOTS}/channel.png`, fullPage: true });

  // Keep the last 5 minutes of this channel; the hold is listed with its
  // files and size, then deleted (after a confirmation).
  await page.click('#holds-section button.keep[data-minutes="5"]');
  await page.waitForFunction(() => /kept as keep-/.test(document.getElementById('hold-status').textContent), null, { timeout: 10000 });
  const holdRow = await page.waitForSelector('#holds tr[data-hold^="keep-"]');
  const holdBytes = Number(await holdRow.getAttribute('data-bytes'));
  check(holdBytes >= 0, `the hold is listed (${(await holdRow.textContent()).trim()})`);
  const apiHolds = await (await fetch(`${BASE}/api/v1/holds`)).json();
  check(apiHolds.holds.length === 1 && apiHolds.holds[0].hold.channels[0] === LIVE, 'the API has the hold, for this channel');
  await page.screenshot({ path: `${SHOTS}/channel-holds.png`, fullPage: true });
  page.once('dialog', (d) => d.accept());
  await page.click('#holds tr[data-hold^="keep-"] button.hold-delete');
  await page.waitForFunction(() => !document.querySelector('#holds tr[data-hold^="keep-"]'), null, { timeout: 10000 });
  check((await (await fetch(`${BASE}/api/v1/holds`)).json()).holds.length === 0, 'the hold is deleted');

  // ---- an export from the channel page ------------------------------------
  // Two signals of the last hour as Parquet: the browser downloads the file
  // the API wrote.
  await page.waitForSelector('#export-signals input[data-signal="ramp"]');
  check(await page.$$eval('#export-signals input[data-signal]', (b) => b.length > 0 && b.every((x) => x.checked)),
    'the export form offers the schema\'s signals, all chosen at first');
  await page.uncheck('#export-signals input[data-all]');
  await page.check('#export-signals input[data-signal="ramp"]');
  await page.check('#export-signals input[data-signal="counter"]');
  check(await page.$eval('#export-signals input[data-all]', (a) => !a.checked && a.indeterminate), 'with two signals chosen, "all" reads as partly chosen');
  await page.click('#export-section button.preset[data-last="PT1H"]');
  await page.selectOption('#export-format', 'parquet');
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 30000 }),
    page.click('#export-download'),
  ]);
  const parquetPath = `${SHOTS}/export-channel.parquet`;
  await download.saveAs(parquetPath);
  const parquet = readFileSync(parquetPath);
  check(parquet.length > 0 && parquet.subarray(0, 4).toString() === 'PAR1' && parquet.subarray(-4).toString() === 'PAR1',
    `the download is a Parquet file (${download.suggestedFilename()}, ${parquet.length} bytes)`);
  check(new RegExp(`^${LIVE}-.*\\.parquet$`).test(download.suggestedFilename()), 'it has the name the API gave it');
  // The column names are in the file's footer; without archive.time_field
  // the time column is the arrival's.
  const cols = ['ramp', 'counter', 'arrival'].filter((c) => parquet.includes(c));
  const others = ['noise', 'sine_wave', 'square_wave', 'message'].filter((c) => parquet.includes(c));
  check(cols.length === 3 && others.length === 0, `it holds the two signals and the time column, no other (${cols}; none of ${others})`);
  await page.waitForFunction(() => /^downloaded /.test(document.getElementById('export-status').textContent));
  const exported = await page.$eval('#export-status', (s) => ({ text: s.textContent, bytes: Number(s.dataset.bytes) }));
  check(exported.bytes === parquet.length && exported.text.includes(download.suggestedFilename()) && !/no data/.test(exported.text),
    `the form says what was downloaded (${exported.text})`);
  await (await page.$('#export-section')).screenshot({ path: `${SHOTS}/export-channel.png` });

  // A range that ends before it starts: the API's own error, beside the
  // form, naming the field.
  const local = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  const now = new Date();
  await page.fill('#export-from', local(now));
  await page.fill('#export-to', local(new Date(now.getTime() - 3600000)));
  await page.click('#export-download');
  await page.waitForSelector('#export-error:not(.hidden)', { timeout: 10000 });
  const apiError = await (await fetch(`${BASE}/api/v1/pivot/export?channels=${LIVE}&start=${now.toISOString()}&end=${new Date(now.getTime() - 3600000).toISOString()}`)).json();
  const shown = await page.$eval('#export-error', (e) => ({ text: e.textContent, field: e.dataset.field }));
  check(shown.text.includes(apiError.error) && shown.field === apiError.field && apiError.field === 'end',
    `a range ending before its start shows the API's error (${shown.text})`);
  check(await page.$eval('#export-status', (s) => s.textContent === ''), 'and no longer the last download');
  await (await page.$('#export-section')).screenshot({ path: `${SHOTS}/export-channel-error.png` });

  // Nested records: their dotted sub-fields are signals (export.js's own
  // reading of a schema, in the page).
  const nested = await page.evaluate(async () => {
    const { signalPaths } = await import('/assets/export.js');
    return signalPaths({
      type: 'record', name: 'R', namespace: 'rig', fields: [
        { name: 't', type: 'long' },
        { name: 'pos', type: { type: 'record', name: 'Vec', fields: [{ name: 'x', type: 'double' }, { name: 'y', type: 'double' }] } },
        { name: 'vel', type: 'Vec' },
        { name: 'maybe', type: ['null', 'Vec'] },
      ],
    }).map((s) => s.path).join(' ');
  });
  check(nested === 't pos.x pos.y vel.x vel.y maybe', `nested records give dotted signals (${nested})`);

  // The data stops: the page says so.
  loadgen.kill('SIGTERM');
  await sent;
  await page.waitForFunction(() => !document.getElementById('stale').classList.contains('hidden'), null, { timeout: 10000 });
  const stale = await page.textContent('#stale');
  check(/Data stopped/.test(stale), `the page shows that the data stopped (${stale.trim()})`);
  await page.screenshot({ path: `${SHOTS}/channel-stopped.png` });

  // A channel without a decimated output says so.
  await page.goto(`${BASE}/channels/${KILL}`);
  await page.waitForFunction(() => /no decimated output/.test(document.getElementById('decimation').textContent), null, { timeout: 10000 });
  check(true, `${KILL}'s page says it has no decimated output`);

  // ---- registering a channel from the page ----------------------------------
  const free = await (await fetch(`${BASE}/api/v1/ports/free?from=27000&to=27999`)).json();
  const liveSchema = JSON.stringify(await (await fetch(`${BASE}/api/v1/channels/${LIVE}/schema`)).json(), null, 2);
  const badToml = `[receive]\nbind = "127.0.0.1:${free.ports[0]}"\nrecv_buffer = "<b>lots</b>"\n\n[archive]\n`;
  await page.goto(BASE + '/');
  await page.click('#add');
  await page.fill('#reg-name', 'formed');
  await page.fill('#reg-channel', badToml);
  await page.fill("#reg-schema", liveSchema);
  await page.click('#reg-check');
  await page.waitForSelector('#reg-problems li');
  const problemText = await page.textContent('#reg-problems');
  check(problemText.includes('receive.recv_buffer') && problemText.includes('formed.toml'), `the form shows the problem before writing (${problemText.trim()})`);
  check((await page.$$('#reg-problems b')).length === 0, 'the problem text is shown as text');
  check((await fetch(`${BASE}/api/v1/channels/formed/config`)).status === 404, 'nothing was written');
  await page.screenshot({ path: `${SHOTS}/register-problems.png` });
  await page.fill('#reg-channel', badToml.replace('recv_buffer = "<b>lots</b>"\n', ''));
  await page.click('#reg-save');
  await page.waitForFunction(() => document.querySelector('#channels tbody tr[data-channel="formed"]')?.dataset.state === 'ready', null, { timeout: 30000 });
  check(true, 'the channel added from the form runs');
  const cfg = await (await fetch(`${BASE}/api/v1/channels/formed/config`)).json();
  check(cfg.channel.startsWith('schema = "formed.avsc"'), 'its file was written with its schema beside it');

  await page.goto(`${BASE}/channels/formed`);
  await page.waitForFunction(() => !document.getElementById('remove').disabled);
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await page.click('#remove');
  await page.waitForURL(BASE + '/', { timeout: 30000 });
  check(/Remove channel formed/.test(asked), `removing asks first (${asked})`);
  await page.waitForFunction(() => document.querySelectorAll('#channels tbody tr').length > 0 && !document.querySelector('#channels tbody tr[data-channel="formed"]'), null, { timeout: 10000 });
  check((await fetch(`${BASE}/api/v1/channels/formed/config`)).status === 404, 'the removed channel\'s file is gone');

  // ---- an export of two channels from the fleet page ----------------------
  await page.waitForSelector(`#fleet-export-channels input[data-channel="${KILL}"]`);
  await page.check(`#fleet-export-channels input[data-channel="${LIVE}"]`);
  await page.check(`#fleet-export-channels input[data-channel="${KILL}"]`);
  await page.click('#fleet-export-section button.preset[data-last="PT1H"]');
  await page.selectOption('#fleet-export-format', 'csv');
  const [zipped] = await Promise.all([
    page.waitForEvent('download', { timeout: 30000 }),
    page.click('#fleet-export-download'),
  ]);
  const zipPath = `${SHOTS}/export-fleet.zip`;
  await zipped.saveAs(zipPath);
  const zip = readFileSync(zipPath);
  check(zip.length > 0 && zip.subarray(0, 2).toString() === 'PK', `two channels as CSV come as a zip (${zipped.suggestedFilename()}, ${zip.length} bytes)`);
  check(/\.csv\.zip$/.test(zipped.suggestedFilename()) && zip.includes(`${LIVE}.csv`) && zip.includes(`${KILL}.csv`),
    'it holds one CSV file a channel');
  await page.waitForFunction(() => /^downloaded /.test(document.getElementById('fleet-export-status').textContent));
  const fleetExported = await page.textContent('#fleet-export-status');
  check(fleetExported.includes(zipped.suggestedFilename()), `the form says what was downloaded (${fleetExported})`);
  await (await page.$('#fleet-export-section')).screenshot({ path: `${SHOTS}/export-fleet.png` });

  // ---- dark mode ----------------------------------------------------------
  const dark = await newContext('dark');
  const dpage = await dark.newPage();
  await dpage.goto(BASE + '/');
  await dpage.waitForSelector('#channels tbody tr[data-state="ready"]');
  const bg = await dpage.evaluate(() => getComputedStyle(document.documentElement).backgroundColor);
  check(bg !== 'rgba(0, 0, 0, 0)' && bg !== 'rgb(255, 255, 255)' && bg !== 'rgb(247, 247, 245)', `dark mode has a dark background (${bg})`);
  await dpage.screenshot({ path: `${SHOTS}/fleet-dark.png` });
  const sent2 = startSender(8);
  await dpage.goto(`${BASE}/channels/${LIVE}`);
  await dpage.waitForFunction(() => Number(document.querySelector('canvas[data-field="ramp"]')?.dataset.points) > 100, null, { timeout: 15000 });
  await dpage.screenshot({ path: `${SHOTS}/channel-dark.png`, fullPage: true });
  loadgen.kill('SIGTERM');
  await sent2;

  check(foreign.length === 0, `no request left the orchestrator (${foreign.join(', ') || 'none'})`);
} catch (e) {
  failures.push(`error: ${e.stack || e}`);
  console.log(e);
} finally {
  if (loadgen && loadgen.exitCode === null) loadgen.kill('SIGTERM');
  await browser.close();
}

if (loadgenOut) console.log(`loadgen: ${loadgenOut.trim().split('\n').join(' | ')}`);
if (failures.length) {
  console.log(`\n${failures.length} check(s) failed:\n- ${failures.join('\n- ')}`);
  process.exit(1);
}
console.log('every console check passed');
