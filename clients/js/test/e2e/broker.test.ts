// The client against the real Broker binary (built by `cargo build`;
// BROKER_BIN overrides its path), each test with its own data directory.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterEach, expect, it, onTestFinished, vi } from "vitest";
import { createServer as createHttpServer } from "node:http";
import { Webhook } from "standardwebhooks";
import { Broker, fileOutbox, type BrokerEvent, type OutboxReport } from "../../src/index.js";

const BIN = process.env.BROKER_BIN ?? resolve(__dirname, "../../../../target/debug/broker");
const running: { stop(): Promise<void> }[] = [];

afterEach(async () => {
  await Promise.all(running.splice(0).map((b) => b.stop()));
});

async function freePort(): Promise<number> {
  return new Promise((done) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

/** A Broker process on `port` with its data in `dir`; ready when it answers. */
async function start(dir: string, port: number, ...args: string[]) {
  const child: ChildProcess = spawn(
    BIN,
    ["--host", "127.0.0.1", "--port", String(port), "--save-path", dir, "--secret", "e2e", ...args],
    { stdio: ["ignore", "ignore", process.env.BROKER_LOG ? "inherit" : "ignore"] },
  );
  const url = `http://127.0.0.1:${port}`;
  await vi.waitFor(async () => expect((await fetch(`${url}/healthz`)).ok).toBe(true), { timeout: 20_000, interval: 50 });
  const handle = {
    url,
    /** Ends the process at once, as a crash would. */
    async kill() {
      const exited = new Promise((done) => child.once("exit", done));
      child.kill("SIGKILL");
      await exited;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((done) => child.once("exit", done));
      child.kill("SIGTERM");
      await exited;
    },
  };
  running.push(handle);
  return handle;
}

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "broker-e2e-"));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function user(url: string, name: string, options = {}): Promise<Broker> {
  const broker = new Broker({ url, ...options });
  await broker.signUp(name, "correct horse battery");
  await broker.logIn(name, "correct horse battery");
  return broker;
}

it("resumes across a server restart: nothing lost, nothing repeated, in order", async () => {
  const dir = dataDir();
  const port = await freePort();
  let server = await start(dir, port);
  const alice = await user(server.url, "alice");
  const reader = new Broker({ url: server.url });
  const seen: BrokerEvent[] = [];
  const sub = reader.subscribe({ onEvent: (e) => seen.push(e), maxBackoff: 500 });
  const board = crypto.randomUUID();
  for (let n = 0; n < 10; n++) await alice.insert(`card-${n % 3}`, board, { n });
  await vi.waitFor(() => expect(seen).toHaveLength(10), { timeout: 10_000 });
  await server.stop();
  server = await start(dir, port);
  // Inserted before the subscriber is back: the resume carries them.
  const again = new Broker({ url: server.url });
  await again.logIn("alice", "correct horse battery");
  for (let n = 10; n < 20; n++) await again.insert(`card-${n % 3}`, board, { n });
  await vi.waitFor(() => expect(seen).toHaveLength(20), { timeout: 20_000 });
  expect(seen.map((e) => (e.data as { n: number }).n)).toEqual([...Array(20).keys()]);
  expect(seen.map((e) => e.seq)).toEqual([...Array(20).keys()].map((n) => n + 1));
  expect((sub.state.get(board, "card-1")?.data as { n: number }).n).toBe(19);
  sub.close();
  for (const b of [alice, reader, again]) b.close();
}, 60_000);

it("a stream outlives its token: refreshed by itself, the stream goes on", async () => {
  const dir = dataDir();
  const server = await start(dir, await freePort(), "--expiry", "3", "--private-stream");
  const alice = await user(server.url, "alice");
  const tokens: (string | null)[] = [];
  alice.onToken((t) => tokens.push(t));
  const seen: number[] = [];
  const errors: number[] = [];
  const sub = alice.subscribe({
    onEvent: (e) => seen.push((e.data as { n: number }).n),
    onStatus: (_, error) => error && errors.push(error.status),
  });
  const collection = crypto.randomUUID();
  for (let n = 0; n < 16; n++) {
    await alice.insert("tick", collection, { n });
    await new Promise((r) => setTimeout(r, 500)); // 8 s: the first token lives 3
  }
  await vi.waitFor(() => expect(seen).toHaveLength(16), { timeout: 10_000 });
  expect(seen).toEqual([...Array(16).keys()]);
  expect(tokens.length).toBeGreaterThanOrEqual(2);
  expect(errors.filter((s) => s === 401)).toEqual([]);
  sub.close();
  alice.close();
}, 60_000);

