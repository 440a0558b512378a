// @vitest-environment jsdom
import { act, StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { afterEach, expect, it, vi } from "vitest";
import { Broker } from "@broker/client";
import {
  BrokerProvider,
  useAuth,
  useBrokerEvents,
  useBrokerState,
  useBrokerStatus,
  useBrokerValue,
  useOutbox,
  usePresence,
  useSendSignal,
  useSignals,
} from "../src/index.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

const encoder = new TextEncoder();

/** A fake Broker whose event stream the test writes to; counts the streams opened. */
function fakeBroker() {
  let push!: (text: string) => void;
  let streams = 0;
  const urls: string[] = [];
  const fetch = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = String(input);
    urls.push(url);
    if (url.endsWith("/signal")) {
      const signal = { ...JSON.parse(String(init?.body)), user_id: "u" };
      return new Response(JSON.stringify({ signal }), { headers: { "content-type": "application/json" } });
    }
    if (url.endsWith("/login")) {
      return new Response(JSON.stringify({ jwt: "a.eyJzdWIiOiJ1In0.b" }), { headers: { "content-type": "application/json" } });
    }
    if (url.endsWith("/logout")) return new Response(null, { status: 204 });
    streams++;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        push = (text) => controller.enqueue(encoder.encode(text));
      },
    });
    return new Response(body);
  });
  const broker = new Broker({ url: "http://b", fetch: fetch as unknown as typeof globalThis.fetch });
  const send = (id: number, event: string, data: unknown, collection = "c") =>
    push(`id:${id}\ndata:${JSON.stringify({ event, collection_id: collection, id: `e${id}`, user_id: "u", timestamp: 1, data })}\n\n`);
  return { broker, send, push: (text: string) => push(text), streams: () => streams, urls };
}

const roots: (() => void)[] = [];
afterEach(() => roots.splice(0).forEach((unmount) => act(unmount)));

async function render(broker: Broker, children: React.ReactNode) {
  const container = document.createElement("div");
  const root = createRoot(container);
  await act(async () => root.render(<StrictMode><BrokerProvider client={broker}>{children}</BrokerProvider></StrictMode>));
  roots.push(() => root.unmount());
  return container;
}

async function until(check: () => boolean) {
  await vi.waitFor(() => expect(check()).toBe(true), { timeout: 2000, interval: 5 });
}

it("shares one stream, keeps the state, and re-renders only the component whose value changed", async () => {
  const { broker, send, streams } = fakeBroker();
  const renders = { a: 0, b: 0 };
  function Value({ name }: { name: "a" | "b" }) {
    const event = useBrokerValue("c", name, {});
    renders[name]++;
    return <span data-name={name}>{String(event?.data ?? "")}</span>;
  }
  function All() {
    const state = useBrokerState();
    const events = useBrokerEvents();
    return <p>{[...state].map((e) => e.event).sort().join(",")} / {events.length}</p>;
  }
  const view = await render(broker, [<Value key="a" name="a" />, <Value key="b" name="b" />, <All key="all" />]);
  await until(() => streams() === 1);
  await act(async () => send(1, "a", 1));
  await until(() => view.textContent === "1a / 1");
  const before = { ...renders };
  await act(async () => send(2, "a", 2));
  await act(async () => send(3, "a", 3));
  await until(() => view.querySelector('[data-name="a"]')?.textContent === "3");
  expect(renders.b).toBe(before.b); // b did not change: not rendered again
  expect(renders.a).toBeGreaterThan(before.a);
  await act(async () => send(4, "b", "x"));
  await until(() => view.textContent === "3xa,b / 4");
  expect(streams()).toBe(1); // three components, one stream
});

it("useAuth follows the session", async () => {
  const { broker } = fakeBroker();
  let auth!: ReturnType<typeof useAuth>;
  function Session() {
    auth = useAuth();
    return <b>{auth.loggedIn ? "in" : "out"}</b>;
  }
  const view = await render(broker, <Session />);
  expect(view.textContent).toBe("out");
  await act(async () => void (await auth.logIn("alice", "pw")));
  expect(view.textContent).toBe("in");
  broker.close();
});

