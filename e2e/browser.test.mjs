// Broker's console and example apps in a real browser: Debian's chromium,
// driven by playwright-core, against the real broker binary.
//
//   BROKER_BIN (default target/debug/broker), CHROMIUM (default /usr/bin/chromium)
//
// Nothing here sleeps to synchronise: every wait is for a condition, with a
// deadline.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEADLINE, freePort, launch, serveDir, until } from './support.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BROKER_BIN = process.env.BROKER_BIN || join(ROOT, 'target/debug/broker');
const TARGET = join(ROOT, 'target');

/** The broker binary, stopped and started on the same port and database. */
class Broker {
  constructor(port, dir, origins) {
    this.url = `http://127.0.0.1:${port}`;
    this.args = [
      '--host', '127.0.0.1', '--port', String(port),
      '--save-path', join(dir, 'broker.db'), '--secret', 'e2e-secret',
      '--origin', origins.join(','), '--retry', '500',
    ];
    this.log = createWriteStream(join(TARGET, 'e2e-broker.log'));
  }

  async start() {
    this.process = spawn(BROKER_BIN, this.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.process.stdout.pipe(this.log, { end: false });
    this.process.stderr.pipe(this.log, { end: false });
    this.exited = new Promise((resolve) => this.process.once('exit', resolve));
    await until('broker to answer /healthz', () => fetch(`${this.url}/healthz`).then((r) => r.ok, () => false));
  }

  async stop() {
    this.process.kill('SIGTERM');
    await this.exited;
  }
}

/** Serves the examples folder, as a developer would with any static server. */
const serveExamples = (port) => serveDir(join(ROOT, 'examples'), port);

let broker;
let examples;
let examplesUrl;
let context;
let dataDir;
let profileDir;
const pageErrors = [];

/** A console page; uncaught errors in it fail the run. */
async function consolePage() {
  const page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(error));
  await page.goto(`${broker.url}/`);
  await until('the console stream to be live', () => streamState(page).then((s) => s === 'live'));
  // Records when each event first shows in the feed (browser clock).
  await page.evaluate(() => {
    window.seenAt = {};
    new MutationObserver(() => {
      for (const li of document.querySelectorAll('#feed li[data-event]')) {
        window.seenAt[li.dataset.event] ??= Date.now();
      }
    }).observe(document.querySelector('#feed'), { childList: true });
  });
  return page;
}

const streamState = (page) => page.$eval('#stream-status', (el) => el.dataset.state);
const feed = (page) => page.$$eval('#feed li[data-id]', (lis) => lis.map((li) => ({ id: Number(li.dataset.id), event: li.dataset.event, data: li.querySelector('pre').textContent })));
const shown = (page, event) => feed(page).then((items) => items.filter((i) => i.event === event));

/** Inserts through the console's form; returns the stored event. */
async function insert(page, { event, data, inSeconds, at, collection }) {
  const form = page.locator('#insert-form');
  await form.locator('[name=event]').fill(event);
  await form.locator('[name=data]').fill(JSON.stringify(data));
  if (collection) await form.locator('[name=collection_id]').fill(collection);
  if (inSeconds) {
    await form.locator('[name=when][value=in]').check();
    await form.locator('[name=seconds]').fill(String(inSeconds));
  } else if (at) {
    await form.locator('[name=when][value=at]').check();
    await form.locator('[name=at]').fill(at);
  } else {
    await form.locator('[name=when][value=now]').check();
  }
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/insert')),
    form.locator('button[type=submit]').click(),
  ]);
  assert.equal(response.status(), 200, await response.text());
  return (await response.json()).event;
}

before(async () => {
  mkdirSync(TARGET, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), 'broker-e2e-'));
  profileDir = mkdtempSync(join(tmpdir(), 'broker-e2e-chromium-'));
  const [brokerPort, examplesPort] = await Promise.all([freePort(), freePort()]);
  examplesUrl = `http://127.0.0.1:${examplesPort}`;
  examples = await serveExamples(examplesPort);
  broker = new Broker(brokerPort, dataDir, [examplesUrl]);
  await broker.start();
  context = await launch(profileDir, { viewport: { width: 1280, height: 960 } });
});