it("a private collection's events reach its members only", async () => {
  const dir = dataDir();
  const server = await start(dir, await freePort());
  const [alice, bob, carol] = [await user(server.url, "alice"), await user(server.url, "bob"), await user(server.url, "carol")];
  const board = crypto.randomUUID();
  const open = crypto.randomUUID();
  await alice.claim(board, true);
  await alice.addMember(board, "bob", "reader");
  const seen = new Map<string, string[]>();
  const subs = [
    ["bob", bob],
    ["carol", carol],
    ["anonymous", new Broker({ url: server.url })],
  ].map(([name, client]) => {
    seen.set(name as string, []);
    return (client as Broker).subscribe({ onEvent: (e) => seen.get(name as string)!.push(e.event) });
  });
  await alice.insert("secret", board, { plan: "x" });
  await alice.insert("public", open, {});
  await vi.waitFor(() => expect([...seen.values()].every((events) => events.includes("public"))).toBe(true), { timeout: 10_000 });
  expect(seen.get("bob")).toEqual(["secret", "public"]);
  expect(seen.get("carol")).toEqual(["public"]);
  expect(seen.get("anonymous")).toEqual(["public"]);
  // The listing too: carol is refused with the server's status and message.
  const refused = await (async () => {
    for await (const event of carol.collectionEvents(board)) return event;
  })().catch((e) => e);
  expect(refused).toMatchObject({ name: "BrokerError", status: 403 });
  const bobs = [];
  for await (const event of bob.collectionEvents(board)) bobs.push(event.event);
  expect(bobs).toEqual(["secret"]);
  for (const s of subs) s.close();
  for (const b of [alice, bob, carol]) b.close();
}, 60_000);

it("password change, log out and the administration calls", async () => {
  const dir = dataDir();
  const server = await start(dir, await freePort());
  const alice = await user(server.url, "alice");
  const bob = await user(server.url, "bob");
  // alice becomes an administrator (the CLI works while the server runs).
  const granted = spawn(BIN, ["admin", "grant", "alice", "--save-path", dir], { stdio: "ignore" });
  expect(await new Promise((done) => granted.once("exit", done))).toBe(0);
  expect((await alice.me()).admin).toBe(true);
  const names = [];
  for await (const user of alice.users("", 1)) names.push(user.username);
  expect(names).toEqual(["alice", "bob"]);
  const bobId = (await bob.me()).id;
  // A changed password keeps this session and revokes the others.
  const elsewhere = new Broker({ url: server.url });
  await elsewhere.logIn("bob", "correct horse battery");
  await bob.changePassword("correct horse battery", "a new secret");
  expect((await bob.me()).username).toBe("bob");
  await expect(elsewhere.me()).rejects.toMatchObject({ status: 401 });
  // Disabled by the administrator: bob's token is refused.
  expect((await alice.setDisabled(bobId, true)).disabled).toBe(true);
  await expect(bob.me()).rejects.toMatchObject({ status: 401, message: "session ended: account disabled" });
  expect(bob.token).toBeNull();
  // Log out: the token is gone here and refused everywhere.
  const token = alice.token;
  await alice.logOut();
  expect(alice.token).toBeNull();
  const stale = new Broker({ url: server.url, storage: { get: () => token, set: () => {} } });
  await expect(stale.me()).rejects.toMatchObject({ status: 401 });
  for (const b of [alice, bob, elsewhere]) b.close();
}, 60_000);

