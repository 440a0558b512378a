// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from "vitest";
import { Broker, BrokerError, SseParser, tokenExpiry, type BrokerEvent, type StreamStatus } from "../../src/index.js";

const encoder = new TextEncoder();

/** A token whose payload says `exp`, as Broker's are (not signed: the client never checks). */
function token(exp: number, n = 0, sub = "u"): string {
  const payload = btoa(JSON.stringify({ sub, exp, n })).replace(/=+$/, "");
  return `eyJhbGciOiJIUzI1NiJ9.${payload}.sig`;
}

function frame(id: number, event: string, data: unknown, collection = "c"): string {
  const envelope = { event, collection_id: collection, id: `e${id}`, user_id: "u", timestamp: 1_900_000_000, data };
  return `id:${id}\ndata:${JSON.stringify(envelope)}\n\n`;
}

/** The names and data of a state, by collection. */
function contents(state: Iterable<BrokerEvent>): Record<string, unknown> {
  return Object.fromEntries([...state].map((e) => [`${e.collectionId}/${e.event}`, e.data]));
}

/** A response whose body is `parts`, then stays open until `end` resolves. */
function stream(parts: string[], end: Promise<void> = Promise.resolve()): Response {
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      for (const part of parts) controller.enqueue(encoder.encode(part));
      await end;
      controller.close();
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

/** A fake server: each request is answered by the next handler; the requests are kept. */
function server(...handlers: ((request: Request) => Response | Promise<Response>)[]) {
  const requests: Request[] = [];
  const fetch = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const request = new Request(input, init);
    requests.push(request);
    const handler = handlers.shift();
    if (!handler) return new Promise<Response>(() => {}); // never answers
    return abortable(await handler(request), init?.signal);
  });
  return { fetch: fetch as unknown as typeof globalThis.fetch, requests };
}

/** `response` with a body that fails once `signal` aborts, as fetch's does. */
function abortable(response: Response, signal?: AbortSignal | null): Response {
  if (!signal || !response.body) return response;
  const reader = response.body.getReader();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      signal.addEventListener("abort", () => controller.error(new DOMException("aborted", "AbortError")));
    },
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
}

async function until(check: () => boolean, timeout = 2000): Promise<void> {
  await vi.waitFor(() => expect(check()).toBe(true), { timeout, interval: 5 });
}

afterEach(() => {
  vi.useRealTimers();
});

describe("SseParser", () => {
  it("reads messages split anywhere, with any line ending", () => {
    const text = "retry:3000\r\n\r\n:\n\nid:1\nevent:a\ndata:{\"é\":1}\n\nid: 2\ndata: x\ndata: y\r\n\r\n";
    const bytes = encoder.encode(text);
    for (let split = 0; split <= bytes.length; split++) {
      const parser = new SseParser();
      const seen: unknown[] = [];
      parser.feed(bytes.slice(0, split), (m) => seen.push(m));
      parser.feed(bytes.slice(split), (m) => seen.push(m));
      expect(seen, `split at ${split}`).toEqual([
        { id: "1", event: "a", data: '{"é":1}' },
        { id: "2", event: "message", data: "x\ny" },
      ]);
    }
  });
});

