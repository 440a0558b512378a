// Three Broker nodes on one PostgreSQL database behind nginx, started by
// deploy/cluster.sh exactly as documented; a page in headless Chromium holds
// an EventSource through nginx while the node serving it is killed with
// SIGKILL and events are inserted on the others.
//
//   BROKER_BIN (default target/debug/broker), CHROMIUM (default /usr/bin/chromium),
//   BROKER_TEST_PG (default postgres://postgres@127.0.0.1:5432/postgres)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, launch, until } from './support.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ADMIN = process.env.BROKER_TEST_PG || 'postgres://postgres@127.0.0.1:5432/postgres';

const database = `broker_e2e_${process.pid}_${Date.now()}`;
const psql = (sql) => execFileSync('psql', [ADMIN, '-qAtc', sql]);
const run = mkdtempSync(join(tmpdir(), 'broker-cluster-'));
let cluster, context, lb, nodes;

before(async () => {
  psql(`CREATE DATABASE ${database}`);
  const port = await freePort();
  lb = `http://127.0.0.1:${port}`;
  nodes = [1, 2, 3].map((i) => ({ port: port + i, url: `http://127.0.0.1:${port + i}` }));
  const url = `${ADMIN.replace(/\/[^/]*$/, '')}/${database}`;
  cluster = spawn('bash', [join(ROOT, 'deploy/cluster.sh'), '-n', '3', '-p', String(port), '-d', url, '-r', run], {
    env: { ...process.env, BROKER_RETRY: '500' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  cluster.exited = new Promise((resolve) => cluster.once('exit', resolve));
  await until('the cluster behind nginx', () => fetch(`${lb}/readyz`).then((r) => r.ok, () => false));
  for (const node of nodes) {
    node.pid = Number(readFileSync(join(run, `node-${node.port}.pid`), 'utf8'));
    await until(`node ${node.port}`, () => fetch(`${node.url}/readyz`).then((r) => r.ok, () => false));
  }
  context = await launch(mkdtempSync(join(tmpdir(), 'broker-chromium-')));
});

after(async () => {
  await context?.close();
  cluster?.kill('SIGTERM');
  await cluster?.exited;
  try { psql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`); } catch {}
  rmSync(run, { recursive: true, force: true });
});

async function post(base, path, body, jwt) {
  const headers = { 'content-type': 'application/json' };
  if (jwt) headers.authorization = `Bearer ${jwt}`;
  const response = await fetch(`${base}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
  assert.equal(response.status, 200, `${path}: ${await response.clone().text()}`);
  return response.json();
}

/** How many streams a node has open, from its metrics. */
async function subscribers(node) {
  const text = await fetch(`${node.url}/metrics`).then((r) => r.text(), () => '');
  const line = text.split('\n').find((l) => l.startsWith('broker_subscribers '));
  return line ? Number(line.split(' ')[1]) : 0;
}

test('an EventSource through nginx survives kill -9 of its node with every event exactly once', async () => {
  const collection = crypto.randomUUID();
  await post(lb, '/users', { username: 'alice', password: 'secret-pw', collection_id: collection });
  const { jwt } = await post(lb, '/login', { username: 'alice', password: 'secret-pw' });

  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${lb}/healthz`);
  await page.evaluate(() => {
    window.feed = [];
    window.opened = 0;
    const source = new EventSource('/events');
    source.onopen = () => { window.opened += 1; };
    source.addEventListener('tick', (e) => window.feed.push({ id: Number(e.lastEventId), n: JSON.parse(e.data) }));
  });
  await until('the stream to open', () => page.evaluate(() => window.opened === 1));
  const serving = await until('the node serving the page', async () => {
    for (const node of nodes) if ((await subscribers(node)) === 1) return node;
    return null;
  });
  const others = nodes.filter((n) => n !== serving);

  // The last event is a marker: anything repeated would come before it.
  const TOTAL = 41;
  for (let n = 0; n < TOTAL; n++) {
    if (n === 10) {
      await until('the page to see the first events', () => page.evaluate(() => window.feed.length >= 5));
      process.kill(serving.pid, 'SIGKILL');
    }
    await post(others[n % 2].url, '/insert', { event: 'tick', collection_id: collection, timestamp: 0, data: n }, jwt);
  }
  await until('the marker on the page', () => page.evaluate((last) => window.feed.some((e) => e.n === last), TOTAL - 1));
  const feed = await page.evaluate(() => window.feed);
  assert.deepEqual(feed.map((e) => e.id), Array.from({ length: TOTAL }, (_, i) => i + 1), 'ids 1..N once each, in order');
  assert.deepEqual(feed.map((e) => e.n), Array.from({ length: TOTAL }, (_, i) => i), 'every event once');
  assert.ok(await page.evaluate(() => window.opened) >= 2, 'the page reconnected');
  const counts = await Promise.all(others.map(subscribers));
  assert.equal(counts.reduce((a, b) => a + b, 0), 1, 'a surviving node serves the page now');
  assert.deepEqual(errors, []);
});

test('presence and signals through nginx: a join and a signal reach the page, and kill -9 of a node makes its users leave', async () => {
  const board = crypto.randomUUID();
  const login = async (name) => {
    await post(lb, '/users', { username: name, password: 'secret-pw', collection_id: crypto.randomUUID() });
    return (await post(lb, '/login', { username: name, password: 'secret-pw' })).jwt;
  };
  const [bob, carol] = [await login('bob'), await login('carol')];
  const alive = [];
  for (const node of nodes) if (await fetch(`${node.url}/readyz`).then((r) => r.ok, () => false)) alive.push(node);
  const before = await Promise.all(alive.map(subscribers));

  // bob's page watches the board through nginx.
  const page = await context.newPage();
  await page.goto(`${lb}/healthz`);
  await page.evaluate(([board, token]) => {
    window.presence = [];
    window.signals = [];
    const source = new EventSource(`/events?collection_id=${board}&presence=true&signals=true&token=${token}`);
    source.addEventListener('presence', (e) => window.presence.push(JSON.parse(e.data)));
    source.addEventListener('signal', (e) => window.signals.push(JSON.parse(e.data)));
  }, [board, bob]);
  await until('the list', () => page.evaluate(() => window.presence.length === 1));
  const serving = await until('the node serving the page', async () => {
    const now = await Promise.all(alive.map(subscribers));
    return alive.find((_, i) => now[i] > before[i]) ?? null;
  });
  // carol opens the board on another node, straight to it.
  const other = alive.find((n) => n !== serving);
  const carols = new AbortController();
  const response = await fetch(`${other.url}/events?collection_id=${board}`, {
    headers: { authorization: `Bearer ${carol}` }, signal: carols.signal,
  });
  assert.equal(response.status, 200);
  const joined = await until('carol’s join on bob’s page', () =>
    page.evaluate(() => window.presence.find((p) => p.type === 'join' && p.username === 'carol')));
  assert.equal(joined.collection_id, board);
  // carol signals through nginx: bob's page gets it.
  await post(lb, '/signal', { collection_id: board, event: 'moving', data: { card: 7 } }, carol);
  await until('the signal', () => page.evaluate(() => window.signals.some((s) => s.data.card === 7)));
  // carol's node dies: she leaves bob's page within 10 s.
  const killed = Date.now();
  process.kill(other.pid, 'SIGKILL');
  await until('carol’s leave', () =>
    page.evaluate(() => window.presence.some((p) => p.type === 'leave' && p.username === 'carol')), 12_000);
  assert.ok(Date.now() - killed < 10_000, `left within 10 s (${Date.now() - killed} ms)`);
  carols.abort();
  await page.close();
});
