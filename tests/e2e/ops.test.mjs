// ops.test.mjs: the operator console against a real stack, started here on free loopback ports:
// a redis-server, two `duel serve` (engine backend on models/default), a `duel train` and Debian's
// prometheus, with Debian's Chromium through playwright-core.
//   - the admin API: no token or a wrong one is 401 with no data, a viewer may read but a change
//     is 403, a bad value is 400 naming the knob and its range and changes nothing;
//   - the page: signing in (a wrong token refused), charts drawn from the duels and votes made
//     here, a change of temperature and strategy from the form, after which the next duel's
//     gen_params in duel:prefs carry them on both gateways; a bad value refused with its message;
//     the audit log shows the change; knob values and audit entries written into Redis with HTML
//     in them are shown as text (nothing runs); a viewer (phone width) sees the knobs read-only;
//   - a stopped trainer shows as stale; the stats survive a gateway restart (they are in Redis);
//   - prometheus scrapes the gateway and the trainer with ops/prometheus/alerts.yml loaded, and a
//     duel series and a trainer series come back through its HTTP API.
// Screenshots go to $DUEL_E2E_ARTIFACTS; with DUEL_DOCS_SCREENSHOTS=DIR also the two of the
// console (laptop and phone) kept in docs/images. Exit 77 (skip) without Chromium,
// playwright-core or prometheus.
import {spawn, execFileSync} from 'node:child_process';
import {copyFileSync, existsSync, mkdirSync, mkdtempSync, writeFileSync} from 'node:fs';
import {freePort, sleep, waitFor} from './e2e_util.mjs';
import {tmpdir} from 'node:os';
import {join, resolve, dirname} from 'node:path';
import {fileURLToPath} from 'node:url';
import assert from 'node:assert/strict';

