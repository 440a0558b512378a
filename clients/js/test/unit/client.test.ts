// @vitest-environment jsdom
import { afterEach, describe, expect, it, vi } from "vitest";
import { Broker, BrokerError, SseParser, tokenExpiry, type BrokerEvent } from "../../src/index.js";

const encoder = new TextEncoder();

/** A token whose payload says `exp`, as Broker's are (not signed: the client never checks). */
function token(exp: number, n = 0): string {
  const payload = btoa(JSON.stringify({ sub: "u", exp, n })).replace(/=+$/, "");
  return `eyJhbGciOiJIUzI1NiJ9.${payload}.sig`;
}

function frame(id: number, event: string, data: unknown, collection = "c"): string {
  return `id:${id}\ndata:${JSON.stringify({ event, collection_id: collection, data })}\n\n`;
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
    return handler(request);
  });
  return { fetch: fetch as unknown as typeof globalThis.fetch, requests };
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
    const record = { id: "e", event: "card", timestamp: 2_000_000_000 };
    const { fetch, requests } = server(() => json(200, { jwt }), () => json(200, { event: record }));
    const broker = new Broker({ url: "http://b/", fetch });
    await broker.logIn("alice", "pw");
    expect(await broker.insert("card", "c", { x: 1 }, new Date(2_000_000_000_500))).toEqual(record);
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
    await until(() => sub.state.has("a"));
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
    expect(events.map((e) => e.id)).toEqual([1, 2, 3, 4]);
    expect(Object.fromEntries([...sub.state].map(([name, e]) => [name, e.data]))).toEqual({ a: 3, b: 2, c: 4 });
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
    await until(() => sub.state.has("b"));
    expect([...sub.state.keys()]).toEqual(["b"]);
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
    await until(() => sub.state.has("a"), 6000);
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
    await until(() => sub.state.has("a"));
    expect(requests[2].url).toBe("http://b/refresh");
    expect(requests[3].headers.get("authorization")).toBe(`Bearer ${fresh}`);
    sub.close();
    broker.close();
  });
});