it("a change of identity ends the old view: log out, another user, a password changed elsewhere", async () => {
  const server = await start(dataDir(), await freePort());
  const [alice, bob] = [await user(server.url, "alice"), await user(server.url, "bob")];
  const [team, board] = [crypto.randomUUID(), crypto.randomUUID()];
  await alice.claim(team, true);
  await alice.insert("card:1", team, { title: "secret plan" });
  await alice.insert("card:1", board, { title: "public card" });
  // One page, one client: alice reads both boards (they share card:1).
  const page = new Broker({ url: server.url });
  await page.logIn("alice", "correct horse battery");
  const statuses: string[] = [];
  const sub = page.subscribe({ collections: [team, board], onStatus: (s) => statuses.push(s) });
  await vi.waitFor(() => expect(sub.state.size).toBe(2), { timeout: 10_000 });
  expect(sub.state.get(team, "card:1")?.data).toEqual({ title: "secret plan" });
  expect(sub.state.get(board, "card:1")?.userId).toBe(alice.userId);
  // Log out: gone at once, and not read again anonymously.
  await page.logOut();
  expect(sub.state.size).toBe(0);
  expect(sub.status).toBe("unauthenticated");
  // bob logs in on the same page: the public card only, and told why not the team's.
  await page.logIn("bob", "correct horse battery");
  await vi.waitFor(() => expect(sub.status).toBe("forbidden"), { timeout: 10_000 });
  await vi.waitFor(() => expect(sub.state.size).toBe(1), { timeout: 10_000 });
  expect(sub.state.get(board, "card:1")?.data).toEqual({ title: "public card" });
  expect(sub.state.get(team, "card:1")).toBeUndefined();
  // Let in by alice: the same stream delivers the team's next card.
  await alice.addMember(team, "bob", "reader");
  await vi.waitFor(() => expect(sub.status).toBe("open"), { timeout: 10_000 });
  await alice.insert("card:2", team, { title: "welcome" });
  await vi.waitFor(() => expect(sub.state.get(team, "card:2")?.data).toEqual({ title: "welcome" }), { timeout: 10_000 });
  expect(statuses).toEqual(["connecting", "open", "unauthenticated", "connecting", "forbidden", "open"]);
  // bob changes his password in another tab: this page's private view ends within a second.
  const tab = new Broker({ url: server.url });
  await tab.logIn("bob", "correct horse battery");
  await tab.changePassword("correct horse battery", "another horse");
  const changed = Date.now();
  await vi.waitFor(() => expect(sub.status).toBe("unauthenticated"), { timeout: 1_000, interval: 10 });
  expect(Date.now() - changed).toBeLessThan(1_000);
  expect(sub.state.size).toBe(0);
  expect(page.token).toBeNull();
  sub.close();
  for (const b of [alice, bob, page, tab]) b.close();
}, 60_000);

it("insert, listing and stream hand over one event shape; cancel takes any of them", async () => {
  const server = await start(dataDir(), await freePort());
  const alice = await user(server.url, "alice");
  const board = crypto.randomUUID();
  const seen: BrokerEvent[] = [];
  const sub = alice.subscribe({ collections: [board], onEvent: (e) => seen.push(e) });
  await vi.waitFor(() => expect(sub.status).toBe("open"), { timeout: 10_000 });
  const now = await alice.insert("card:1", board, { title: "now" });
  expect(now.published).toBe(false); // stored first, published right after
  await vi.waitFor(() => expect(seen).toHaveLength(1), { timeout: 10_000 });
  const { seq, ...streamed } = seen[0];
  expect(seq).toBeGreaterThan(0);
  expect(streamed).toEqual({ ...now, published: true });
  const later = await alice.insert("card:2", board, { title: "later" }, new Date(Date.now() + 60_000));
  const listed: BrokerEvent[] = [];
  for await (const event of alice.collectionEvents(board)) listed.push(event);
  expect(listed.map((e) => e.id)).toEqual([now.id, later.id]);
  expect(listed[0]).toEqual({ ...now, published: true });
  expect((await alice.cancel(listed[1].id)).cancelled).toBe(true);
  sub.close();
  alice.close();
}, 60_000);

