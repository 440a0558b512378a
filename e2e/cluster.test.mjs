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
