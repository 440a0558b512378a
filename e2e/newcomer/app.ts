// A newcomer's first app, written from the READMEs of @broker/client and
// @broker/react only, compiled with strict TypeScript against the packed
// packages and run against the real binary (e2e/newcomer.sh does both).
import assert from "node:assert/strict";
import { test } from "node:test";
import { Broker, BrokerError, type BrokerEvent, type StreamStatus } from "@broker/client";

const url = process.env.BROKER_URL ?? "http://localhost:8080";

/** Waits until `check` holds (a deadline, no fixed sleep). */
async function until(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("a team board and a public board, as the README shows them", async () => {
  // bob has an account; alice signs up, claims a private team board and shares it with him.
  const bob = new Broker({ url });
  await bob.signUp("bob", "battery staple");
  const broker = new Broker({ url });
  await broker.signUp("alice", "correct horse");
  await broker.logIn("alice", "correct horse");
  const team = crypto.randomUUID();
  const board = crypto.randomUUID();
  await broker.claim(team); // private by default
  await broker.addMember(team, "bob", "writer");
  const alice = broker.userId;

  // The live state of both boards.
  const statuses: StreamStatus[] = [];
  const resets: string[] = [];
  const seen: BrokerEvent[] = [];
  const live = broker.subscribe({
    collections: [team, board],
    onEvent: (event) => seen.push(event),
    onStatus: (status, error) => {
      statuses.push(status);
      if (error) assert.ok(error instanceof BrokerError);
    },
    onReset: (reason) => resets.push(reason),
  });
  await broker.insert("card:1", board, { title: "Ship it" });
  await broker.insert("card:1", team, { title: "The plan" }); // the same name, another board
  await until("both cards", () => live.state.size === 2);
  assert.deepEqual(live.state.get(board, "card:1")?.data, { title: "Ship it" });
  assert.deepEqual(live.state.get(team, "card:1")?.data, { title: "The plan" });
  assert.deepEqual([...live.state.collection(team).keys()], ["card:1"]);

  // A scheduled card, and one cancelled before its time: `cancel` takes the id `insert` answers.
  const soon = await broker.insert("card:2", board, { title: "Soon" }, new Date(Date.now() + 1_500));
  const never = await broker.insert("card:3", board, { title: "Never" }, new Date(Date.now() + 1_500));
  assert.equal(soon.published, false);
  assert.equal((await broker.cancel(never.id)).cancelled, true);
  await until("the scheduled card", () => live.state.get(board, "card:2") !== undefined);
  const published = live.state.get(board, "card:2")!;
  assert.equal(published.id, soon.id, "one event record: the stream's id is the insert's");
  assert.ok(published.seq! > 0);
  assert.equal(live.state.get(board, "card:3"), undefined);
  const listed: BrokerEvent[] = [];
  for await (const event of broker.collectionEvents(board)) listed.push(event);
  assert.deepEqual(listed.map((e) => [e.event, e.published, e.cancelled]), [
    ["card:1", true, false],
    ["card:2", true, false],
    ["card:3", false, true],
  ]);

  // Logging out clears the state at once and reads nothing anonymously.
  await broker.logOut();
  assert.equal(live.state.size, 0);
  assert.equal(live.status, "unauthenticated");
  assert.deepEqual(resets, ["logged out"]);

  // bob logs in on the same client: his own fresh view, the team's card included.
  await broker.logIn("bob", "battery staple");
  await until("bob's view", () => live.state.size === 3);
  assert.equal(live.state.get(team, "card:1")?.userId, alice);
  assert.equal(seen.length, 6, "alice's three events, then bob's fresh sync of the same three");
  assert.deepEqual(statuses, ["connecting", "open", "unauthenticated", "connecting", "open"]);

  // An anonymous page that names the private board is told, not shown an empty board.
  const visitor = new Broker({ url });
  let refusal: BrokerError | undefined;
  const peek = visitor.subscribe({ collections: [team], onStatus: (status, error) => status === "forbidden" && (refusal = error) });
  await until("the refusal", () => refusal !== undefined);
  assert.deepEqual(refusal!.collections, [team]);
  assert.equal(refusal!.status, 401);
  assert.match(refusal!.message, /^not logged in/);

  // A call without a session says so.
  await assert.rejects(visitor.me(), (e: unknown) => e instanceof BrokerError && e.message.startsWith("not logged in"));
  for (const s of [live, peek]) s.close();
  for (const b of [broker, bob, visitor]) b.close();
});