it("signals reach the other pages of a board at once, without the sender's echo, and are never stored", async () => {
  const dir = dataDir();
  const server = await start(dir, await freePort(), "--signal-rate", "5");
  const [alice, bob] = [await user(server.url, "alice"), await user(server.url, "bob")];
  const board = crypto.randomUUID();
  const got = { alice: [] as string[], bob: [] as string[] };
  const open = { alice: false, bob: false };
  const subs = (["alice", "bob"] as const).map((name) =>
    (name === "alice" ? alice : bob).subscribe({
      collections: [board],
      signals: name === "alice" ? "others" : true,
      onSignal: (s) => got[name].push(`${s.event}:${JSON.stringify(s.data)}:${s.userId === alice.userId ? "alice" : "bob"}`),
      onStatus: (status) => (open[name] = status === "open"),
    }),
  );
  await vi.waitFor(() => expect(open).toEqual({ alice: true, bob: true }), { timeout: 10_000 });
  const sent = await alice.signal("moving", board, { card: 7 });
  expect(sent).toEqual({ collectionId: board, event: "moving", userId: alice.userId, data: { card: 7 } });
  await bob.signal("typing", board, true);
  await vi.waitFor(() => expect(got.bob).toHaveLength(2), { timeout: 10_000 });
  await vi.waitFor(() => expect(got.alice).toHaveLength(1), { timeout: 10_000 });
  expect(got.bob).toEqual(['moving:{"card":7}:alice', "typing:true:bob"]);
  expect(got.alice).toEqual(["typing:true:bob"]);
  // Nothing stored, no event id moved.
  for await (const event of alice.collectionEvents(board)) throw new Error(`stored: ${event.event}`);
  expect(subs.map((s) => s.lastEventId)).toEqual([undefined, undefined]);
  // Past --signal-rate: 429 with the time to wait.
  const results = await Promise.allSettled(Array.from({ length: 8 }, () => bob.signal("typing", board, true)));
  const refusal = results.find((r) => r.status === "rejected");
  expect(refusal && (refusal as PromiseRejectedResult).reason).toMatchObject({ status: 429, retryAfter: 1 });
  for (const s of subs) s.close();
  for (const b of [alice, bob]) b.close();
}, 60_000);

it("presence: each page sees who else has the board open, and who left", async () => {
  const dir = dataDir();
  const server = await start(dir, await freePort(), "--presence-grace-ms", "300");
  const [alice, bob] = [await user(server.url, "alice"), await user(server.url, "bob")];
  const board = crypto.randomUUID();
  const seen: string[][] = [];
  const alices = alice.subscribe({
    collections: [board],
    presence: true,
    onPresence: (p) => seen.push(p.users.map((u) => u.username)),
  });
  await vi.waitFor(() => expect(seen.at(-1)).toEqual(["alice"]), { timeout: 10_000 });
  const bobs = bob.subscribe({ collections: [board] });
  await vi.waitFor(() => expect(seen.at(-1)).toEqual(["alice", "bob"]), { timeout: 10_000 });
  expect(alices.presence.get(board)?.users.map((u) => u.username)).toEqual(["alice", "bob"]);
  const asked = await bob.presence(board);
  expect(asked.users.map((u) => [u.username, u.userId])).toEqual([["alice", alice.userId], ["bob", bob.userId]]);
  bobs.close(); // bob closes the page: he leaves after the grace period
  await vi.waitFor(() => expect(seen.at(-1)).toEqual(["alice"]), { timeout: 10_000 });
  alices.close();
  for (const b of [alice, bob]) b.close();
}, 60_000);

/** A fetch that Broker's answers to `/insert` never reach while `cut` says so (after the server took the request). */
function cutting(cut: () => boolean): typeof fetch {
  return async (input, init) => {
    const response = await fetch(input, init);
    if (String(input).endsWith("/insert") && cut()) throw new TypeError("connection reset");
    return response;
  };
}

/** A fetch whose inserts fail as offline until `goOnline()`. */
function network() {
  let online = false;
  const offline: typeof fetch = (input, init) =>
    online || !String(input).endsWith("/insert") ? fetch(input, init) : Promise.reject(new TypeError("offline"));
  return { offline, goOnline: () => void (online = true) };
}

it("retries an insert whose answer was lost, and stores it once", async () => {
  const server = await start(dataDir(), await freePort());
  let cuts = 2;
  const alice = await user(server.url, "alice", { fetch: cutting(() => cuts-- > 0) });
  const board = crypto.randomUUID();
  const event = await alice.insert("card", board, { n: 1 });
  expect(cuts).toBe(-1);
  const stored = [];
  for await (const e of alice.collectionEvents(board)) stored.push(e);
  expect(stored.map((e) => e.id)).toEqual([event.id]);
});