describe("requests", () => {
  it("fail with the server's status and message", async () => {
    const { fetch } = server(() => json(429, { error: "too many attempts" }, { "retry-after": "8" }));
    const broker = new Broker({ url: "http://b", fetch });
    const error = await broker.logIn("alice", "pw").catch((e) => e);
    expect(error).toBeInstanceOf(BrokerError);
    expect(error).toMatchObject({ status: 429, message: "too many attempts", retryAfter: 8 });
  });

  it("send the token, and insert at a date in UNIX seconds", async () => {
    const jwt = token(Date.now() / 1000 + 3600);
    const record = { id: "e", event: "card", collection_id: "c", user_id: "u", timestamp: 2_000_000_000, published: false, cancelled: false, data: { x: 1 } };
    const { fetch, requests } = server(() => json(200, { jwt }), () => json(200, { event: record }));
    const broker = new Broker({ url: "http://b/", fetch });
    await broker.logIn("alice", "pw");
    expect(await broker.insert("card", "c", { x: 1 }, new Date(2_000_000_000_500))).toEqual({
      id: "e",
      event: "card",
      collectionId: "c",
      userId: "u",
      timestamp: 2_000_000_000,
      published: false,
      cancelled: false,
      data: { x: 1 },
    });
    expect(requests[1].url).toBe("http://b/insert");
    expect(requests[1].headers.get("authorization")).toBe(`Bearer ${jwt}`);
    expect(await requests[1].json()).toEqual({ event: "card", collection_id: "c", timestamp: 2_000_000_000, data: { x: 1 } });
    broker.close();
  });

  it("in cookie mode, send cookies and keep no token in storage", async () => {
    const jwt = token(Date.now() / 1000 + 3600);
    const inits: RequestInit[] = [];
    const fetch = (async (_: RequestInfo | URL, init?: RequestInit) => {
      inits.push(init ?? {});
      return inits.length === 1 ? json(200, { jwt }) : stream([frame(1, "a", 1)], new Promise(() => {}));
    }) as typeof globalThis.fetch;
    localStorage.clear();
    const broker = new Broker({ url: "http://b", fetch, storage: "cookie" });
    await broker.logIn("alice", "pw");
    const sub = broker.subscribe();
    await until(() => sub.state.get("c", "a") !== undefined);
    expect(inits.map((i) => i.credentials)).toEqual(["include", "include"]);
    expect(new Headers(inits[1].headers).get("authorization")).toBeNull(); // the cookie does it
    expect(localStorage.length).toBe(0);
    sub.close();
    broker.close();
  });

  it("page through a listing by its cursor", async () => {
    const { fetch, requests } = server(
      () => json(200, { events: [{ id: "1" }, { id: "2" }], cursor: "k" }),
      () => json(200, { events: [{ id: "3" }], cursor: null }),
    );
    const broker = new Broker({ url: "http://b", fetch });
    const ids = [];
    for await (const event of broker.collectionEvents("c", 2)) ids.push(event.id);
    expect(ids).toEqual(["1", "2", "3"]);
    expect(requests.map((r) => new URL(r.url).search)).toEqual(["?limit=2", "?limit=2&cursor=k"]);
  });
});

describe("the token", () => {
  it("is refreshed before it expires, by itself", async () => {
    vi.useFakeTimers({ now: 1_000_000_000_000 });
    const first = token(1_000_000_000 + 600);
    const second = token(1_000_000_000 + 1200, 1);
    const { fetch, requests } = server(() => json(200, { jwt: first }), () => json(200, { jwt: second }));
    const broker = new Broker({ url: "http://b", fetch });
    const changes: (string | null)[] = [];
    broker.onToken((t) => changes.push(t));
    await broker.logIn("alice", "pw");
    await vi.advanceTimersByTimeAsync(539_000);
    expect(requests).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(2_000); // 60 s before expiry
    expect(requests[1].url).toBe("http://b/refresh");
    expect(changes).toEqual([first, second]);
    expect(tokenExpiry(second)).toBe(1_000_000_000 + 1200);
    broker.close();
  });
});