const here = dirname(fileURLToPath(import.meta.url));
const source = process.env.DUEL_SOURCE_DIR || resolve(here, '../..');
const duelBin = process.env.DUEL_BIN || join(source, 'build/cli/duel');
const chromiumPath = '/usr/bin/chromium';
const prometheusPath = '/usr/bin/prometheus';
const tmpBase = process.env.DUEL_TEST_TMP || tmpdir();
mkdirSync(tmpBase, {recursive: true});
const artifacts = process.env.DUEL_E2E_ARTIFACTS || join(tmpBase, 'e2e-ops-screenshots');
mkdirSync(artifacts, {recursive: true});
const started = Date.now();
const log = (m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${m}`);

let chromium;
try {
  ({chromium} = await import('playwright-core'));
} catch {
  console.log('SKIP: playwright-core is not installed (npm ci)');
  process.exit(77);
}
for (const [path, what] of [[chromiumPath, 'apt-get install chromium'], [prometheusPath, 'apt-get install prometheus']]) {
  if (!existsSync(path)) {
    console.log(`SKIP: ${path} is missing (${what})`);
    process.exit(77);
  }
}
if (!existsSync(join(source, 'node_modules/uplot/dist/uPlot.iife.min.js'))) {
  console.log('SKIP: node_modules/uplot is missing (npm ci)');
  process.exit(77);
}

const dir = mkdtempSync(join(tmpBase, 'e2e-ops-'));
const [redisPort, portA, portB, trainerPort, promPort] =
  await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
const children = new Set();
const logs = {};
function start(name, cmd, args, env = {}) {
  const c = spawn(cmd, args, {stdio: ['ignore', 'pipe', 'pipe'], env: {...process.env, ...env}});
  logs[name] = '';
  c.stdout.on('data', (d) => { logs[name] += d; });
  c.stderr.on('data', (d) => { logs[name] += d; });
  children.add(c);
  c.on('exit', () => children.delete(c));
  return c;
}
async function stop(c) {
  if (c.exitCode === null && c.signalCode === null) {
    c.kill('SIGTERM');
    await new Promise((r) => c.on('exit', r));
  }
  return c.exitCode;
}
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });

const redisCli = (...args) => execFileSync('redis-cli', ['-p', String(redisPort), ...args],
  {encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore']});

// Two tokens: an admin and a viewer (DUEL_TOKENS, as an operator would set it).
const ADMIN = 'ops:admin-secret-0123456789';
const VIEWER = 'watcher:viewer-secret-0123456789';
const TOKENS = `admin:${ADMIN},viewer:${VIEWER}`;
const config = join(dir, 'config.json');
writeFileSync(config, JSON.stringify({
  duel: {candidates: 2, max_new_tokens: 12},
  engine: {kv_memory_bytes: 8 << 20}, // a small pool: zeroing 256 MiB takes seconds on a busy box
  gateway: {stats_interval_ms: 500, knobs_poll_ms: 500, stream_interval_ms: 0,
    uplot_dir: join(source, 'node_modules/uplot/dist')},
  trainer: {stats_interval_ms: 250},
}));
const model = join(source, 'models/default');

start('redis', 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--dir', dir,
  '--save', '', '--appendonly', 'no', '--logfile', join(dir, 'redis.log')]);
await waitFor(() => redisCli('PING').trim() === 'PONG', 'redis-server');

const gateways = {};
function startGateway(name, port) {
  gateways[name] = start(`gateway ${name}`, duelBin, ['serve', '--port', String(port),
    '--redis', `127.0.0.1:${redisPort}`, '--config', config, '--web-root', join(source, 'gateway/web'),
    '--data-dir', join(dir, `gw-${name}`), '--model', model, '--no-snapshots'], {DUEL_TOKENS: TOKENS});
}
const baseA = `http://127.0.0.1:${portA}`, baseB = `http://127.0.0.1:${portB}`;
startGateway('A', portA);
startGateway('B', portB);
const trainer = start('trainer', duelBin, ['train', '--redis', `127.0.0.1:${redisPort}`, '--config',
  config, '--data-dir', join(dir, 'train'), '--model', model, '--metrics', `127.0.0.1:${trainerPort}`,
  '--quiet']);
const promConfig = join(dir, 'prometheus.yml');
writeFileSync(promConfig, [
  'global: {scrape_interval: 1s, evaluation_interval: 1s}',
  `rule_files: ["${join(source, 'ops/prometheus/alerts.yml')}"]`,
  'scrape_configs:',
  `  - {job_name: duel-gateway, static_configs: [{targets: ["127.0.0.1:${portA}", "127.0.0.1:${portB}"]}]}`,
  `  - {job_name: duel-trainer, static_configs: [{targets: ["127.0.0.1:${trainerPort}"]}]}`, ''].join('\n'));
const prometheus = start('prometheus', prometheusPath, [`--config.file=${promConfig}`,
  `--storage.tsdb.path=${join(dir, 'prometheus')}`, `--web.listen-address=127.0.0.1:${promPort}`,
  '--log.level=warn']);
await Promise.all([baseA, baseB].map((b) => waitFor(async () => (await fetch(`${b}/readyz`)).ok, b, 60000)));
log('gateways ready');

const api = (base, path, token, opts = {}) => fetch(base + path, {
  ...opts, headers: {...(token ? {Authorization: `Bearer ${token}`} : {}), ...(opts.headers || {})}});

// One browser, a fresh context (profile) per user.
let browser;
async function launch(contextOptions) {
  if (!browser) {
    browser = await chromium.launch({
      executablePath: chromiumPath, headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }
  return browser.newContext(contextOptions);
}

// One duel through the duel.v1 websocket of the page's own origin: hello, ask, wait for
// duel_end, vote. Returns the duel id.
async function duel(page, text, choice) {
  return page.evaluate(async ({text, choice}) => new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${location.host}/`, 'duel.v1');
    let id = null;
    const timer = setTimeout(() => reject(new Error('duel timed out')), 60000);
    ws.onopen = () => ws.send(JSON.stringify({type: 'hello'}));
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === 'welcome') ws.send(JSON.stringify({type: 'ask', text}));
      else if (m.type === 'duel_start') id = m.duel;
      else if (m.type === 'duel_end') ws.send(JSON.stringify({type: 'vote', duel: id, choice}));
      else if (m.type === 'vote_ok') { clearTimeout(timer); ws.close(); resolve(id); }
      else if (m.type === 'error') { clearTimeout(timer); reject(new Error(`${m.code}: ${m.message}`)); }
    };
    ws.onerror = () => reject(new Error('websocket error'));
  }), {text, choice});
}

// The newest n entries of duel:prefs: [{strategy, gen_params}] (a Lua script picks the two text
// fields, the binary ones stay in Redis).
function lastVotes(n) {
  const out = redisCli('EVAL', `local e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[1])
    local r = {}
    for _, x in ipairs(e) do local f = x[2]; local s, g
      for j = 1, #f, 2 do if f[j] == 'strategy' then s = f[j+1] elseif f[j] == 'gen_params' then g = f[j+1] end end
      table.insert(r, s); table.insert(r, g) end
    return r`, '1', 'duel:prefs', String(n)).trim().split('\n');
  const votes = [];
  for (let i = 0; i + 1 < out.length; i += 2) votes.push({strategy: out[i], gen: JSON.parse(out[i + 1])});
  return votes;
}

let failed = false;
let context;
try {
  // ---- the admin API's refusals ----------------------------------------------------------
  // (seven failed attempts: the address stays under the limit of ten a minute, test_admin_auth
  // covers the 429)
  for (const [token, status] of [[null, 401], ['ops:wrong-secret-000000', 401]]) {
    for (const path of ['/api/stats', '/api/knobs', '/api/audit']) {
      const r = await api(baseA, path, token);
      assert.equal(r.status, status, `${path} with ${token}`);
      const body = await r.json();
      assert.deepEqual(Object.keys(body), ['error'], 'a refusal carries no data');
    }
  }
  assert.equal((await api(baseA, '/api/stats?token=' + ADMIN, null)).status, 401, 'never a token in the URL');
  let r = await api(baseA, '/api/knobs', VIEWER);
  assert.equal(r.status, 200);
  assert.equal((await r.json()).you.role, 'viewer');
  r = await api(baseA, '/api/knobs', VIEWER, {method: 'POST', body: '{"changes":{"temperature":"0.3"}}'});
  assert.equal(r.status, 403, 'a viewer cannot change a knob');
  r = await api(baseA, '/api/knobs', ADMIN, {method: 'POST', body: '{"changes":{"temperature":"0.3","M":"100"}}'});
  assert.equal(r.status, 400);
  assert.match((await r.json()).error, /knob M = 100: outside \[2, 64\]/);
  assert.equal(redisCli('HLEN', 'duel:knobs').trim(), '0', 'a refused change writes nothing');
  assert.equal(redisCli('XLEN', 'duel:audit').trim(), '0');
  log('API refusals ok');

  // ---- traffic on both gateways ----------------------------------------------------------
  context = await launch({viewport: {width: 1366, height: 900}});
  const pageA = await context.newPage();
  const pageErrors = [];
  pageA.on('pageerror', (e) => pageErrors.push(String(e)));
  await pageA.goto(`${baseA}/healthz`);
  const pageB = await context.newPage();
  await pageB.goto(`${baseB}/healthz`);
  log('browser up');
  await Promise.all([
    (async () => {
      for (const [i, choice] of ['a', 'b', 'tie'].entries()) await duel(pageA, `What does word ${i} mean?`, choice);
    })(),
    duel(pageB, 'What does tea mean?', 'both_bad')]);
  log('four duels voted');

  // ---- the console: sign in, charts from that traffic -------------------------------------
  const ops = await context.newPage();
  ops.on('pageerror', (e) => pageErrors.push(String(e)));
  await ops.goto(`${baseA}/ops`);
  await ops.fill('#token', 'ops:not-the-secret-000');
  await ops.click('#login button[type=submit]');
  await waitFor(async () => (await ops.textContent('#login-error')).includes('not valid'), 'wrong token refused');
  await ops.fill('#token', ADMIN);
  await ops.click('#login button[type=submit]');
  await waitFor(() => ops.isVisible('#console'), 'signed in');
  assert.match(await ops.textContent('#who'), /signed in as ops \(admin\)/);
  await waitFor(async () => Number(await ops.textContent('#t-duels')) >= 4, 'four duels in the totals', 20000);
  // every chart drawn, and the regret, vote and traffic charts hold real points
  const points = await ops.evaluate(() => Object.fromEntries(Object.entries(window.duelOps.charts)
    .map(([id, u]) => [id, u.data.slice(1).map((s) => s.filter((v) => v != null).length)])));
  assert.equal(Object.keys(points).length, 7, 'seven charts');
  for (const id of ['c-regret', 'c-votes', 'c-duels']) assert.ok(points[id][0] > 0, `${id} has data`);
  assert.equal(await ops.locator('canvas').count() >= 7, true);
  await waitFor(async () => (await ops.locator('#groups tbody tr').count()) >= 1, 'the arm/strategy table');
  log('charts drawn');

  // ---- a change from the page, then the next duel on both gateways -----------------------
  await ops.fill('#knobs tr[data-knob=temperature] input', '0.5');
  await ops.selectOption('#knobs tr[data-knob=strategy] select', 'bai_ts');
  await ops.click('#knobs-apply');
  await waitFor(async () => (await ops.textContent('#knobs-message')).startsWith('Applied'), 'change applied');
  assert.match(await ops.textContent('#knobs-message'), /temperature: 1 → 0\.5/);
  await waitFor(async () => (await ops.textContent('#audit tbody')).includes('temperature: 1 → 0.5'), 'audit row');
  assert.match(await ops.textContent('#audit tbody'), /ops.*strategy: ee_ts → bai_ts/s);
  // a bad value: refused with its message, nothing changed
  await ops.fill('#knobs tr[data-knob=M] input', '100');
  await ops.click('#knobs-apply');
  await waitFor(async () => (await ops.textContent('#knobs-message')).includes('knob M = 100: outside [2, 64]'),
    'the refusal shown');
  assert.equal(redisCli('HGET', 'duel:knobs', 'M').trim(), '');
  await ops.click('#knobs-revert');
  // gateway B heard it on duel:notify
  await waitFor(async () => {
    const k = await (await api(baseB, '/api/knobs', VIEWER)).json();
    return k.knobs.find((x) => x.name === 'temperature').value === '0.5';
  }, 'gateway B has the new knobs', 5000);
  await Promise.all([duel(pageA, 'What does coffee mean?', 'a'), duel(pageB, 'What does milk mean?', 'b')]);
  const next = lastVotes(2);
  assert.equal(next.length, 2);
  for (const v of next) {
    assert.equal(v.gen.temperature, 0.5, 'gen_params carry the new temperature');
    assert.equal(v.gen.strategy, 'bai_ts');
    assert.equal(v.strategy, 'bai_ts', 'the vote names the strategy that chose its pair');
  }
  log('the next duels on both gateways used the new knobs');

  // ---- HTML in Redis is shown as text -----------------------------------------------------
  redisCli('XADD', 'duel:audit', '*', 'who', '<img src=x onerror="window.pwned=1">', 'ts_ms',
    String(Date.now()), 'action', 'knobs', 'before', '{"top_k":"<b>bold</b>"}', 'after',
    '{"top_k":"<script>window.pwned=2</script>"}');
  redisCli('HSET', 'duel:knobs', 'top_k', '<img src=y onerror="window.pwned=3">');
  redisCli('PUBLISH', 'duel:notify', '{"kind":"knobs"}');
  await waitFor(async () => (await ops.textContent('#audit tbody')).includes('<img src=x onerror'), 'hostile audit entry shown');
  await waitFor(async () => (await ops.textContent('#knobs-ignored')).includes('<img src=y'), 'hostile knob value shown');
  assert.equal(await ops.locator('#audit img, #knobs-ignored img, #audit script, #audit b').count(), 0);
  assert.match(await ops.textContent('#audit tbody'), /<script>window\.pwned=2<\/script>/);
  assert.equal(await ops.evaluate(() => window.pwned), undefined, 'nothing ran');
  redisCli('HDEL', 'duel:knobs', 'top_k');
  redisCli('PUBLISH', 'duel:notify', '{"kind":"knobs"}');
  await waitFor(async () => !(await ops.textContent('#knobs-ignored')).includes('<img src=y'), 'hostile knob value gone');
  await ops.screenshot({path: join(artifacts, 'console-laptop.png'), fullPage: true});
  log('hostile text stays text');

  // ---- a viewer on a phone ----------------------------------------------------------------
  const phone = await launch({viewport: {width: 390, height: 844}, isMobile: true, hasTouch: true,
    deviceScaleFactor: 2});
  const vp = await phone.newPage();
  await vp.goto(`${baseB}/ops`);
  await vp.fill('#token', VIEWER);
  await vp.click('#login button[type=submit]');
  await waitFor(() => vp.isVisible('#knobs-readonly'), 'read-only notice');
  assert.equal(await vp.isDisabled('#knobs-apply'), true);
  assert.equal(await vp.isDisabled('#knobs tr[data-knob=temperature] input'), true);
  await waitFor(async () => Number(await vp.textContent('#t-duels')) >= 6, 'totals on the phone');
  // one chart per row on a phone, within the screen
  const c1 = await vp.locator('#c-regret').boundingBox(), c2 = await vp.locator('#c-erm').boundingBox();
  assert.ok(c2.y >= c1.y + c1.height - 1 && c1.width <= 390, 'charts stacked within the width');
  await vp.screenshot({path: join(artifacts, 'console-phone-full.png'), fullPage: true});
  await vp.screenshot({path: join(artifacts, 'console-phone.png')}); // the first screen, for docs/
  await phone.close();
  log('viewer on a phone ok');

  // ---- prometheus reads the series back ----------------------------------------------------
  const promQuery = async (q) => {
    const res = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`);
    return (await res.json()).data.result;
  };
  const duels = await waitFor(async () => {
    const res = await promQuery('sum(duel_arm_duels_total)');
    return res.length && Number(res[0].value[1]) >= 6 && res;
  }, 'prometheus: duel_arm_duels_total', 20000);
  assert.ok(Number(duels[0].value[1]) >= 6);
  const byStrategy = await promQuery('duel_arm_duels_total{strategy="bai_ts"}');
  assert.ok(byStrategy.length >= 1 && byStrategy[0].metric.arm === 'base', 'arm and strategy labels');
  await waitFor(async () => (await promQuery('duel_trainer_up{job="duel-trainer"}')).length === 1, 'trainer scraped');
  const rules = await (await fetch(`http://127.0.0.1:${promPort}/api/v1/rules`)).json();
  assert.equal(rules.data.groups[0].rules.length, 7, 'alerts.yml loaded by prometheus');
  log('prometheus ok');

  // ---- a stopped trainer is stale ----------------------------------------------------------
  const trainerRow = () => ops.locator('#instances tbody tr', {hasText: 'train@'});
  await waitFor(async () => (await trainerRow().textContent()).includes('healthy'), 'trainer healthy');
  assert.equal(await stop(trainer), 0, 'duel train stops cleanly');
  await waitFor(async () => (await trainerRow().textContent()).includes('stale'), 'trainer stale', 10000);
  log('stopped trainer is stale');

  // ---- the stats survive a gateway restart -------------------------------------------------
  const before = (await (await api(baseA, '/api/stats?window=900', ADMIN)).json()).totals.duels;
  assert.equal(await stop(gateways.A), 0, 'duel serve stops cleanly');
  startGateway('A', portA);
  await waitFor(async () => (await fetch(`${baseA}/readyz`)).ok, 'gateway A back', 60000);
  const after = await waitFor(async () => {
    const s = await (await api(baseA, '/api/stats?window=900', ADMIN)).json();
    return s.totals && s.totals.duels >= before && s;
  }, 'the restarted gateway reads the stats back');
  assert.ok(after.totals.duels >= 6);
  log('stats survive a restart');

  assert.deepEqual(pageErrors, []);
  const docs = process.env.DUEL_DOCS_SCREENSHOTS;
  if (docs) {
    for (const f of ['console-laptop.png', 'console-phone.png']) copyFileSync(join(artifacts, f), join(docs, f));
  }
  console.log(`ok: API, console, knobs on two gateways, text only, viewer, prometheus, stale trainer, restart; screenshots in ${artifacts}`);
} catch (e) {
  failed = true;
  console.error(e);
  for (const [name, text] of Object.entries(logs)) console.error(`--- ${name}:\n${text.slice(-3000)}`);
} finally {
  if (browser) await browser.close();
  await Promise.all([...children].filter((c) => c !== prometheus).map(stop));
  await stop(prometheus);
}
process.exit(failed ? 1 : 0);