it("queues inserts offline in a file, across a restart of the app, and sends them once, in order", async () => {
  const server = await start(dataDir(), await freePort());
  const file = join(dataDir(), "outbox.json");
  const { offline, goOnline } = network();
  const first = await user(server.url, "alice", { fetch: offline, outbox: fileOutbox(file) });
  const board = crypto.randomUUID();
  const reports: string[] = [];
  first.onOutbox((r: OutboxReport) => reports.push(`${r.type} ${(r.entry.data as { n: number }).n}`));
  for (const n of [1, 2, 3]) void first.insert("card", board, { n }, new Date(), { key: `k${n}` });
  await vi.waitFor(() => expect(first.outboxStatus.pending).toBe(3));
  expect((await first.cancel("k2")).cancelled).toBe(true);
  expect(first.outboxStatus).toMatchObject({ pending: 2 });
  expect(first.outboxStatus.lastError?.status).toBe(0);
  first.close();

  // The app starts again, still offline, then the network comes back.
  const again = new Broker({ url: server.url, fetch: offline, outbox: fileOutbox(file) });
  await again.logIn("alice", "correct horse battery");
  void again.insert("card", board, { n: 4 });
  const sent: number[] = [];
  again.onOutbox((r) => r.type === "sent" && sent.push((r.event.data as { n: number }).n));
  goOnline();
  await again.flush();
  await vi.waitFor(() => expect(again.outboxStatus).toEqual({ pending: 0, lastError: null }));
  expect(sent, reports.join(", ")).toEqual([1, 3, 4]);
  const stored = [];
  for await (const e of again.collectionEvents(board)) stored.push((e.data as { n: number }).n);
  expect(stored).toEqual([1, 3, 4]);
  expect(reports.filter((r) => !r.startsWith("retrying"))).toEqual(["queued 1", "queued 2", "queued 3", "cancelled 2"]);
  again.close();
});

it("drops the queued inserts of a user who logs out: another user never sends them", async () => {
  const server = await start(dataDir(), await freePort());
  const { offline, goOnline } = network();
  const broker = await user(server.url, "alice", { fetch: offline, outbox: true });
  const board = crypto.randomUUID();
  const queued = broker.insert("card", board, "alice's");
  await vi.waitFor(() => expect(broker.outboxStatus.pending).toBe(1));
  await broker.logOut();
  await expect(queued).rejects.toThrow("logged out before it was sent");
  await broker.signUp("bob", "correct horse battery");
  await broker.logIn("bob", "correct horse battery");
  goOnline();
  await broker.insert("card", board, "bob's");
  const stored = [];
  for await (const e of broker.collectionEvents(board)) stored.push(e.data);
  expect(stored).toEqual(["bob's"]);
  broker.close();
});

it("schemas: an insert that does not match fails with where, and retention is set the same way", async () => {
  const server = await start(dataDir(), await freePort());
  const alice = await user(server.url, "alice");
  const board = crypto.randomUUID();
  await alice.claim(board, false);
  const card = { type: "object", required: ["title"], properties: { title: { type: "string" } } };
  expect(await alice.setSchema(board, "card:*", card)).toEqual({ "card:*": card });
  const refused = await alice.insert("card:1", board, { title: 7 }).catch((e) => e);
  expect(refused).toMatchObject({ status: 400, path: "/title" });
  await alice.insert("card:1", board, { title: "ok" });
  expect(await alice.schemas(board)).toEqual({ "card:*": card });
  expect(await alice.deleteSchema(board, "card:*")).toEqual({});
  expect((await alice.setRetention(board, { keepLatest: 1 })).retention).toEqual({ keep_latest: 1 });
});

const LOCAL_WEBHOOKS = ["--webhook-allow-http", "--webhook-allow-private"];