describe("subscribe", () => {
  it("keeps the latest event of each name and hands over each event once, in order", async () => {
    let end!: () => void;
    const ended = new Promise<void>((r) => (end = r));
    const { fetch, requests } = server(
      () => stream([frame(1, "a", 1), frame(2, "b", 2).slice(0, 9)], ended),
      // The resumed stream repeats event 2 (as a careless proxy might) and goes on.
      () => stream([frame(2, "b", 2), frame(3, "a", 3), ":\n\n", frame(4, "c", 4)], new Promise(() => {})),
    );
    const broker = new Broker({ url: "http://b", fetch });
    const events: BrokerEvent[] = [];
    const sub = broker.subscribe({ events: ["a", "b", "c"], collections: ["c"], onEvent: (e) => events.push(e) });
    await until(() => events.length === 1);
    end(); // the connection drops in the middle of event 2
    await until(() => events.length === 4);
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    expect(events[0]).toEqual({ id: "e1", seq: 1, event: "a", collectionId: "c", userId: "u", timestamp: 1_900_000_000, published: true, cancelled: false, data: 1 });
    expect(contents(sub.state)).toEqual({ "c/a": 3, "c/b": 2, "c/c": 4 });
    expect(new URL(requests[0].url).search).toBe("?envelope=true&collection_id=c&event=a&event=b&event=c");
    expect(requests[0].headers.get("last-event-id")).toBeNull();
    expect(requests[1].headers.get("last-event-id")).toBe("1");
    sub.close();
  });

  it("clears the state on reset", async () => {
    const { fetch } = server(() =>
      stream([frame(1, "a", 1), 'id:9\nevent:reset\ndata:{"reason":"unknown last event id","head":9}\n\n', frame(5, "b", 5)], new Promise(() => {})),
    );
    const broker = new Broker({ url: "http://b", fetch });
    let resets = 0;
    const sub = broker.subscribe({ lastEventId: 100, onReset: () => resets++ });
    await until(() => sub.state.get("c", "b") !== undefined);
    expect(contents(sub.state)).toEqual({ "c/b": 5 });
    expect(resets).toBe(1);
    sub.close();
  });

  it("backs off after failures, says why, and reconnects a silent stream", async () => {
    const { fetch, requests } = server(
      () => json(503, { error: "too many streams" }, { "retry-after": "1" }),
      () => stream([], new Promise(() => {})), // opens, then says nothing
      () => stream([frame(1, "a", 1)], new Promise(() => {})),
    );
    const broker = new Broker({ url: "http://b", fetch });
    const errors: (BrokerError | undefined)[] = [];
    const sub = broker.subscribe({ silence: 50, onStatus: (s, e) => s === "connecting" && errors.push(e) });
    const started = Date.now();
    await until(() => sub.state.get("c", "a") !== undefined, 6000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000); // Retry-After: 1
    expect(errors[1]).toMatchObject({ status: 503, message: "too many streams" });
    expect(requests).toHaveLength(3);
    sub.close();
  }, 10_000);

  it("gets a fresh token when the stream's has expired, then resumes", async () => {
    const old = token(Date.now() / 1000 + 3600);
    const fresh = token(Date.now() / 1000 + 7200, 1);
    const { fetch, requests } = server(
      () => json(200, { jwt: old }),
      () => json(401, { error: "token expired" }),
      () => json(200, { jwt: fresh }),
      () => stream([frame(1, "a", 1)], new Promise(() => {})),
    );
    const broker = new Broker({ url: "http://b", fetch });
    await broker.logIn("alice", "pw");
    const sub = broker.subscribe();
    await until(() => sub.state.get("c", "a") !== undefined);
    expect(requests[2].url).toBe("http://b/refresh");
    expect(requests[3].headers.get("authorization")).toBe(`Bearer ${fresh}`);
    sub.close();
    broker.close();
  });
});

describe("state", () => {
  it("keeps two collections' events of the same name apart", async () => {
    const { fetch } = server(() => stream([frame(1, "card:1", "a", "A"), frame(2, "card:1", "b", "B")], new Promise(() => {})));
    const broker = new Broker({ url: "http://b", fetch });
    const seen: BrokerEvent[] = [];
    const sub = broker.subscribe({ collections: ["A", "B"], onEvent: (e) => seen.push(e) });
    await until(() => sub.state.size === 2);
    expect(sub.state.get("A", "card:1")?.data).toBe("a");
    expect(sub.state.get("B", "card:1")?.data).toBe("b");
    expect([...sub.state.collection("B").keys()]).toEqual(["card:1"]);
    expect(sub.state.events().map((e) => e.seq)).toEqual([1, 2]);
    expect(seen).toHaveLength(2);
    sub.close();
  });
});

