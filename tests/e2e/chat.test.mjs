// chat.test.mjs: the chat page in a real browser (Debian's Chromium via playwright-core) against
// `duel serve --backend test` (canned answers) and a real redis-server, both started here on free
// loopback ports. Desktop and phone viewports: open the page, see it say that this is the test
// backend, ask, see the generation indicator, watch both answers stream, vote (keyboard on
// desktop, buttons on the phone), see the chosen answer join the conversation, find the vote in
// Redis (in the test backend's stream duel:prefs:test, never in the trainer's duel:prefs),
// reload and find the conversation resumed. Then a
// reconnect: the server stops, a question asked while the page is offline waits on the page, and
// once a new server is up it is sent, answered and voted on. And conversations longer than the
// shipped model's context, on a second `duel serve` with that model (runLongConversation).
// Screenshots of each state go to $DUEL_E2E_ARTIFACTS (default $DUEL_TEST_TMP/e2e-screenshots).
// Exit 77 (skip) when Chromium or playwright-core is missing.
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
const artifacts = process.env.DUEL_E2E_ARTIFACTS || join(tmpBase, 'e2e-screenshots');
mkdirSync(artifacts, {recursive: true});

let chromium;
try {
  ({chromium} = await import('playwright-core'));
} catch {
  console.log('SKIP: playwright-core is not installed (npm install)');
  process.exit(77);
}
if (!existsSync(chromiumPath)) {
  console.log('SKIP: /usr/bin/chromium is missing (apt-get install chromium)');
  process.exit(77);
}
if (!existsSync(duelBin)) {
  console.error(`duel binary not found at ${duelBin} (set DUEL_BIN)`);
  process.exit(1);
}


const dir = mkdtempSync(join(tmpBase, 'e2e-'));
const redisPort = await freePort();
const webPort = await freePort();
const children = [];
function stopAll() {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
}
process.on('exit', stopAll);

const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--dir', dir,
  '--save', '', '--logfile', join(dir, 'redis.log')], {stdio: 'ignore'});