it("webhooks: the example receiver verifies every event of the board, in order, and refuses a forged one", async () => {
  const server = await start(dataDir(), await freePort(), ...LOCAL_WEBHOOKS);
  const alice = await user(server.url, "alice");
  const board = crypto.randomUUID();
  await alice.claim(board);
  const port = await freePort();
  const hook = await alice.addWebhook(board, `http://127.0.0.1:${port}/`, { events: ["card:*"] });
  expect(hook.secret).toMatch(/^whsec_/);
  expect((await alice.webhooks(board)).map((h) => [h.id, h.secret])).toEqual([[hook.id, undefined]]);
  const receiver = spawn("node", [resolve(__dirname, "../../../../examples/webhook-receiver/receiver.mjs")], {
    env: { ...process.env, WEBHOOK_SECRET: hook.secret, PORT: String(port) },
    stdio: ["ignore", "pipe", "ignore"],
  });
  onTestFinished(() => void receiver.kill());
  const lines: { id: string; event: string; data: { n: number } }[] = [];
  let buffered = "";
  receiver.stdout!.on("data", (chunk: Buffer) => {
    buffered += chunk.toString();
    const complete = buffered.split("\n");
    buffered = complete.pop()!;
    lines.push(...complete.map((line) => JSON.parse(line)));
  });
  const ids: string[] = [];
  for (let n = 0; n < 10; n++) {
    ids.push((await alice.insert(`card:${n}`, board, { n })).id);
    await alice.insert("title", board, { n });
  }
  await vi.waitFor(() => expect(lines).toHaveLength(10), { timeout: 20_000, interval: 50 });
  expect(lines.map((l) => l.id)).toEqual(ids);
  expect(lines.map((l) => l.data.n)).toEqual([...Array(10).keys()]);
  const forged = await fetch(`http://127.0.0.1:${port}/`, {
    method: "POST",
    headers: { "webhook-id": ids[0], "webhook-timestamp": String(Math.floor(Date.now() / 1000)), "webhook-signature": "v1,AAAA" },
    body: JSON.stringify({ type: "event.published", data: {} }),
  });
  expect(forged.status).toBe(400);
  const seen = await alice.webhook(board, hook.id);
  expect(seen.attempts[0]).toMatchObject({ status: 204, error: null, event_id: ids[9] });
}, 60_000);

it("webhooks: through 500s and a kill -9 of Broker, every event arrives verified, in order, retries with the same webhook-id", async () => {
  const dir = dataDir();
  const brokerPort = await freePort();
  let server = await start(dir, brokerPort, ...LOCAL_WEBHOOKS);
  const alice = await user(server.url, "alice");
  const board = crypto.randomUUID();
  await alice.claim(board);
  let verify: Webhook | undefined;
  const got: { id: string; n: number; status: number }[] = [];
  const http = createHttpServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      // Every request verifies, retries included (throws otherwise).
      const message = verify!.verify(body, request.headers as Record<string, string>) as { data: { data: { n: number } } };
      const status = got.length === 3 || got.length === 4 ? 500 : 200;
      got.push({ id: String(request.headers["webhook-id"]), n: message.data.data.n, status });
      setTimeout(() => response.writeHead(status).end(), 20);
    });
  });
  await new Promise<void>((done) => http.listen(0, "127.0.0.1", done));
  onTestFinished(() => void http.close());
  const { port } = http.address() as { port: number };
  const hook = await alice.addWebhook(board, `http://127.0.0.1:${port}/hook`);
  verify = new Webhook(hook.secret!);
  const ids: string[] = [];
  for (let n = 0; n < 40; n++) ids.push((await alice.insert("card", board, { n })).id);
  await vi.waitFor(() => expect(got.length).toBeGreaterThan(12), { timeout: 20_000, interval: 20 });
  await server.kill();
  const before = got.length;
  server = await start(dir, brokerPort, ...LOCAL_WEBHOOKS);
  await vi.waitFor(() => expect(got.at(-1)?.n).toBe(39), { timeout: 30_000, interval: 50 });
  // In order, nothing missing: each event first arrives after the one before it.
  const firsts = got.filter((g, i) => got.findIndex((h) => h.id === g.id) === i);
  expect(firsts.map((g) => g.id)).toEqual(ids);
  expect(firsts.map((g) => g.n)).toEqual([...Array(40).keys()]);
  // The failed event came again with its webhook-id until taken.
  expect(got.slice(3, 6).map((g) => [g.id, g.status])).toEqual([
    [ids[3], 500],
    [ids[3], 500],
    [ids[3], 200],
  ]);
  expect(before).toBeLessThan(got.length);
}, 60_000);