describe("a change of identity", () => {
  const hour = () => Date.now() / 1000 + 3600;

  it("log out: the state is cleared at once, and nothing is read anonymously", async () => {
    const alice = token(hour(), 0, "alice");
    const { fetch, requests } = server(
      () => json(200, { jwt: alice }),
      () => stream([frame(1, "secret", 1, "T")], new Promise(() => {})),
      () => new Response(null, { status: 204 }), // POST /logout
    );
    const broker = new Broker({ url: "http://b", fetch });
    await broker.logIn("alice", "pw");
    const statuses: [StreamStatus, string | undefined][] = [];
    const resets: string[] = [];
    const sub = broker.subscribe({
      collections: ["T"],
      onStatus: (s, e) => statuses.push([s, e?.message]),
      onReset: (why) => resets.push(why),
    });
    await until(() => sub.state.size === 1);
    await broker.logOut();
    expect(sub.state.size).toBe(0);
    expect(sub.status).toBe("unauthenticated");
    expect(resets).toEqual(["logged out"]);
    expect(statuses).toEqual([["connecting", undefined], ["open", undefined], ["unauthenticated", "logged out"]]);
    await new Promise((r) => setTimeout(r, 50));
    expect(requests.map((r) => new URL(r.url).pathname)).toEqual(["/login", "/events", "/logout"]);
    sub.close();
  });

  it("another user logs in: a fresh sync as them, never the old state or position", async () => {
    const [alice, bob] = [token(hour(), 0, "alice"), token(hour(), 0, "bob")];
    const { fetch, requests } = server(
      () => json(200, { jwt: alice }),
      () => stream([frame(7, "secret", 1, "T")], new Promise(() => {})),
      () => json(200, { jwt: bob }),
      () => stream([frame(3, "public", 2, "P")], new Promise(() => {})),
    );
    const broker = new Broker({ url: "http://b", fetch });
    await broker.logIn("alice", "pw");
    const resets: string[] = [];
    const sub = broker.subscribe({ onReset: (why) => resets.push(why) });
    await until(() => sub.state.size === 1);
    await broker.logIn("bob", "pw");
    expect(sub.state.size).toBe(0);
    await until(() => sub.state.size === 1);
    expect(contents(sub.state)).toEqual({ "P/public": 2 }); // seq 3 < 7 is not "seen": a new view
    expect(requests[3].headers.get("authorization")).toBe(`Bearer ${bob}`);
    expect(requests[3].headers.get("last-event-id")).toBeNull();
    expect(resets).toEqual(["logged in as bob"]);
    sub.close();
  });

  it("a revoked token that cannot be refreshed ends the private view, with the reason", async () => {
    const alice = token(hour(), 0, "alice");
    let end!: () => void;
    const { fetch, requests } = server(
      () => json(200, { jwt: alice }),
      () => stream([frame(1, "secret", 1, "T"), ": disconnected: token revoked\n\n"], new Promise((r) => (end = r))),
      () => json(401, { error: "token revoked" }),
      () => json(401, { error: "token revoked" }), // POST /refresh
    );
    const broker = new Broker({ url: "http://b", fetch });
    await broker.logIn("alice", "pw");
    const statuses: [StreamStatus, BrokerError | undefined][] = [];
    const sub = broker.subscribe({ onStatus: (s, e) => statuses.push([s, e]) });
    await until(() => sub.state.size === 1);
    end();
    await until(() => sub.status === "unauthenticated");
    expect(sub.state.size).toBe(0);
    expect(broker.token).toBeNull();
    expect(statuses.at(-1)?.[1]).toMatchObject({ status: 401, message: "session ended: token revoked" });
    expect(requests.map((r) => new URL(r.url).pathname)).toEqual(["/login", "/events", "/events", "/refresh"]);
    sub.close();
  });

  it("cookie mode after a reload: a revoked cookie clears what it read, once, with no loop", async () => {
    let end!: () => void;
    const revoked = () => json(401, { error: "token revoked" });
    const { fetch, requests } = server(
      () => stream([frame(1, "secret", 1, "T")], new Promise((r) => (end = r))),
      ...Array<typeof revoked>(50).fill(revoked),
    );
    const broker = new Broker({ url: "http://b", fetch, storage: "cookie" }); // no token known: the cookie reads
    const resets: string[] = [];
    const sub = broker.subscribe({ onReset: (why) => resets.push(why), anonymous: true });
    await until(() => sub.state.size === 1);
    end();
    await until(() => resets.length === 1);
    expect(sub.state.size).toBe(0);
    expect(resets).toEqual(["session ended: token revoked"]);
    // Anonymous from now on, the refused cookie is retried with backoff, not in a loop.
    await new Promise((r) => setTimeout(r, 100));
    expect(requests.length).toBeLessThan(5);
    sub.close();
  });

  it("with anonymous: true, a log out goes on with a fresh anonymous sync", async () => {
    const alice = token(hour(), 0, "alice");
    const { fetch, requests } = server(
      () => json(200, { jwt: alice }),
      () => stream([frame(5, "secret", 1, "T")], new Promise(() => {})),
      () => new Response(null, { status: 204 }),
      () => stream([frame(4, "public", 2, "P")], new Promise(() => {})),
    );
    const broker = new Broker({ url: "http://b", fetch });
    await broker.logIn("alice", "pw");
    const sub = broker.subscribe({ anonymous: true });
    await until(() => sub.state.size === 1);
    await broker.logOut();
    await until(() => sub.state.get("P", "public") !== undefined);
    expect(contents(sub.state)).toEqual({ "P/public": 2 });
    expect(requests[3].headers.get("authorization")).toBeNull();
    expect(requests[3].headers.get("last-event-id")).toBeNull();
    sub.close();
  });
});