it("log out clears what the hooks render, at once", async () => {
  const { broker, send } = fakeBroker();
  await broker.logIn("alice", "pw");
  function Cards() {
    const state = useBrokerState({ collections: ["team", "board"] });
    const { status } = useBrokerStatus({ collections: ["team", "board"] });
    return <p>{status}: {[...state].map((e) => `${e.collectionId}/${e.event}=${e.data}`).sort().join(",")}</p>;
  }
  const view = await render(broker, <Cards />);
  await act(async () => {
    send(1, "card:1", "secret", "team");
    send(2, "card:1", "public", "board");
  });
  await until(() => view.textContent === "open: board/card:1=public,team/card:1=secret");
  await act(async () => void broker.logOut());
  expect(view.textContent).toBe("unauthenticated: ");
  broker.close();
});

it("useSignals shows the signals of a collection as they come; useSendSignal sends one", async () => {
  const { broker, push, urls } = fakeBroker();
  let send!: (event: string, data: unknown) => Promise<unknown>;
  function Cursors() {
    const signals = useSignals("board", { others: true });
    send = useSendSignal("board");
    return <p>{signals.map((s) => `${s.userId}:${s.event}=${JSON.stringify(s.data)}`).join(",")}</p>;
  }
  const view = await render(broker, <Cursors />);
  await until(() => urls.some((u) => u.includes("/events?") && u.includes("signals=others")));
  const frame = (user: string, x: number) =>
    `event:signal\ndata:${JSON.stringify({ collection_id: "board", event: "cursor", user_id: user, data: { x } })}\n\n`;
  await act(async () => push(frame("bob", 1)));
  await until(() => view.textContent === 'bob:cursor={"x":1}');
  await act(async () => push(frame("carol", 2)));
  await until(() => view.textContent === 'bob:cursor={"x":1},carol:cursor={"x":2}');
  await expect(send("cursor", { x: 3 })).resolves.toEqual({ collectionId: "board", event: "cursor", userId: "u", data: { x: 3 } });
});

it("usePresence lists who has the collection open and follows joins and leaves", async () => {
  const { broker, push, urls } = fakeBroker();
  function Here() {
    const presence = usePresence("board");
    return <p>{presence.users.map((u) => u.username).join(",") || "nobody"}</p>;
  }
  const view = await render(broker, <Here />);
  expect(view.textContent).toBe("nobody");
  await until(() => urls.some((u) => u.includes("/events?") && u.includes("presence=true")));
  const frame = (data: object) => `event:presence\ndata:${JSON.stringify({ collection_id: "board", ...data })}\n\n`;
  const user = (name: string) => ({ user_id: name, username: name, since: 1 });
  await act(async () => push(frame({ type: "list", users: [user("carol")], anonymous: 2 })));
  await until(() => view.textContent === "carol");
  await act(async () => push(frame({ type: "join", ...user("bob") })));
  await until(() => view.textContent === "bob,carol");
  await act(async () => push(frame({ type: "leave", ...user("carol") })));
  await until(() => view.textContent === "bob");
});

it("useOutbox counts the inserts waiting while Broker cannot be reached, then none", async () => {
  let online = false;
  const fetch = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    if (!online) throw new TypeError("Failed to fetch");
    const event = { ...JSON.parse(String(init?.body)), id: "e", user_id: "u", published: false, cancelled: false };
    return new Response(JSON.stringify({ event }), { headers: { "content-type": "application/json" } });
  });
  const broker = new Broker({ url: "http://b", fetch: fetch as unknown as typeof globalThis.fetch, outbox: true });
  function Pending() {
    const { pending, lastError } = useOutbox();
    return <p>{`${pending}:${lastError?.status ?? "-"}`}</p>;
  }
  const view = await render(broker, <Pending />);
  expect(view.textContent).toBe("0:-");
  await act(async () => void broker.insert("card", "board", 1));
  await act(async () => void broker.insert("card", "board", 2));
  await until(() => view.textContent === "2:0");
  online = true;
  await act(() => broker.flush());
  await until(() => view.textContent === "0:-");
  expect(fetch.mock.calls.map(([, init]) => (init?.headers as Record<string, string>)["idempotency-key"])).toSatisfy(
    (keys: string[]) => keys.every((k) => k.length === 36),
  );
  broker.close();
});