it("webhooks on three nodes of one PostgreSQL database: kill -9 of the delivering node, another takes over within 10 s, every event verified, in order", async () => {
  const admin = process.env.BROKER_TEST_PG ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const database = `broker_js_${process.pid}_${Date.now()}`;
  execFileSync("psql", [admin, "-qAtc", `CREATE DATABASE ${database}`]);
  onTestFinished(() => void execFileSync("psql", [admin, "-qAtc", `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`]));
  const url = admin.replace(/\/[^/]*$/, `/${database}`);
  const nodes = [];
  for (let i = 0; i < 3; i++) nodes.push(await start(dataDir(), await freePort(), "--database-url", url, ...LOCAL_WEBHOOKS));
  const alice = await user(nodes[0].url, "alice");
  const board = crypto.randomUUID();
  await alice.claim(board);
  const clients = [alice];
  for (const node of nodes.slice(1)) {
    const client = new Broker({ url: node.url });
    await client.logIn("alice", "correct horse battery");
    clients.push(client);
  }
  let verify: Webhook | undefined;
  const got: { id: string; n: number }[] = [];
  const http = createHttpServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      const message = verify!.verify(body, request.headers as Record<string, string>) as { data: { data: { n: number } } };
      got.push({ id: String(request.headers["webhook-id"]), n: message.data.data.n });
      setTimeout(() => response.writeHead(204).end(), 20);
    });
  });
  await new Promise<void>((done) => http.listen(0, "127.0.0.1", done));
  onTestFinished(() => void http.close());
  const hook = await alice.addWebhook(board, `http://127.0.0.1:${(http.address() as { port: number }).port}/`);
  verify = new Webhook(hook.secret!);
  const ids: string[] = [];
  const insert = async (from: number, to: number, live: Broker[]) => {
    for (let n = from; n < to; n++) ids.push((await live[n % live.length].insert("card", board, { n })).id);
  };
  await insert(0, 30, clients);
  await vi.waitFor(() => expect(got.length).toBeGreaterThan(10), { timeout: 20_000, interval: 20 });
  const sent = async (node: { url: string }) => {
    const text = await (await fetch(`${node.url}/metrics`)).text();
    return Number(text.split("\n").find((l) => l.startsWith("broker_webhooks_sent_total "))?.split(" ")[1] ?? 0);
  };
  const counts = await Promise.all(nodes.map(sent));
  expect(counts.filter((c) => c > 0)).toHaveLength(1);
  const holder = counts.findIndex((c) => c > 0);
  await nodes[holder].kill();
  const killed = Date.now();
  const before = got.length;
  await insert(30, 60, clients.filter((_, i) => i !== holder));
  await vi.waitFor(() => expect(got.length).toBeGreaterThan(before), { timeout: 10_000, interval: 20 });
  console.log(`webhook delivery went on ${Date.now() - killed} ms after kill -9 of its node`);
  await vi.waitFor(() => expect(new Set(got.map((g) => g.id)).size).toBe(60), { timeout: 20_000, interval: 50 });
  const firsts = got.filter((g, i) => got.findIndex((h) => h.id === g.id) === i);
  expect(firsts.map((g) => g.id)).toEqual(ids);
  expect(firsts.map((g) => g.n)).toEqual([...Array(60).keys()]);
}, 90_000);

it("tells the server's password rule and is refused a shorter password", async () => {
  const server = await start(dataDir(), await freePort(), "--min-password-length", "12");
  const broker = new Broker({ url: server.url });
  expect(await broker.passwordRule()).toEqual({ minLength: 12, maxLength: 1024 });
  await expect(broker.signUp("carol", "too short")).rejects.toMatchObject({
    status: 400,
    message: "password must be at least 12 characters",
  });
  await broker.signUp("carol", "long enough, surely");
  await broker.logIn("carol", "long enough, surely");
  await expect(broker.changePassword("long enough, surely", "short")).rejects.toMatchObject({ status: 400 });
});
