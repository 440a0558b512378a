// The example board (examples/board, built with Vite on @broker/react) in
// two headless Chromium profiles, two users, against the real binary: live
// updates both ways, and a scheduled card that appears at its time.
//
//   BROKER_BIN (default target/debug/broker), CHROMIUM (default /usr/bin/chromium)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, launch, serveDir, until } from './support.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BROKER_BIN = process.env.BROKER_BIN || join(ROOT, 'target/debug/broker');
const DIST = join(ROOT, 'examples/board/dist');

let broker;
let web;
let appUrl;
let dir;
const contexts = [];
const pageErrors = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'broker-board-'));
  const [brokerPort, webPort] = [await freePort(), await freePort()];
  const origin = `http://127.0.0.1:${webPort}`;
  broker = spawn(BROKER_BIN, [
    '--host', '127.0.0.1', '--port', String(brokerPort), '--save-path', join(dir, 'data'),
    '--secret', 'board', '--origin', origin,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = createWriteStream(join(ROOT, 'target/e2e-board-broker.log'));
  broker.stdout.pipe(log);
  broker.stderr.pipe(log);
  const brokerUrl = `http://127.0.0.1:${brokerPort}`;
  await until('broker to answer', () => fetch(`${brokerUrl}/healthz`).then((r) => r.ok, () => false));
  web = await serveDir(DIST, webPort);
  appUrl = `${origin}/?broker=${encodeURIComponent(brokerUrl)}`;
});

after(async () => {
  for (const context of contexts) await context.close();
  web?.close();
  if (broker) {
    const exited = new Promise((resolve) => broker.once('exit', resolve));
    broker.kill('SIGTERM');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
});

/** A user signed up and logged in on the board, in a browser profile of its own. */
async function user(name, query = '', watch = () => {}, status = 'open') {
  const context = await launch(join(dir, `profile-${name}`));
  contexts.push(context);
  const page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(error));
  watch(page);
  await page.goto(appUrl + query);
  await page.getByLabel('username').fill(name);
  await page.getByLabel('password').fill('correct horse battery');
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.locator(`[data-status="${status}"]`).waitFor();
  return page;
}

const titles = (page) => page.locator('[data-card]').evaluateAll((cards) => cards.map((c) => c.dataset.card).sort());

let alice;
let bob;
let carol;

test('two users see each other’s cards live, and a scheduled card at its time', async () => {
  alice = await user('alice');
  bob = await user('bob');

  await alice.getByLabel('title').fill('From Alice');
  await alice.getByRole('button', { name: 'Add', exact: true }).click();
  await until('bob to see Alice’s card', async () => (await titles(bob)).includes('From Alice'));

  await bob.getByLabel('title').fill('From Bob');
  await bob.getByRole('button', { name: 'Add', exact: true }).click();
  await until('alice to see Bob’s card', async () => (await titles(alice)).includes('From Bob'));

  // Bob moves Alice's card to "doing": Alice sees it move.
  await bob.locator('[data-card="From Alice"]').getByRole('button', { name: '→' }).click();
  await until('the card to move for Alice', () =>
    alice.locator('[data-column="doing"] [data-card="From Alice"]').count());

  // A card scheduled 3 s ahead is absent until then, then there for both.
  await alice.getByLabel('title').fill('Later');
  await alice.getByLabel('delay').fill('3');
  const scheduled = Date.now();
  await alice.getByRole('button', { name: 'Add', exact: true }).click();
  await until('the insert to be accepted', async () => (await alice.getByLabel('title').inputValue()) === '');
  assert.ok(!(await titles(bob)).includes('Later'), 'not before its time');
  await until('the scheduled card for bob', async () => (await titles(bob)).includes('Later'));
  await until('the scheduled card for alice', async () => (await titles(alice)).includes('Later'));
  // Timestamps are whole seconds: it may come up to a second early, never more.
  assert.ok(Date.now() - scheduled >= 2000, 'it appeared at its time');
  assert.deepEqual(await titles(bob), ['From Alice', 'From Bob', 'Later']);
});

