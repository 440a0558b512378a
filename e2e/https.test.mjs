// Broker over HTTPS in a real browser. Debian's Chromium trusts a CA made
// here (put into the NSS database of a HOME of its own: no
// --ignore-certificate-errors); one page opens twelve EventSources over
// HTTP/2 and every one receives a live event, also after the certificate is
// replaced; the control, over plain HTTP/1.1, stops at six.
//
//   BROKER_BIN (default target/debug/broker), CHROMIUM (default /usr/bin/chromium)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, launch, until } from './support.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BROKER_BIN = process.env.BROKER_BIN || join(ROOT, 'target/debug/broker');
const TARGET = join(ROOT, 'target');
const STREAMS = 12;

let dir;
let context;
const brokers = [];

const openssl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** A CA, and a certificate it signs for localhost (written over the last). */
function makeCa() {
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.pem'), '-days', '2',
    '-subj', '/CN=Broker e2e CA', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
}

function issue(organisation) {
  const csr = join(dir, 'server.csr');
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', join(dir, 'key.new'), '-out', csr, '-subj', `/CN=localhost/O=${organisation}`);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
  openssl('x509', '-req', '-in', csr, '-CA', join(dir, 'ca.pem'), '-CAkey', join(dir, 'ca.key'),
    '-CAcreateserial', '-out', join(dir, 'cert.new'), '-days', '2', '-extfile', join(dir, 'ext.cnf'));
  // Key first, then certificate: the broker reloads when both are new.
  writeFileSync(join(dir, 'key.pem'), readFileSync(join(dir, 'key.new')));
  writeFileSync(join(dir, 'cert.pem'), readFileSync(join(dir, 'cert.new')));
}

/** Starts the broker binary; resolves once it answers (over TLS with `tls`). */
async function startBroker(name, extra, url) {
  const log = join(TARGET, `e2e-${name}.log`);
  const args = ['--host', '127.0.0.1', '--save-path', join(dir, name), '--secret', 'e2e', ...extra];
  const child = spawn(BROKER_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = createWriteStream(log);
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  brokers.push(child);
  await until(`${name} to log that it listens`, () => logged(log, 'listening on'));
  return { url, log };
}

/** Whether the log file says `text` (it may not exist yet). */
function logged(log, text) {
  try {
    return readFileSync(log, 'utf8').includes(text);
  } catch {
    return false;
  }
}

before(async () => {
  mkdirSync(TARGET, { recursive: true });
  dir = mkdtempSync(join(tmpdir(), 'broker-e2e-https-'));
  makeCa();
  issue('first');
  // Chromium on Linux trusts the CAs of ~/.pki/nssdb: a HOME of its own.
  const home = join(dir, 'home');
  const nssdb = join(home, '.pki', 'nssdb');
  mkdirSync(nssdb, { recursive: true });
  execFileSync('certutil', ['-d', `sql:${nssdb}`, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', `sql:${nssdb}`, '-A', '-t', 'C,,', '-n', 'broker-e2e', '-i', join(dir, 'ca.pem')]);
  context = await launch(join(dir, 'profile'), { env: { ...process.env, HOME: home } });
});

after(async () => {
  await context?.close();
  for (const child of brokers) child.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

/**
 * In the page: signs up, then opens STREAMS EventSources on `/events` for a
 * new collection, counting per stream whether it opened and the `ping`
 * events it received. Resolves to the token and the collection.
 */
function openStreams(page) {
  return page.evaluate(async (count) => {
    const user = `u${Math.random().toString(16).slice(2)}`;
    const collection = crypto.randomUUID();
    const post = (path, body, jwt) => fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(jwt ? { authorization: `Bearer ${jwt}` } : {}) },
      body: JSON.stringify(body),
    }).then((r) => r.json());
    await post('/users', { username: user, password: 'pw', collection_id: collection });
    const { jwt } = await post('/login', { username: user, password: 'pw' });
    window.ping = () => post('/insert', { event: 'ping', collection_id: collection, timestamp: 0, data: {} }, jwt);
    window.streams = [];
    for (let i = 0; i < count; i++) {
      const source = new EventSource(`/events?collection_id=${collection}`);
      const state = { source, open: false, pings: 0 };
      source.onopen = () => { state.open = true; };
      source.addEventListener('ping', () => { state.pings += 1; });
      window.streams.push(state);
    }
    return { jwt, collection };
  }, STREAMS);
}

const opened = (page) => page.evaluate(() => window.streams.filter((s) => s.open).length);
const pinged = (page, n) => page.evaluate((n) => window.streams.filter((s) => s.pings >= n).length, n);
const protocol = (page) => page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);

test('over HTTPS, twelve EventSources on one page all receive live events, before and after a certificate reload', async () => {
  const port = await freePort();
  const tls = ['--tls-cert', join(dir, 'cert.pem'), '--tls-key', join(dir, 'key.pem')];
  const broker = await startBroker('https', ['--port', String(port), ...tls], `https://localhost:${port}`);
  const page = await context.newPage();
  assert.equal((await page.goto(`${broker.url}/healthz`)).status(), 200);
  assert.equal(await protocol(page), 'h2');
  await openStreams(page);
  await until('all twelve streams to open', async () => (await opened(page)) === STREAMS);
  await page.evaluate(() => window.ping());
  await until('the event on every stream', async () => (await pinged(page, 1)) === STREAMS);

  // A new certificate from the same CA: new connections get it, the open
  // streams carry on.
  issue('second');
  await until('the broker to reload its certificate', () => logged(broker.log, 'TLS certificate reloaded'));
  await page.evaluate(() => window.ping());
  await until('the event after the reload on every stream', async () => (await pinged(page, 2)) === STREAMS);
  // The console works over HTTPS, beside the twelve streams of the other page.
  const console = await context.newPage();
  const errors = [];
  console.on('pageerror', (error) => errors.push(error));
  await console.goto(`${broker.url}/`);
  await until('the console stream to be live', () => console.$eval('#stream-status', (el) => el.dataset.state === 'live'));
  await page.evaluate(() => window.ping());
  await console.locator('#feed li[data-event="ping"]').first().waitFor({ timeout: 30_000 });
  assert.deepEqual(errors, []);
  await console.close();
  await page.close();
});

test('the control: over plain HTTP/1.1 the same page gets six streams, and the rest wait', async () => {
  const port = await freePort();
  const broker = await startBroker('http', ['--port', String(port)], `http://127.0.0.1:${port}`);
  const page = await context.newPage();
  await page.goto(`${broker.url}/healthz`);
  assert.equal(await protocol(page), 'http/1.1');
  const { jwt, collection } = await openStreams(page);
  await until('six streams to open', async () => (await opened(page)) === 6);
  // The page's own six connections are taken: insert from here.
  const inserted = await fetch(`${broker.url}/insert`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${jwt}` },
    body: JSON.stringify({ event: 'ping', collection_id: collection, timestamp: 0, data: {} }),
  });
  assert.equal(inserted.status, 200);
  await until('the event on the six open streams', async () => (await pinged(page, 1)) === 6);
  // Once the six have the event, the other six still wait for a connection.
  assert.equal(await opened(page), 6);
  assert.equal(await page.evaluate(() => window.streams.filter((s) => s.source.readyState === 0).length), 6);
  await page.close();
});
