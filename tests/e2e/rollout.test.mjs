// rollout.test.mjs: the console's rollout panel (/ops) against a redis-server and one `duel serve
// --backend test`, started here on free loopback ports, with Debian's Chromium through
// playwright-core:
//   - the leaderboard shows the arena votes written into duel:prefs: both arms, ranked, with
//     their intervals;
//   - an admin sets the canary's weight from the page: declining the confirmation changes
//     nothing; accepting it changes duel:rollout (revision + 1, the stable arm takes the rest) and
//     the table shows the new weight; Abort (confirmed) sets status aborted;
//   - a viewer sees the panel without buttons.
// Exit 77 (skip) without Chromium or playwright-core.
import {spawn, execFileSync} from 'node:child_process';
import {existsSync, mkdirSync, mkdtempSync, writeFileSync} from 'node:fs';
import {freePort, sleep, waitFor} from './e2e_util.mjs';
import {tmpdir} from 'node:os';
import {join, resolve, dirname} from 'node:path';
import {fileURLToPath} from 'node:url';
import assert from 'node:assert/strict';

const here = dirname(fileURLToPath(import.meta.url));
const source = process.env.DUEL_SOURCE_DIR || resolve(here, '../..');
const duelBin = process.env.DUEL_BIN || join(source, 'build/cli/duel');
const chromiumPath = '/usr/bin/chromium';
const tmpBase = process.env.DUEL_TEST_TMP || tmpdir();
mkdirSync(tmpBase, {recursive: true});

let chromium;
try {
  ({chromium} = await import('playwright-core'));
} catch {
  console.log('SKIP: playwright-core is not installed (npm ci)');
  process.exit(77);
}
if (!existsSync(chromiumPath)) {
  console.log(`SKIP: ${chromiumPath} is missing (apt-get install chromium)`);
  process.exit(77);
}
const dir = mkdtempSync(join(tmpBase, 'e2e-rollout-'));
const [redisPort, port] = await Promise.all([freePort(), freePort()]);
const children = new Set();
let serveLog = '';
function start(cmd, args, env = {}) {
  const c = spawn(cmd, args, {stdio: ['ignore', 'pipe', 'pipe'], env: {...process.env, ...env}});
  c.stdout.on('data', (d) => { serveLog += d; });
  c.stderr.on('data', (d) => { serveLog += d; });
  children.add(c);
  c.on('exit', () => children.delete(c));
  return c;
}
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });
const redisCli = (...args) => execFileSync('redis-cli', ['-p', String(redisPort), ...args],
  {encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore']});

const ADMIN = 'ops:admin-secret-0123456789';
const VIEWER = 'watcher:viewer-secret-0123456789';
const config = join(dir, 'config.json');
writeFileSync(config, JSON.stringify({gateway: {stats_interval_ms: 500, knobs_poll_ms: 500}}));
start('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--dir', dir,
  '--save', '', '--appendonly', 'no', '--logfile', join(dir, 'redis.log')]);
await waitFor(() => redisCli('PING').trim() === 'PONG', 'redis-server');

// Two registered snapshots, a rollout between them, and arena votes (canary wins 3 in 4).
redisCli('ZADD', 'duel:snapshots', '12', '12', '13', '13');
redisCli('SET', 'duel:rollout', JSON.stringify({revision: 1, stable: 'stable', status: 'progressing',
  arena_fraction: 0.1, arms: [{name: 'stable', snapshot: 12, weight: 90},
    {name: 'canary', snapshot: 13, weight: 10}]}));
for (let i = 0; i < 40; i++) {
  const canaryWins = i % 4 !== 0;
  redisCli('XADD', 'duel:prefs', '*', 'strategy', 'arena', 'choice', 'a',
    'chosen_idx', canaryWins ? '1' : '0', 'rejected_idx', canaryWins ? '0' : '1',
    'gen_params', JSON.stringify({arena_split: 1, arena_arms: ['stable', 'canary'], arena_versions: [12, 13]}));
}
const rollout = () => JSON.parse(redisCli('GET', 'duel:rollout'));

start(duelBin, ['serve', '--backend', 'test', '--port', String(port), '--redis', `127.0.0.1:${redisPort}`,
  '--config', config, '--web-root', join(source, 'gateway/web'), '--data-dir', join(dir, 'gw')],
{DUEL_TOKENS: `admin:${ADMIN},viewer:${VIEWER}`});
const base = `http://127.0.0.1:${port}`;
await waitFor(async () => (await fetch(`${base}/healthz`)).ok, 'duel serve');

const browser = await chromium.launch({
  executablePath: chromiumPath, headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${base}/ops`);
  await page.fill('#token', ADMIN);
  await page.click('#login button[type=submit]');
  await waitFor(async () => (await page.textContent('#rollout-status')).includes('revision 1'), 'the rollout panel');

  // the leaderboard: the canary first (it won 30 of 40), both with intervals
  await waitFor(async () => (await page.locator('#leaderboard tbody tr').count()) === 2, 'two leaderboard rows');
  const first = await page.locator('#leaderboard tbody tr').first().locator('td').allTextContents();
  assert.equal(first[1], 'canary');
  assert.match(first[3], /^\d+(\.\d+)? – \d+(\.\d+)?$/);

  // declining the confirmation changes nothing
  const canaryRow = page.locator('#rollout-arms tr[data-arm=canary]');
  await canaryRow.locator('input').fill('30');
  page.once('dialog', (d) => d.dismiss());
  await canaryRow.locator('button').click();
  await sleep(500);
  assert.equal(rollout().revision, 1);

  // accepting it: duel:rollout changes, the page shows it
  page.once('dialog', (d) => {
    assert.match(d.message(), /Set canary to 30 %/);
    d.accept();
  });
  await canaryRow.locator('button').click();
  await waitFor(() => rollout().revision === 2, 'the weight change in duel:rollout');
  const after = rollout();
  assert.deepEqual(after.arms.map((a) => a.weight), [70, 30]);
  await waitFor(async () => (await page.locator('#rollout-arms tr[data-arm=canary] td.weight').textContent()) === '30',
    'the new weight on the page');
  assert.match(await page.textContent('#rollout-message'), /revision 2/);

  // abort, confirmed
  page.once('dialog', (d) => d.accept());
  await page.click('#rollout-abort');
  await waitFor(() => rollout().status === 'aborted', 'the abort in duel:rollout');
  assert.deepEqual(rollout().arms.map((a) => a.weight), [100, 0]);
  const audit = redisCli('XRANGE', 'duel:audit', '-', '+');
  assert.match(audit, /rollout\.weight/);
  assert.match(audit, /rollout\.abort/);

  // a viewer: the panel, no buttons
  const viewer = await (await browser.newContext()).newPage();
  await viewer.goto(`${base}/ops`);
  await viewer.fill('#token', VIEWER);
  await viewer.click('#login button[type=submit]');
  await waitFor(async () => (await viewer.textContent('#rollout-status')).includes('aborted'), 'the viewer panel');
  assert.equal(await viewer.locator('#rollout-actions').isHidden(), true);
  assert.equal(await viewer.locator('#rollout-arms button').count(), 0);
  console.log('ok: rollout panel');
} catch (e) {
  failed = true;
  console.error(e);
  console.error(serveLog.slice(-3000));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