after(async () => {
  await context?.close();
  await broker?.stop().catch(() => {});
  examples?.close();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(profileDir, { recursive: true, force: true });
});

let writer;
let watcher;
let aliceCollection;

test('two console pages: one signs up and inserts, the other shows the event live', async () => {
  watcher = await consolePage();
  writer = await consolePage();
  const signup = writer.locator('#signup-form');
  await signup.locator('[name=username]').fill('alice');
  await signup.locator('[name=password]').fill('correct horse');
  await signup.locator('button[type=submit]').click();
  await until('alice to be logged in', async () => (await writer.textContent('#whoami')) === 'logged in as alice');

  const stored = await insert(writer, { event: 'greeting', data: { hello: 'wörld' } });
  assert.equal(stored.published, false);
  aliceCollection = stored.collection_id;
  const [item] = await until('the greeting on the other page', () => shown(watcher, 'greeting').then((s) => s.length && s));
  assert.deepEqual(JSON.parse(item.data), { hello: 'wörld' });
  // The current-state table has it too, and the writer's own list shows it published.
  await watcher.locator('#state tr[data-event="greeting"]').waitFor({ timeout: DEADLINE });
  await writer.locator(`#my-events tr[data-id="${stored.id}"][data-status="published"]`).waitFor({ timeout: DEADLINE });

  // The watcher logs in too, and browses alice's collection.
  await watcher.fill('#login-form [name=username]', 'alice');
  await watcher.fill('#login-form [name=password]', 'correct horse');
  await watcher.click('#login-form button[type=submit]');
  await until('the watcher to be logged in', async () => (await watcher.textContent('#whoami')) === 'logged in as alice');
  await watcher.fill('#browse-form [name=collection_id]', stored.collection_id);
  await watcher.click('#browse-form button[type=submit]');
  await watcher.locator('#collection tbody tr', { hasText: 'greeting' }).waitFor({ timeout: DEADLINE });
  assert.equal(await watcher.textContent('#browse-message'), '1 event.');
});