describe("status", () => {
  it("names the collections one may not read, and goes back to open when let in", async () => {
    const notice = (collections: string[], error: string | null) =>
      `event:forbidden\ndata:${JSON.stringify({ collections, error })}\n\n`;
    let letIn!: () => void;
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(encoder.encode("retry:1000\n\n" + notice(["T"], "not logged in: a private collection is read by its owner and members only")));
        await new Promise<void>((r) => (letIn = r));
        controller.enqueue(encoder.encode(notice([], null) + frame(1, "x", 1, "T")));
      },
    });
    const { fetch } = server(() => new Response(body));
    const broker = new Broker({ url: "http://b", fetch });
    const statuses: [StreamStatus, BrokerError | undefined][] = [];
    const sub = broker.subscribe({ collections: ["T", "P"], onStatus: (s, e) => statuses.push([s, e]) });
    await until(() => sub.status === "forbidden");
    expect(statuses).toHaveLength(2); // connecting, forbidden: never "open" with an empty state
    expect(statuses[1][1]).toMatchObject({ status: 401, collections: ["T"] });
    expect(statuses[1][1]?.message).toMatch(/^not logged in/);
    letIn();
    await until(() => sub.state.size === 1);
    expect(statuses.map(([s]) => s)).toEqual(["connecting", "forbidden", "open"]);
    sub.close();
  });

  it("is told once per change: a server that stays down is one 'connecting' with its error", async () => {
    const down = () => Promise.reject(new TypeError("fetch failed"));
    const { fetch } = server(down, down, down, () => stream([frame(1, "a", 1)], new Promise(() => {})));
    const broker = new Broker({ url: "http://b", fetch });
    const statuses: [StreamStatus, string | undefined][] = [];
    const sub = broker.subscribe({ maxBackoff: 20, onStatus: (s, e) => statuses.push([s, e?.message]) });
    await until(() => sub.state.size === 1);
    expect(statuses).toEqual([["connecting", undefined], ["connecting", "cannot reach Broker"], ["open", undefined]]);
    sub.close();
  });

  it("calls without a session fail with 'not logged in'", async () => {
    const { fetch } = server(() => json(401, { error: "missing Authorization header" }));
    const error = await new Broker({ url: "http://b", fetch }).me().catch((e) => e);
    expect(error).toMatchObject({ status: 401, message: "not logged in (missing Authorization header)" });
  });
});