test('a team card reaches the team only; a cookie-mode page reads its stream by the cookie', async () => {
  // carol keeps no token in storage: her stream is authenticated by the cookie alone.
  const streams = [];
  carol = await user('carol', '&storage=cookie', (page) =>
    page.on('request', (r) => r.url().includes('/events?') && streams.push(r)));
  await alice.getByRole('button', { name: 'Create the team board' }).click();
  // The claim must have landed before a member is added to it, as a user would see it.
  await until('the team board to exist', () => alice.getByText('members: none yet').count());
  await alice.getByLabel('member').fill('carol');
  await alice.getByRole('button', { name: 'Add to the team' }).click();
  await until('carol in the team', () => alice.getByText('members: carol').count());
  await alice.getByLabel('title').fill('Team secret');
  await alice.getByLabel('team only').check();
  await alice.getByRole('button', { name: 'Add', exact: true }).click();
  await until('carol to see the team card', async () => (await titles(carol)).includes('Team secret'));
  await until('alice to see it', async () => (await titles(alice)).includes('Team secret'));
  await alice.getByLabel('title').fill('After the secret');
  await alice.getByRole('button', { name: 'Add', exact: true }).click();
  await until('bob to see the next card', async () => (await titles(bob)).includes('After the secret'));
  assert.ok(!(await titles(bob)).includes('Team secret'), 'bob is not in the team');
  const last = streams.at(-1);
  const headers = await last.allHeaders();
  assert.equal(headers.authorization, undefined, 'no token in a header');
  assert.match(headers.cookie ?? '', /broker_token=/);
  assert.equal(await carol.evaluate(() => localStorage.length), 0);
});

test('log out hides the team cards at once; the next user on that page never sees them; a password changed elsewhere ends a private view within a second', async () => {
  // alice's page (owner of the team board) notes every card it ever renders from now on.
  await alice.evaluate(() => {
    window.seen = new Set();
    const note = () => document.querySelectorAll('[data-card]').forEach((c) => window.seen.add(c.dataset.card));
    new MutationObserver(note).observe(document.body, { subtree: true, childList: true, attributes: true });
  });
  assert.ok((await titles(alice)).includes('Team secret'));
  await alice.getByRole('button', { name: 'Log out' }).click();
  await alice.getByRole('button', { name: 'Log in' }).waitFor();
  assert.deepEqual(await titles(alice), [], 'nothing of the board is left on screen');
  await alice.evaluate(() => window.seen.clear());
  // bob logs in on the same page, in the same tab: the public board, and why not the team's.
  await alice.getByLabel('username').fill('bob');
  await alice.getByLabel('password').fill('correct horse battery');
  await alice.getByRole('button', { name: 'Log in' }).click();
  await alice.locator('[data-status="forbidden"]').waitFor();
  await until('bob’s public cards on alice’s page', async () => (await titles(alice)).includes('After the secret'));
  assert.match(await alice.locator('[data-status]').textContent(), /members only/);
  const seen = await alice.evaluate(() => [...window.seen]);
  assert.ok(!seen.includes('Team secret'), `never rendered for bob: ${seen}`);

  // carol (a team member, in cookie mode) changes her password in another browser.
  assert.ok((await titles(carol)).includes('Team secret'));
  const context = await launch(join(dir, 'profile-carol-elsewhere'));
  contexts.push(context);
  const elsewhere = await context.newPage();
  elsewhere.on('pageerror', (error) => pageErrors.push(error));
  await elsewhere.goto(appUrl);
  await elsewhere.getByLabel('username').fill('carol');
  await elsewhere.getByLabel('password').fill('correct horse battery');
  await elsewhere.getByRole('button', { name: 'Log in' }).click();
  await elsewhere.getByLabel('current password').fill('correct horse battery');
  await elsewhere.getByLabel('new password').fill('a brand new horse');
  await elsewhere.getByRole('button', { name: 'Change password' }).click();
  await elsewhere.getByText('Password changed').waitFor();
  // The first browser's view ends within a second: back to the login form, no team card.
  await until('carol’s first page to log out', async () => (await titles(carol)).length === 0, 1000);
  await carol.getByRole('button', { name: 'Log in' }).waitFor({ timeout: 1000 });
  // The new password works there (and the board comes back).
  await carol.getByLabel('username').fill('carol');
  await carol.getByLabel('password').fill('a brand new horse');
  await carol.getByRole('button', { name: 'Log in' }).click();
  await until('carol back on the team board', async () => (await titles(carol)).includes('Team secret'));
});