test('a future event appears at its time and not before; a cancelled one never', async () => {
  // Timestamps are whole seconds, so "in N s" may come up to 1 s sooner:
  // the margins below leave time to insert and cancel before anything falls due.
  const doomed = await insert(writer, { event: 'doomed', data: { n: 2 }, inSeconds: 5 });
  const row = writer.locator(`#my-events tr[data-id="${doomed.id}"]`);
  await row.locator('button', { hasText: 'Cancel' }).click();
  await writer.locator(`#my-events tr[data-id="${doomed.id}"][data-status="cancelled"]`).waitFor({ timeout: DEADLINE });

  // "At" a date and time, in the browser's time zone, to the second. Chromium
  // writes a whole minute without its ":00" (and Playwright's fill refuses a
  // value the input would rewrite), so the seconds go only when not zero.
  const at = await writer.evaluate(() => {
    const d = new Date(Date.now() + 3000);
    const p = (n) => String(n).padStart(2, '0');
    const seconds = d.getSeconds() ? `:${p(d.getSeconds())}` : '';
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}${seconds}`;
  });
  const due = await insert(writer, { event: 'reminder', data: { n: 1 }, at });
  assert.equal(due.timestamp * 1000, await writer.evaluate((at) => new Date(at).getTime(), at));
  // Due after the cancelled event: once it is here, that one would be too.
  const marker = await insert(writer, { event: 'marker', data: { n: 3 }, inSeconds: 6 });
  assert.ok(marker.timestamp > doomed.timestamp);

  await until('the reminder', () => shown(watcher, 'reminder').then((s) => s.length));
  const seenAt = await watcher.evaluate(() => window.seenAt.reminder);
  assert.ok(seenAt >= due.timestamp * 1000, `shown at ${seenAt}, due at ${due.timestamp * 1000}`);
  await until('the marker', () => shown(watcher, 'marker').then((s) => s.length));
  assert.ok(await watcher.evaluate(() => window.seenAt.marker) >= marker.timestamp * 1000);
  assert.deepEqual(await shown(watcher, 'doomed'), [], 'a cancelled event was published');
});

test('filters select by collection and by event name', async () => {
  const filtered = await consolePage();
  const other = '0a0b0c0d-0000-4000-8000-000000000001';
  await filtered.fill('#filter-form [name=collection_id]', other);
  await filtered.fill('#filter-form [name=event]', 'wanted, also-wanted');
  await filtered.click('#filter-form button[type=submit]');
  await until('the filtered stream', () => streamState(filtered).then((s) => s === 'live'));
  // A filtered watch starts afresh: nothing here matches yet.
  assert.deepEqual(await feed(filtered), []);

  await insert(writer, { event: 'wanted', data: 'elsewhere', collection: aliceCollection });
  await insert(writer, { event: 'unwanted', data: 'no', collection: other });
  await insert(writer, { event: 'also-wanted', data: 'yes', collection: other });
  await until('also-wanted', () => shown(filtered, 'also-wanted').then((s) => s.length));
  // Published in insertion order: had the others passed the filter, they
  // would be here already.
  assert.deepEqual((await feed(filtered)).map((i) => i.event), ['also-wanted']);
  await until('the unfiltered page to have all three', () => shown(watcher, 'also-wanted').then((s) => s.length));
  assert.equal((await shown(watcher, 'unwanted')).length, 1);
  // The watcher browses that collection: the filtered page's stream (alice's: the pages share her token) is open on it.
  await watcher.fill('#browse-form [name=collection_id]', other);
  await watcher.click('#browse-form button[type=submit]');
  await until('its presence', async () => (await watcher.textContent('#browse-presence')) === 'Open now: alice.');
  await filtered.close();
  // She leaves once the grace period (5 s) is over.
  await until('nobody left', async () => {
    await watcher.click('#browse-form button[type=submit]');
    return (await watcher.textContent('#browse-presence')) === 'Open now: nobody.';
  });
  // Back to alice's own collection for what follows.
  await writer.fill('#insert-form [name=collection_id]', aliceCollection);
});

test('the stream resumes after a server restart with nothing lost or repeated', async () => {
  await insert(writer, { event: 'before-restart', data: 1 });
  await until('before-restart', () => shown(watcher, 'before-restart').then((s) => s.length));
  // Due while the server is down: published at once when it is back.
  const due = await insert(writer, { event: 'while-down', data: 2, inSeconds: 2 });

  await broker.stop();
  await until('the page to notice', () => streamState(watcher).then((s) => s !== 'live'));
  await until('while-down to fall due', () => Date.now() > due.timestamp * 1000 + 200);
  await broker.start();

  await until('the page to reconnect', () => streamState(watcher).then((s) => s === 'live'));
  await until('writer to reconnect', () => streamState(writer).then((s) => s === 'live'));
  await insert(writer, { event: 'after-restart', data: 3 });
  await until('after-restart', () => shown(watcher, 'after-restart').then((s) => s.length));

  const ids = (await feed(watcher)).map((i) => i.id).sort((a, b) => a - b);
  const expected = Array.from({ length: ids.at(-1) }, (_, i) => i + 1);
  assert.deepEqual(ids, expected, 'every published event exactly once, in a gap-free sequence');
  assert.equal((await shown(watcher, 'while-down')).length, 1);
  assert.deepEqual(pageErrors, []);
  await writer.screenshot({ path: join(TARGET, 'console.png'), fullPage: true });
});

test('the EventSource example shows events, named and unnamed', async () => {
  const named = await context.newPage();
  named.on('pageerror', (error) => pageErrors.push(error));
  await named.goto(`${examplesUrl}/eventsource/?broker=${broker.url}&event=score`);
  const all = await context.newPage();
  all.on('pageerror', (error) => pageErrors.push(error));
  await all.goto(`${examplesUrl}/eventsource/?broker=${broker.url}`);
  for (const page of [named, all]) {
    await until('the board to be live', async () => (await page.textContent('#status')).startsWith('live'));
  }
  // The board syncs the current state on connect.
  await all.locator('.tile[data-event="greeting"]').waitFor({ timeout: DEADLINE });

  await insert(writer, { event: 'score', data: { home: 2, away: 1 } });
  for (const page of [named, all]) {
    const tile = page.locator('.tile[data-event="score"] output');
    await until('the score', async () => (await tile.textContent()) === '{"home":2,"away":1}');
  }
  assert.equal(await named.locator('.tile').count(), 1, 'the named board shows only its event');
  assert.deepEqual(pageErrors, []);
});

test('the broker-client example logs in and receives notes', async () => {
  const page = await context.newPage();
  await page.goto(`${examplesUrl}/broker-client/?broker=${broker.url}`);
  await page.fill('#login [name=username]', 'alice');
  await page.fill('#login [name=password]', 'correct horse');
  await page.click('#login button');
  await until('the notes stream', async () => (await page.textContent('#status')).startsWith('live'));

  // A note posted by the page itself, then one inserted from the console.
  await page.fill('#write [name=text]', 'hello from the example');
  await page.click('#write button');
  await page.locator('#notes li', { hasText: 'alice: hello from the example' }).waitFor({ timeout: DEADLINE });
  await insert(writer, {
    event: 'note',
    collection: '3d0f4b1e-8c55-4d0e-9a57-2f1b6a8e4c11',
    data: { author: 'console', text: 'hi there' },
  });
  await page.locator('#notes li', { hasText: 'console: hi there' }).waitFor({ timeout: DEADLINE });
});

/** Signs a new user up on a console page (its own collection, logged in). */
async function signUp(page, username) {
  const form = page.locator('#signup-form');
  await form.locator('[name=username]').fill(username);
  await form.locator('[name=password]').fill('correct horse');
  await form.locator('button[type=submit]').click();
  await until(`${username} to be logged in`, async () => (await page.textContent('#whoami')) === `logged in as ${username}`);
  // Logging in reconnects the stream with the user's cookie.
  await until('the stream to be live again', () => streamState(page).then((s) => s === 'live'));
}

test('a private collection: the member sees its events live, the other user never, and removal takes effect live', async () => {
  // Two users, each in a browser of their own (cookies are per browser).
  const otherProfile = mkdtempSync(join(tmpdir(), 'broker-e2e-chromium-'));
  const otherBrowser = await launch(otherProfile, { viewport: { width: 1280, height: 960 } });
  try {
    const owner = await consolePage();
    const previous = context;
    context = otherBrowser;
    const other = await consolePage().finally(() => { context = previous; });
    await signUp(owner, 'carol');
    await signUp(other, 'dave');

    await owner.click('#sharing-form button[value=private]');
    await until('the collection to be private', async () => (await owner.textContent('#sharing-message')).startsWith('Private, owned by carol'));
    // A schema set in the console refuses what does not match, saying where.
    await owner.fill('#schema-form [name=event]', 'checked:*');
    await owner.fill('#schema-form [name=schema]', '{"type": "object", "properties": {"n": {"type": "integer"}}}');
    await owner.click('#schema-form button[value=set]');
    await until('the schema listed', async () => (await owner.textContent('#schemas')).startsWith('checked:*: {"properties"'));
    await owner.fill('#insert-form [name=event]', 'checked:1');
    await owner.fill('#insert-form [name=data]', '{"n": "one"}');
    const [refused] = await Promise.all([
      owner.waitForResponse((r) => r.url().endsWith('/insert')),
      owner.click('#insert-form button[type=submit]'),
    ]);
    assert.equal(refused.status(), 400);
    assert.equal((await refused.json()).path, '/n');
    await until('the refusal shown', async () => (await owner.textContent('#insert-message')).includes('does not match'));
    await insert(owner, { event: 'checked:1', data: { n: 1 } });
    await insert(owner, { event: 'secret-1', data: { n: 1 } });
    await insert(other, { event: 'dave-1', data: { n: 1 } });
    await until('dave-1 on both pages', async () => (await shown(other, 'dave-1')).length && (await shown(owner, 'dave-1')).length);
    await until('secret-1 on the owner page', () => shown(owner, 'secret-1').then((s) => s.length));

    // Dave becomes a reader: new events reach his page live.
    await owner.fill('#member-form [name=username]', 'dave');
    await owner.selectOption('#member-form [name=role]', 'reader');
    await owner.click('#member-form button[type=submit]');
    await owner.locator('#members tr[data-member="dave"]').waitFor({ timeout: DEADLINE });
    await insert(owner, { event: 'secret-2', data: { n: 2 } });
    await until('secret-2 on the member page', () => shown(other, 'secret-2').then((s) => s.length));

    // Removed: what follows never reaches his page, his own events do.
    await owner.click('#members tr[data-member="dave"] button');
    await until('dave to be removed', async () => (await owner.locator('#members tr[data-member]').count()) === 0);
    await insert(owner, { event: 'secret-3', data: { n: 3 } });
    await insert(other, { event: 'dave-2', data: { n: 2 } });
    await until('dave-2 on both pages', async () => (await shown(other, 'dave-2')).length && (await shown(owner, 'dave-2')).length);
    await until('secret-3 on the owner page', () => shown(owner, 'secret-3').then((s) => s.length));
    const seen = (await feed(other)).map((i) => i.event);
    assert.ok(!seen.includes('secret-1') && !seen.includes('secret-3'), `the other page showed ${seen}`);
    // Browsing the collection is refused too.
    await other.fill('#browse-form [name=collection_id]', await owner.inputValue('#sharing-form [name=collection_id]'));
    await other.click('#browse-form button[type=submit]');
    await until('the refusal', async () => (await other.textContent('#browse-message')).includes('private'));

    // Made an administrator (on the running server's store), carol's
    // console shows the administration panel; disabling dave ends his stream.
    assert.equal(await owner.isVisible('#admin'), false);
    await new Promise((resolve, reject) => {
      const grant = spawn(BROKER_BIN, ['admin', 'grant', 'carol', '--save-path', join(dataDir, 'broker.db')], { stdio: 'ignore' });
      grant.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`broker admin grant exited with ${code}`))));
    });
    await owner.reload();
    await owner.locator('#admin').waitFor({ state: 'visible', timeout: DEADLINE });
    await owner.fill('#admin-search [name=search]', 'dav');
    await owner.click('#admin-search button[type=submit]');
    await owner.locator('#admin-users tr[data-user="dave"] button', { hasText: 'Disable' }).click();
    await owner.locator('#admin-users tr[data-user="dave"][data-disabled="true"]').waitFor({ timeout: DEADLINE });
    await until("the disabled user's stream to end", () => streamState(other).then((s) => s !== 'live'));
    assert.deepEqual(pageErrors, []);
  } finally {
    await otherBrowser.close();
    rmSync(otherProfile, { recursive: true, force: true });
  }
});

test("the console follows the server's password rule", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'broker-e2e-rule-'));
  const strict = new Broker(await freePort(), dir, [examplesUrl]);
  strict.args.push('--min-password-length', '12');
  await strict.start();
  const page = await context.newPage();
  try {
    page.on('pageerror', (error) => pageErrors.push(error));
    await page.goto(`${strict.url}/`);
    const password = page.locator('#signup-form [name=password]');
    await until('the rule on the sign-up form', () => password.getAttribute('minlength').then((m) => m === '12'));
    assert.equal(await password.getAttribute('placeholder'), 'at least 12 characters');
    // The browser refuses a shorter one: no request is made, no account made.
    await page.fill('#signup-form [name=username]', 'erin');
    await password.fill('too short');
    await page.click('#signup-form button[type=submit]');
    assert.equal(await password.evaluate((el) => el.validity.tooShort), true);
    assert.equal((await fetch(`${strict.url}/login`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'erin', password: 'too short' }),
    })).status, 401);
    await password.fill('long enough, surely');
    await page.click('#signup-form button[type=submit]');
    await until('erin to be logged in', async () => (await page.textContent('#whoami')) === 'logged in as erin');
    assert.deepEqual(pageErrors, []);
  } finally {
    await page.close();
    await strict.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