children.push(redis);
const redisCli = (...args) =>
  execFileSync('redis-cli', ['-p', String(redisPort), ...args],
    {encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore']});
await waitFor(() => redisCli('PING').trim() === 'PONG', 'redis-server');

// Slow the stream down so that a person (and the screenshots) can see it arrive.
writeFileSync(join(dir, 'config.json'), JSON.stringify({gateway: {stream_interval_ms: 60}}));
let server = null;
let serverLog = '';
const base = `http://127.0.0.1:${webPort}`;
async function startServer() {
  server = spawn(duelBin, ['serve', '--backend', 'test', '--port', String(webPort),
    '--redis', `127.0.0.1:${redisPort}`,
    '--config', join(dir, 'config.json'), '--web-root', join(source, 'gateway/web'),
    '--spill', join(dir, 'spill.log'), '--test-step-ms', '150'], {stdio: ['ignore', 'pipe', 'pipe']});
  children.push(server);
  server.stdout.on('data', (d) => { serverLog += d; });
  server.stderr.on('data', (d) => { serverLog += d; });
  await waitFor(async () => (await fetch(`${base}/healthz`)).ok, 'duel serve', 20000);
}
// SIGTERM, as an operator stops it; a clean stop exits 0.
async function stopServer() {
  const s = server;
  if (s.exitCode === null) s.kill('SIGTERM');
  await new Promise((r) => s.exitCode !== null ? r() : s.on('exit', r));
  return s.exitCode;
}
await startServer();

// A fresh profile per scenario (playwright passes it to Chromium as --user-data-dir).
function launch(contextOptions) {
  return chromium.launchPersistentContext(mkdtempSync(join(tmpBase, 'chromium-profile-')), {
    executablePath: chromiumPath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    ...contextOptions,
  });
}

async function runScenario(name, contextOptions, useKeyboard) {
  const context = await launch(contextOptions);
  const page = context.pages()[0] || await context.newPage();
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  const shot = (state) => page.screenshot({path: join(artifacts, `${name}-${state}.png`), fullPage: true});

  await page.goto(base + '/');
  await waitFor(async () => (await page.textContent('#status')) === 'Connected', 'Connected');
  assert.equal(await page.isVisible('#test-backend'), true, 'the page says these are canned answers');
  assert.match(await page.textContent('#test-backend'), /test backend.*canned.*train nothing/s);
  // Accessibility basics: the message box has a label; the vote group has a name.
  assert.equal(await page.getAttribute('label[for=ask-text]', 'for'), 'ask-text');
  assert.ok(await page.getAttribute('.votes', 'aria-label'));
  await shot('1-connected');

  const question = `What is a lighthouse (${name})?`;
  await page.fill('#ask-text', question);
  await page.press('#ask-text', 'Enter');
  await waitFor(async () => /tokens so far|Thinking/.test(await page.textContent('#progress')),
    'generation indicator');
  assert.equal(await page.isVisible('#duel'), true);
  await shot('2-generating');

  await waitFor(async () => (await page.textContent('#text-a')).length > 0 &&
    (await page.textContent('#text-b')).length > 0, 'both answers streaming');
  const partialA = await page.textContent('#text-a');
  await shot('3-streaming');
  await waitFor(async () => !(await page.isDisabled('.votes button[data-choice=a]')), 'votes enabled');
  const fullA = await page.textContent('#text-a');
  const fullB = await page.textContent('#text-b');
  assert.ok(fullA.length > partialA.length, 'answer A grew while streaming');
  assert.ok(fullA.includes(question) && fullB.includes(question));
  assert.notEqual(fullA, fullB);
  await shot('4-answers');

  if (name === 'phone') {
    // Stacked on a phone: B is below A, not beside it.
    const a = await page.locator('#answer-a').boundingBox();
    const b = await page.locator('#answer-b').boundingBox();
    assert.ok(b.y >= a.y + a.height - 1, 'answers are stacked');
    assert.ok(Math.abs(a.x - b.x) < 2);
  } else {
    const a = await page.locator('#answer-a').boundingBox();
    const b = await page.locator('#answer-b').boundingBox();
    assert.ok(b.x > a.x + a.width / 2, 'answers are side by side');
    assert.ok(Math.abs(a.y - b.y) < 2);
  }

  const before = Number(redisCli('XLEN', 'duel:prefs:test').trim());
  if (useKeyboard) {
    await page.keyboard.press('2'); // B is better
  } else {
    await page.click('.votes button[data-choice=b]');
  }
  await waitFor(async () => (await page.textContent('#notice')).includes('Thanks'), 'vote_ok');
  const assistant = await page.locator('.bubble.assistant').last().textContent();
  assert.equal(assistant, fullB, 'the chosen answer joined the conversation');
  assert.equal(await page.isVisible('#duel'), false);
  await shot('5-voted');

  await waitFor(() => Number(redisCli('XLEN', 'duel:prefs:test').trim()) === before + 1, 'vote in Redis');
  assert.equal(Number(redisCli('XLEN', 'duel:prefs').trim()), 0, 'no canned vote reaches the trainer');
  const entry = redisCli('XREVRANGE', 'duel:prefs:test', '+', '-', 'COUNT', '1');
  assert.ok(entry.includes(fullB), 'the stream entry holds the chosen text');
  assert.match(entry, /\nchoice\nb\n/);

  // Reload: the conversation is resumed with its history.
  await page.reload();
  await waitFor(async () => (await page.locator('.bubble.assistant').count()) === 1, 'resumed history');
  assert.equal(await page.locator('.bubble.user').first().textContent(), question);
  await shot('6-resumed');
  assert.deepEqual(consoleErrors, []);
  await context.close();
}

async function runReconnect() {
  const context = await launch({viewport: {width: 1280, height: 800}});
  const page = context.pages()[0] || await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const shot = (state) => page.screenshot({path: join(artifacts, `reconnect-${state}.png`), fullPage: true});
  await page.goto(base + '/');
  await waitFor(async () => (await page.textContent('#status')) === 'Connected', 'Connected');

  assert.equal(await stopServer(), 0, 'duel serve stops cleanly on SIGTERM');
  await waitFor(async () => /Offline|Reconnecting/.test(await page.textContent('#status')), 'offline status');
  const question = 'What is a harbour (asked offline)?';
  await page.fill('#ask-text', question);
  await page.press('#ask-text', 'Enter');
  await waitFor(async () => (await page.textContent('#progress')).includes('Waiting for the connection'),
    'the question waits for the connection');
  assert.equal(await page.locator('.bubble.user').last().textContent(), question);
  assert.equal(await page.inputValue('#ask-text'), '');
  assert.match(await page.textContent('#notice'), /will be sent when the connection is back/);
  await shot('1-waiting');
  // Stop takes a question that was never sent back into the box; asking again queues it again.
  await page.click('#cancel');
  assert.equal(await page.inputValue('#ask-text'), question);
  assert.equal(await page.locator('.bubble.user', {hasText: question}).count(), 0);
  assert.equal(await page.isVisible('#duel'), false);
  await page.press('#ask-text', 'Enter');
  await waitFor(async () => (await page.textContent('#progress')).includes('Waiting for the connection'),
    'the question waits again');

  const before = Number(redisCli('XLEN', 'duel:prefs:test').trim());
  await startServer();
  await waitFor(async () => (await page.textContent('#status')) === 'Connected', 'reconnected', 30000);
  await waitFor(async () => (await page.textContent('#progress')).includes('Pick the better answer'),
    'both answers after the reconnect', 30000);
  assert.ok((await page.textContent('#text-a')).length > 0);
  assert.equal(await page.locator('.bubble.user', {hasText: question}).count(), 1, 'asked once');
  await shot('2-answered');
  await page.keyboard.press('1');
  await waitFor(async () => (await page.textContent('#notice')).includes('Thanks'), 'vote_ok');
  await waitFor(() => Number(redisCli('XLEN', 'duel:prefs:test').trim()) === before + 1, 'vote in Redis');
  assert.deepEqual(pageErrors, []);
  await context.close();
}

// Conversations longer than the model (issue 21), with the shipped model (256-token context) on
// a second `duel serve`: an 800-byte question gets the page's offer to start a new conversation
// (never "busy"); then a conversation goes on turn after turn, and once it no longer fits, the
// page says that its first turns were left out, and every turn is still answered.
async function runLongConversation() {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  writeFileSync(join(dir, 'model.json'), JSON.stringify({
    gateway: {stream_interval_ms: 0}, duel: {candidates: 2, max_new_tokens: 48}}));
  let log = '';
  const model = spawn(duelBin, ['serve', '--model', join(source, 'models/default'), '--no-snapshots',
    '--port', String(port), '--redis', `127.0.0.1:${redisPort}`, '--config', join(dir, 'model.json'),
    '--web-root', join(source, 'gateway/web'), '--spill', join(dir, 'spill-model.log'),
    '--data-dir', join(dir, 'data-model')], {stdio: ['ignore', 'pipe', 'pipe']});
  children.push(model);
  model.stdout.on('data', (d) => { log += d; });
  model.stderr.on('data', (d) => { log += d; });
  try {
    await waitFor(async () => (await fetch(`${url}/healthz`)).ok, 'duel serve with the model', 30000);
    const context = await launch({viewport: {width: 1280, height: 800}});
    const page = context.pages()[0] || await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const shot = (state) => page.screenshot({path: join(artifacts, `long-${state}.png`), fullPage: true});
    await page.goto(url + '/');
    await waitFor(async () => (await page.textContent('#status')) === 'Connected', 'Connected');
    const firstConversation = await page.evaluate(() => localStorage.getItem('duel.conversation'));

    // 800 bytes of numbers (few bytes per token)
    const long = Array.from({length: 200}, (_, i) => String((i + 1) * 7919 % 10007)).join(' ').slice(0, 800);
    await page.fill('#ask-text', long);
    await page.press('#ask-text', 'Enter');
    await waitFor(async () => (await page.textContent('#notice')).includes('too long for the model'),
      'the too-long notice');
    assert.doesNotMatch(await page.textContent('#notice'), /busy|Still answering/);
    assert.equal(await page.isVisible('#notice button.offer'), true, 'an offer of a new conversation');
    assert.equal(await page.inputValue('#ask-text'), long, 'the question is back in the box');
    await shot('1-too-long');
    await page.click('#notice button.offer');
    await waitFor(async () => (await page.textContent('#status')) === 'Connected' &&
      await page.evaluate((c) => localStorage.getItem('duel.conversation') !== c, firstConversation),
    'a new conversation');

    let leftOut = null;
    for (let turn = 1; turn <= 14 && !leftOut; turn++) {
      await page.fill('#ask-text', `Tell me a long story about river number ${turn} and its stones.`);
      await page.press('#ask-text', 'Enter');
      const errorShown = () => page.evaluate(() => {
        const n = document.getElementById('notice');
        return !n.hidden && !n.classList.contains('info');
      });
      await waitFor(async () => (await page.textContent('#progress')).includes('Pick the better answer') ||
        await errorShown(), `turn ${turn} answered`, 30000);
      const notice = await page.textContent('#notice');
      assert.equal(await errorShown(), false, `turn ${turn}: ${notice}`);
      if (/left out/.test(notice)) leftOut = {turn, notice};
      await page.keyboard.press('1');
      await waitFor(async () => (await page.textContent('#notice')).includes('Thanks'), `vote ${turn}`);
      if (leftOut) await shot('2-left-out-voted');
    }
    assert.ok(leftOut, 'the conversation outgrew the 256-token context within 14 turns');
    assert.ok(leftOut.turn >= 3, `turns were left out from turn ${leftOut.turn}`);
    assert.match(leftOut.notice, /the first \d+ turns? (was|were) left out/);
    // The page keeps showing the whole conversation.
    assert.equal(await page.locator('.bubble.assistant').count(), leftOut.turn);
    assert.deepEqual(pageErrors, []);
    await context.close();
  } catch (e) {
    console.error('model server log:\n' + log);
    throw e;
  } finally {
    if (model.exitCode === null) model.kill('SIGTERM');
    await new Promise((r) => model.exitCode !== null ? r() : model.on('exit', r));
  }
}

let failed = false;
try {
  await runScenario('desktop', {viewport: {width: 1280, height: 800}}, true);
  await runScenario('phone', {viewport: {width: 390, height: 844}, isMobile: true, hasTouch: true,
    deviceScaleFactor: 2}, false);
  await runReconnect();
  await runLongConversation(); // last: its model's votes go to duel:prefs, which the others check
  console.log(`ok: long conversation, desktop, phone and reconnect scenarios passed; screenshots in ${artifacts}`);
} catch (e) {
  failed = true;
  console.error(e);
  console.error('server log:\n' + serverLog);
} finally {
  if (await stopServer() !== 0) {
    console.error(`duel serve exited with ${server.exitCode} after SIGTERM`);
    failed = true;
  }
  stopAll();
}
process.exit(failed ? 1 : 0);