test('each page shows who else is on the board, what they are moving right now, and who left', async () => {
  // Not in the team: the team board is forbidden to them, the shared one open.
  const [dave, erin] = [await user('dave', '', undefined, 'forbidden'), await user('erin', '', undefined, 'forbidden')];
  const here = (page) => page.locator('[data-here]').getAttribute('data-here');
  await until('each to see the other', async () =>
    (await here(dave)).split(',').includes('erin') && (await here(erin)).split(',').includes('dave'));
  // dave picks up a card: erin sees it at once, dave does not see his own.
  await dave.locator('[data-card="From Alice"]').dispatchEvent('pointerdown');
  await until('erin to see dave moving the card', async () =>
    (await erin.getByRole('status').allTextContents()).includes('dave is moving “From Alice”'));
  assert.equal(await dave.getByRole('status').count(), 0, 'no echo of one’s own signal');
  // dave closes his page: he leaves erin's board after the grace period (5 s), plus 1 s at most.
  const closed = Date.now();
  await dave.close();
  await until('dave to leave', async () => !(await here(erin)).split(',').includes('dave'), 6_000 + 1_000);
  assert.ok(Date.now() - closed >= 4_000, 'not before the grace period');
});

test('offline: cards added and moved offline survive a reload and arrive once, in order, when the page is back online', async () => {
  const logs = [];
  const frank = await user('frank', '', (page) => page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`)), 'forbidden');
  const grace = await user('grace', '', undefined, 'forbidden');
  // The service worker has the board's files: it opens without a network.
  await frank.locator('html[data-offline="ready"]').waitFor({ state: 'attached' }).catch((e) => {
    throw new Error(`${e.message}\nthe page said: ${logs.join('\n')}`);
  });
  const context = frank.context();
  await context.setOffline(true);
  for (const title of ['Offline 1', 'Offline 2', 'Offline 3']) {
    await frank.getByLabel('title').fill(title);
    await frank.getByRole('button', { name: 'Add', exact: true }).click();
  }
  await frank.locator('[data-pending="3"]').waitFor();
  await frank.locator('[data-card="Offline 2"]').getByRole('button', { name: '→' }).click();
  await frank.locator('[data-pending="4"]').waitFor();
  await frank.reload();
  await frank.locator('[data-pending="4"]').waitFor();
  assert.equal(await frank.locator('[data-column="doing"] [data-card="Offline 2"][data-unsent]').count(), 1);
  assert.ok(!(await titles(grace)).includes('Offline 1'), 'nothing left the page while offline');

  await context.setOffline(false);
  const offline = ['Offline 1', 'Offline 2', 'Offline 3'];
  await until('grace to see the offline cards', async () => {
    const seen = await titles(grace);
    return offline.every((t) => seen.includes(t));
  });
  await until('the move to reach grace', () => grace.locator('[data-column="doing"] [data-card="Offline 2"]').count());
  await frank.locator('[data-pending]').waitFor({ state: 'detached' });
  // Exactly those four events, once each, in the order they were made.
  const stored = await grace.evaluate(async () => {
    const url = new URLSearchParams(location.search).get('broker');
    const headers = { authorization: `Bearer ${localStorage.getItem('broker_token')}` };
    const response = await fetch(`${url}/events/collections/3a7c9d52-6b1e-4f0a-9c8d-0b0a4d000001`, { headers });
    return (await response.json()).events
      .filter((e) => String(e.data?.title).startsWith('Offline'))
      .map((e) => `${e.data.title} ${e.data.column}`);
  });
  assert.deepEqual(stored, ['Offline 1 todo', 'Offline 2 todo', 'Offline 3 todo', 'Offline 2 doing']);
});
