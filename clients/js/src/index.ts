import { SseParser } from "./sse.js";

export { SseParser, type SseMessage } from "./sse.js";
export { fileOutbox, indexedDbOutbox, memoryOutbox, type OutboxEntry, type OutboxStore } from "./outbox.js";
import { indexedDbOutbox, memoryOutbox, type OutboxEntry, type OutboxStore } from "./outbox.js";

/**
 * An event: what `insert` and `cancel` answer, what listings and the
 * stream hand over. `cancel(event.id)` takes any of them.
 */
export interface BrokerEvent {
  /** The event's UUID. */
  id: string;
  /** The publication sequence number (increasing, never reused): set on events from the stream. */
  seq?: number;
  /** Its name, such as `card:42`. */
  event: string;
  collectionId: string;
  /** Who inserted it. */
  userId: string;
  /** When it is (or was) due, in UNIX seconds. */
  timestamp: number;
  /**
   * Whether it went out on the stream. `insert()` answers `false` even for
   * an event due now: it is stored first, then published (within
   * milliseconds) by the scheduler, which gives it its `seq`.
   */
  published: boolean;
  /** Whether its author cancelled it before its time. */
  cancelled: boolean;
  data: unknown;
}

/** An event as Broker's JSON has it (snake case). */
interface Wire {
  id: string;
  event: string;
  collection_id: string;
  user_id: string;
  timestamp: number;
  published?: boolean;
  cancelled?: boolean;
  data: unknown;
}

/** The client's {@link BrokerEvent} of Broker's JSON. */
function eventOf(wire: Wire, seq?: number): BrokerEvent {
  const published = seq !== undefined || wire.published === true;
  return {
    id: wire.id,
    ...(seq === undefined ? {} : { seq }),
    event: wire.event,
    collectionId: wire.collection_id,
    userId: wire.user_id,
    timestamp: wire.timestamp,
    published,
    cancelled: wire.cancelled === true,
    data: wire.data,
  };
}

/**
 * The live state of a subscription: the latest event of each name in each
 * collection (two boards may both have a `card:1`).
 */
export interface BrokerState extends Iterable<BrokerEvent> {
  /** The latest event named `name` in `collectionId`. */
  get(collectionId: string, name: string): BrokerEvent | undefined;
  /** The latest event of each name in `collectionId`, by name. */
  collection(collectionId: string): ReadonlyMap<string, BrokerEvent>;
  /** Every event of the state, in publication order. */
  events(): BrokerEvent[];
  /** How many events the state holds. */
  readonly size: number;
}

/** A {@link BrokerState} that a subscription changes. */
class State implements BrokerState {
  private readonly byCollection = new Map<string, Map<string, BrokerEvent>>();
  private count = 0;

  get(collectionId: string, name: string): BrokerEvent | undefined {
    return this.byCollection.get(collectionId)?.get(name);
  }

  collection(collectionId: string): ReadonlyMap<string, BrokerEvent> {
    return this.byCollection.get(collectionId) ?? new Map();
  }

  events(): BrokerEvent[] {
    return [...this].sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));
  }

  get size(): number {
    return this.count;
  }

  *[Symbol.iterator](): Iterator<BrokerEvent> {
    for (const names of this.byCollection.values()) yield* names.values();
  }

  set(event: BrokerEvent): void {
    let names = this.byCollection.get(event.collectionId);
    if (!names) this.byCollection.set(event.collectionId, (names = new Map()));
    if (!names.has(event.event)) this.count++;
    names.set(event.event, event);
  }

  clear(): void {
    this.byCollection.clear();
    this.count = 0;
  }

  /** A copy that later changes leave alone (for UI frameworks that compare by identity). */
  copy(): State {
    const copy = new State();
    for (const [collection, names] of this.byCollection) copy.byCollection.set(collection, new Map(names));
    copy.count = this.count;
    return copy;
  }
}

/** A copy of `state` that later changes leave alone: a new object for each change, for UI frameworks. */
export function snapshotOf(state: BrokerState): BrokerState {
  return state instanceof State ? state.copy() : state;
}

/** Who a token belongs to (`GET /users/me`). */
export interface Me {
  id: string;
  username: string;
  collection_id: string;
  admin: boolean;
}

/** A member's role in a claimed collection. */
export type Role = "reader" | "writer";

/** A claimed collection with its owner and members. */
export interface Collection {
  id: string;
  owner: { user_id: string; username: string; role: null };
  private: boolean;
  members: { user_id: string; username: string; role: Role }[];
  /** Which events it keeps: `{}` all of them. */
  retention: { max_age?: number; keep_latest?: number };
}

/** A webhook of a claimed collection, as its owner sees it. */
export interface Webhook {
  id: string;
  collection_id: string;
  /** Where events are POSTed. */
  url: string;
  /** The event names or `prefix*` patterns it receives (empty: every event). */
  events: string[];
  description: string;
  /** Stopped by its owner, or after a failure (see `failing`). */
  paused: boolean;
  /** Why delivery gave up, if it did. */
  failing: string | null;
  /** The sequence number of the last event delivered or passed over. */
  delivered: number;
  /** UNIX seconds. */
  created: number;
  /** The latest attempts, newest first. */
  attempts: { at: number; seq: number; event_id: string; status: number | null; error: string | null; ms: number }[];
  /** The signing secret (`whsec_…`): only from `addWebhook` and `rotateWebhookSecret`. */
  secret?: string;
}

/** A user as administrators see it. */
export interface AdminUser {
  id: string;
  username: string;
  collection_id: string;
  admin: boolean;
  disabled: boolean;
}

/** Every failed call: the HTTP status and Broker's `{"error"}` message. */
export class BrokerError extends Error {
  constructor(
    /** The HTTP status; 0 when the server could not be reached. */
    readonly status: number,
    message: string,
    /** Seconds to wait, from `Retry-After` (429 and 503). */
    readonly retryAfter?: number,
    /** The collections a stream named but may not read (status `forbidden`). */
    readonly collections?: string[],
    /** An insert refused by its collection's schema: where in its data (a JSON Pointer). */
    readonly path?: string,
  ) {
    super(message);
    this.name = "BrokerError";
  }
}

/** Where the client keeps its token. */
export interface TokenStorage {
  get(): string | null;
  set(token: string | null): void;
}

/** Keeps the token in memory only (the default): gone with the page. */
export function memoryStorage(): TokenStorage {
  let token: string | null = null;
  return { get: () => token, set: (t) => void (token = t) };
}

/** Keeps the token in `localStorage` under `key`: a reload stays logged in. */
export function localStorageStorage(key = "broker_token"): TokenStorage {
  return {
    get: () => localStorage.getItem(key),
    set: (t) => (t === null ? localStorage.removeItem(key) : localStorage.setItem(key, t)),
  };
}

/** Options of {@link Broker}. */
export interface BrokerOptions {
  /** Broker's base URL, such as `https://events.example.com`. */
  url: string;
  /**
   * Where the token is kept: in memory (default), `localStorageStorage()`,
   * or `"cookie"`: in memory only, requests send cookies, and the stream is
   * authenticated by the `broker_token` cookie that `/login` sets (and
   * `/refresh` renews), not by a header.
   */
  storage?: TokenStorage | "cookie";
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Refresh the token this many seconds before it expires (default 60, at most a third of its lifetime). */
  refreshBefore?: number;
  /**
   * Queue inserts, in order, until Broker takes them: `true` keeps the
   * queue in IndexedDB in a browser (a reload keeps it) and in memory
   * elsewhere; or any {@link OutboxStore} (`fileOutbox(path)` in Node).
   * Without it, an insert is retried a few times and then fails.
   */
  outbox?: boolean | OutboxStore;
}

/** Options of {@link Broker.insert}. */
export interface InsertOptions {
  /** Its `Idempotency-Key` (default: a new UUID); with the outbox, also its id until sent. */
  key?: string;
  /** Without the outbox: how often to retry on a network failure, 429 or 5xx (default 5). */
  retries?: number;
}

/**
 * What became of an insert in the outbox: queued; restored (found in the
 * store at start, queued by an earlier run or page); retrying (Broker could
 * not be reached, or answered 429 or 5xx; it is sent again later); sent;
 * failed (Broker refused it for good, such as 403: it is dropped);
 * cancelled while queued; discarded (its user logged out first).
 */
export type OutboxReport =
  | { type: "queued" | "restored" | "cancelled" | "discarded"; entry: OutboxEntry }
  | { type: "retrying" | "failed"; entry: OutboxEntry; error: BrokerError }
  | { type: "sent"; entry: OutboxEntry; event: BrokerEvent };

/** The outbox at a glance: a new object on every change. */
export interface OutboxStatus {
  /** Inserts not sent yet. */
  pending: number;
  /** Why the last attempt failed, until one succeeds. */
  lastError: BrokerError | null;
}

/**
 * Where a subscription stands:
 * - `connecting`: opening the stream, or opening it again after a failure
 *   (then with the error, such as "connection to Broker lost");
 * - `open`: events arrive;
 * - `forbidden`: open, but some of the named collections are private and
 *   this user may not read them (`error.collections` lists them; status 401
 *   when not logged in, 403 when not a member). Access granted later starts
 *   their events and the status goes back to `open`;
 * - `unauthenticated`: the session ended (logged out, token revoked or
 *   expired and not renewable, account disabled) or the server wants a
 *   token: the state was cleared, and the subscription waits for a log in,
 *   then starts afresh as that user (with `anonymous: true`, it goes on
 *   anonymously instead);
 * - `closed`: `close()` was called.
 */
export type StreamStatus = "connecting" | "open" | "forbidden" | "unauthenticated" | "closed";

/** A signal: a message for the streams of a collection open now, never stored. */
export interface Signal {
  /** The collection it was sent to. */
  collectionId: string;
  /** Its name. */
  event: string;
  /** The user who sent it. */
  userId: string;
  /** Its data. */
  data: unknown;
}

/** A user present in a collection. */
export interface PresentUser {
  userId: string;
  username: string;
  /** Since when, in UNIX seconds. */
  since: number;
}

/** Who has a collection open. */
export interface Presence {
  collectionId: string;
  /** By username. */
  users: PresentUser[];
  /** Streams without a token, when the stream (re)connected or when asked with `broker.presence()`. */
  anonymous: number;
}

/** What {@link Broker.subscribe} selects and is told. */
export interface SubscribeOptions {
  /** Only these collections (default: all). */
  collections?: string[];
  /** Only these event names (default: all). */
  events?: string[];
  /** Each event, in order, once. */
  onEvent?: (event: BrokerEvent) => void;
  /**
   * Also receive the signals sent to `collections` (which must be given):
   * `true` every one, `"others"` those other users sent (not the echo of
   * this user's own). Default: none.
   */
  signals?: boolean | "others";
  /** Each signal received while the stream is open (at most once; never replayed). */
  onSignal?: (signal: Signal) => void;
  /** Also who is present in `collections` (which must be given), kept in `subscription.presence`. */
  presence?: boolean;
  /** Who is present in a collection, after each change there. */
  onPresence?: (presence: Presence) => void;
  /** The state (latest event of each name in each collection) after each change. */
  onState?: (state: BrokerState) => void;
  /** The state was cleared, and why: another user, logged out, or an unknown last id. */
  onReset?: (reason: string) => void;
  /** Each change of {@link StreamStatus}, once, with the error that caused it. */
  onStatus?: (status: StreamStatus, error?: BrokerError) => void;
  /** After the session ends, go on reading public events anonymously instead of waiting for a log in. */
  anonymous?: boolean;
  /** Resume after this sequence number instead of starting with the current state. */
  lastEventId?: number;
  /** Reconnect when nothing (not even a heartbeat) came for this long, ms (default 45000). */
  silence?: number;
  /** Longest wait between reconnection attempts, ms (default 30000). */
  maxBackoff?: number;
}

/** An open subscription: its live state, until {@link Subscription.close}. */
export interface Subscription {
  /** The latest event of each name in each collection. */
  readonly state: BrokerState;
  /** Where the subscription stands. */
  readonly status: StreamStatus;
  /** The sequence number of the last event received. */
  readonly lastEventId: number | undefined;
  /** Who is present, by collection (with `presence: true`). */
  readonly presence: ReadonlyMap<string, Presence>;
  /** Stops for good. */
  close(): void;
}

/** Why a session changed, as subscriptions are told. */
type TokenListener = (token: string | null, reason?: string) => void;

/** A token's claims, if it can be read (the client never checks its signature). */
function claimsOf(token: string | null): { exp?: unknown; sub?: unknown } {
  try {
    const part = token!.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))) ?? {};
  } catch {
    return {};
  }
}

/** The seconds of a token's `exp` claim, if it has one. */
export function tokenExpiry(token: string): number | undefined {
  const { exp } = claimsOf(token);
  return typeof exp === "number" ? exp : undefined;
}

/** The user a token belongs to (its `sub`), or `null`. */
export function tokenUser(token: string | null): string | null {
  const { sub } = claimsOf(token);
  return typeof sub === "string" ? sub : null;
}

/** Refusals that end a session: the token is no good, and no refresh will make it good. */
const refused = (e: unknown) => e instanceof BrokerError && (e.status === 401 || e.status === 403);

/** A Broker server, as one user (or anonymous) sees it. */
export class Broker {
  private readonly base: string;
  private readonly storage: TokenStorage;
  private readonly cookies: boolean;
  private readonly fetcher: typeof fetch;
  private readonly refreshBefore: number;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly listeners = new Set<TokenListener>();
  private readonly outbox?: OutboxStore;
  /** The outbox's entries, in order, once loaded. */
  private readonly queue: OutboxEntry[] = [];
  private loaded?: Promise<void>;
  private flushing = false;
  private closed = false;
  /** The key being sent now. */
  private sending?: string;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private status: OutboxStatus = { pending: 0, lastError: null };
  private readonly settle = new Map<string, { resolve(e: BrokerEvent): void; reject(e: BrokerError): void; sent: Promise<BrokerEvent> }>();
  private readonly outboxListeners = new Set<(report: OutboxReport) => void>();

  constructor(options: BrokerOptions) {
    this.base = options.url.replace(/\/+$/, "");
    this.cookies = options.storage === "cookie";
    this.storage = typeof options.storage === "object" ? options.storage : memoryStorage();
    this.fetcher = options.fetch ?? ((input, init) => fetch(input, init));
    this.refreshBefore = options.refreshBefore ?? 60;
    this.schedule(this.storage.get());
    if (options.outbox) {
      const browser = typeof indexedDB !== "undefined";
      this.outbox = options.outbox === true ? (browser ? indexedDbOutbox() : memoryOutbox()) : options.outbox;
      globalThis.addEventListener?.("online", () => void this.flush());
      void this.flush();
    }
  }

  /** The current token, if logged in. */
  get token(): string | null {
    return this.storage.get();
  }

  /**
   * Calls `listener` whenever the token changes (log in, refresh, log out,
   * a session ended by the server), with the reason when the session
   * changes; returns the unsubscribe.
   */
  onToken(listener: TokenListener): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  private setToken(token: string | null, reason?: string): void {
    this.storage.set(token);
    this.schedule(token);
    for (const listener of this.listeners) listener(token, reason);
    void this.flush();
  }

  /** Forgets a token the server refused for good: subscriptions end their private view. */
  private endSession(error: BrokerError): void {
    this.setToken(null, `session ended: ${error.message}`);
  }

  /** Refreshes the token before it expires, by itself. */
  private schedule(token: string | null): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    const exp = token ? tokenExpiry(token) : undefined;
    if (exp === undefined) return;
    const left = exp * 1000 - Date.now();
    const margin = Math.min(this.refreshBefore * 1000, left / 3);
    this.refreshTimer = setTimeout(() => {
      this.refresh().catch((e) => (refused(e) ? this.endSession(e) : this.schedule(null)));
    }, Math.max(0, left - margin));
    // In Node, a pending refresh does not keep the process alive.
    (this.refreshTimer as { unref?: () => void }).unref?.();
  }

  /** Stops the token refresh timer and the outbox (subscriptions close by themselves). */
  close(): void {
    clearTimeout(this.refreshTimer);
    clearTimeout(this.retryTimer);
    this.closed = true;
  }

  /**
   * Sends a request; the JSON answer, or a {@link BrokerError}. A token the
   * server refuses is refreshed once; if that fails too, the session ends
   * (subscriptions are told) and the call fails with "session ended: …".
   */
  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    retried = false,
    extra: Record<string, string> = {},
  ): Promise<T> {
    const headers: Record<string, string> = { ...extra };
    const token = this.storage.get();
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response: Response;
    try {
      response = await this.fetcher(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: this.cookies ? "include" : "same-origin",
      });
    } catch (e) {
      throw new BrokerError(0, `cannot reach Broker: ${(e as Error).message}`);
    }
    if (response.ok) return (response.status === 204 ? undefined : await response.json()) as T;
    const error = await errorOf(response, token !== null || this.cookies);
    // Calls that prove who one is answer 401 for a wrong password, not for the token.
    const session = !["/login", "/refresh", "/logout", "/users/me/password"].includes(path);
    if (error.status !== 401 || !token || !session || token !== this.storage.get()) throw error;
    if (!retried) {
      const renewed = await this.refresh().then(
        () => true,
        (e) => !refused(e),
      );
      if (renewed) return this.request(method, path, body, true, extra);
    }
    this.endSession(error);
    throw new BrokerError(401, `session ended: ${error.message}`);
  }

  // Accounts

  /** Signs up; `collectionId` holds the user's profile events (a new one by default). */
  signUp(username: string, password: string, collectionId: string = crypto.randomUUID()): Promise<{ id: string }> {
    return this.request("POST", "/users", { username, password, collection_id: collectionId });
  }

  /**
   * Logs in and keeps the token (refreshed before it expires). As another
   * user than before, subscriptions clear their state and start afresh.
   */
  async logIn(username: string, password: string): Promise<string> {
    const { jwt } = await this.request<{ jwt: string }>("POST", "/login", { username, password });
    this.setToken(jwt, `logged in as ${username}`);
    return jwt;
  }

  /**
   * Revokes the token everywhere (its streams end) and forgets it at once,
   * even if Broker cannot be reached: subscriptions clear their state.
   */
  async logOut(): Promise<void> {
    const had = this.token !== null || this.cookies;
    await this.discard(tokenUser(this.token));
    const revoke = had ? this.request("POST", "/logout") : Promise.resolve();
    this.setToken(null, "logged out");
    await revoke.catch((e) => {
      if (!refused(e)) throw e; // an already refused token is as good as revoked
    });
  }

  /** Exchanges the token for a fresh one (done by itself before expiry). */
  async refresh(): Promise<string> {
    const { jwt } = await this.request<{ jwt: string }>("POST", "/refresh");
    this.setToken(jwt);
    return jwt;
  }

  /**
   * What a new password must be, as the server is configured
   * (`--min-password-length`): show it on a sign-up or change form.
   */
  async passwordRule(): Promise<{ minLength: number; maxLength: number }> {
    const rule = await this.request<{ min_length: number; max_length: number }>("GET", "/users/password-rule");
    return { minLength: rule.min_length, maxLength: rule.max_length };
  }

  /** Changes the password; every other token of the user is revoked. */
  async changePassword(oldPassword: string, newPassword: string): Promise<string> {
    const { jwt } = await this.request<{ jwt: string }>("POST", "/users/me/password", {
      old_password: oldPassword,
      new_password: newPassword,
    });
    this.setToken(jwt);
    return jwt;
  }

  /** The user the current token belongs to, or `null` (read from the token, no request). */
  get userId(): string | null {
    return tokenUser(this.token);
  }

  /** Who the token belongs to. */
  me(): Promise<Me> {
    return this.request("GET", "/users/me");
  }

  // Events

  /**
   * Inserts an event, published now or at `at`. The answer is the stored
   * event, `published: false`: the scheduler publishes it (at once if it is
   * due) right after, and the stream then carries it with its `seq`.
   *
   * Every insert carries an `Idempotency-Key`, so retrying it never stores
   * it twice. Without the outbox it is retried (with backoff, honouring
   * `Retry-After`) on a network failure, 429 or 5xx, `retries` times. With
   * the outbox it is queued first and the promise settles once Broker took
   * it (or refused it for good); it need not be awaited: {@link onOutbox}
   * tells what became of it, also after a reload.
   */
  insert(
    event: string,
    collectionId: string,
    data: unknown,
    at: Date = new Date(),
    options: InsertOptions = {},
  ): Promise<BrokerEvent> {
    const key = options.key ?? crypto.randomUUID();
    const timestamp = Math.floor(at.getTime() / 1000);
    const entry: OutboxEntry = { key, user: tokenUser(this.token), event, collectionId, data, timestamp };
    if (!this.outbox) return this.sendRetrying(entry, options.retries ?? 5);
    const queued = this.enqueue(entry);
    queued.catch(() => {}); // an app need not await it: onOutbox tells
    return queued;
  }

  private async sendRetrying(entry: OutboxEntry, retries: number): Promise<BrokerEvent> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.send(entry);
      } catch (e) {
        if (!retryable(e) || attempt >= retries) throw e;
        await new Promise((resolve) => setTimeout(resolve, backoff(attempt, e as BrokerError)));
      }
    }
  }

  private async enqueue(entry: OutboxEntry): Promise<BrokerEvent> {
    await this.ready();
    const sent = this.defer(entry.key);
    this.queue.push(entry);
    await this.outbox!.add(entry);
    this.report({ type: "queued", entry });
    void this.flush();
    return sent;
  }

  /** Sends one insert, once. */
  private async send(entry: OutboxEntry): Promise<BrokerEvent> {
    const { event, collectionId: collection_id, timestamp, data } = entry;
    const headers = { "idempotency-key": entry.key };
    const answer = await this.request<{ event: Wire }>("POST", "/insert", { event, collection_id, timestamp, data }, false, headers);
    return eventOf(answer.event);
  }

  /** The outbox: how many inserts wait, and the last failure. */
  get outboxStatus(): OutboxStatus {
    return this.status;
  }

  /** The inserts the outbox holds, in order. */
  get outboxEntries(): readonly OutboxEntry[] {
    return [...this.queue];
  }

  /** Calls `listener` with what becomes of each insert in the outbox; returns the unsubscribe. */
  onOutbox(listener: (report: OutboxReport) => void): () => void {
    this.outboxListeners.add(listener);
    return () => void this.outboxListeners.delete(listener);
  }

  private report(report: OutboxReport): void {
    const lastError = report.type === "sent" ? null : "error" in report ? report.error : this.status.lastError;
    this.status = { pending: this.queue.length, lastError };
    for (const listener of this.outboxListeners) listener(report);
  }

  /** Loads the stored outbox, once. */
  private ready(): Promise<void> {
    return (this.loaded ??= (async () => {
      for (const entry of await this.outbox!.load()) {
        this.defer(entry.key);
        this.queue.push(entry);
        this.report({ type: "restored", entry });
      }
    })());
  }

  /** The promise of an insert in the outbox; an app that does not await it is not told of its failure twice. */
  private defer(key: string): Promise<BrokerEvent> {
    let settle!: { resolve(e: BrokerEvent): void; reject(e: BrokerError): void };
    const sent = new Promise<BrokerEvent>((resolve, reject) => (settle = { resolve, reject }));
    sent.catch(() => {});
    this.settle.set(key, { ...settle, sent });
    return sent;
  }

  /** Takes `entry` out of the outbox for good. */
  private async drop(entry: OutboxEntry, outcome: { event: BrokerEvent } | { error: BrokerError }, type: OutboxReport["type"]) {
    const at = this.queue.indexOf(entry);
    if (at >= 0) this.queue.splice(at, 1);
    await this.outbox!.remove(entry.key);
    const settle = this.settle.get(entry.key);
    this.settle.delete(entry.key);
    if ("event" in outcome) settle?.resolve(outcome.event);
    else settle?.reject(outcome.error);
    this.report({ type, entry, ...outcome } as OutboxReport);
  }

  /**
   * Sends what the outbox holds, in order, until it is empty or Broker
   * cannot be reached (then again later, at once when the browser is back
   * online). An insert waits for its own user to be logged in.
   */
  async flush(): Promise<void> {
    if (!this.outbox || this.flushing || this.closed) return;
    this.flushing = true;
    clearTimeout(this.retryTimer);
    try {
      await this.ready();
      for (let entry = this.queue[0]; entry && !this.closed; entry = this.queue[0]) {
        if (entry.user !== tokenUser(this.token) && !this.cookies) return;
        // The browser knows it is offline: wait for its "online" event.
        if (globalThis.navigator?.onLine === false) {
          return this.report({ type: "retrying", entry, error: new BrokerError(0, "the browser is offline") });
        }
        this.sending = entry.key;
        try {
          const event = await this.send(entry);
          this.attempt = 0;
          await this.drop(entry, { event }, "sent");
        } catch (e) {
          const error = e instanceof BrokerError ? e : new BrokerError(0, String(e));
          if (!retryable(error) && error.status !== 401) {
            await this.drop(entry, { error }, "failed");
            continue;
          }
          this.report({ type: "retrying", entry, error });
          // 401: the session ended; a log in flushes again.
          if (error.status !== 401 && !this.closed) {
            this.retryTimer = setTimeout(() => void this.flush(), backoff(this.attempt++, error));
            (this.retryTimer as { unref?: () => void }).unref?.();
          }
          return;
        }
      }
    } finally {
      this.flushing = false;
      this.sending = undefined;
    }
  }

  /** Drops the queued inserts of `user` (who logs out): another user must not send them. */
  private async discard(user: string | null): Promise<void> {
    if (!this.outbox) return;
    await this.ready();
    const error = new BrokerError(0, "logged out before it was sent");
    for (const entry of this.queue.filter((e) => e.user === user && e.key !== this.sending)) {
      await this.drop(entry, { error }, "discarded");
    }
  }

  /**
   * Sends a signal to the streams of a collection open now (those that
   * asked for signals); nothing is stored. Needs the write permission an
   * insert needs; 429 beyond the server's `--signal-rate`.
   */
  async signal(event: string, collectionId: string, data: unknown): Promise<Signal> {
    const body = { event, collection_id: collectionId, data };
    return signalOf((await this.request<{ signal: SignalWire }>("POST", "/signal", body)).signal);
  }

  /** Who has a collection open now, over every node (a private one's: readers only). */
  async presence(collectionId: string): Promise<Presence> {
    return presenceOf(await this.request<PresenceWire>("GET", `/collections/${collectionId}/presence`));
  }

  /**
   * Cancels a future event of one's own (`event.id` of any event this
   * client handed over). An insert still in the outbox is cancelled by its
   * key, locally: it is never sent (one being sent is cancelled once sent).
   */
  async cancel(id: string): Promise<BrokerEvent> {
    const queued = this.queue.find((e) => e.key === id);
    if (queued && id !== this.sending) {
      const error = new BrokerError(0, "cancelled before it was sent");
      await this.drop(queued, { error }, "cancelled");
      const { key, user, event, collectionId, data, timestamp } = queued;
      return { id: key, userId: user ?? "", event, collectionId, data, timestamp, published: false, cancelled: true };
    }
    if (queued) id = (await this.settle.get(id)!.sent).id;
    return eventOf((await this.request<{ event: Wire }>("POST", `/events/${id}/cancel`)).event);
  }

  /** Every event of a collection, by timestamp, fetched a page at a time. */
  collectionEvents(collectionId: string, pageSize = 100): AsyncIterable<BrokerEvent> {
    return this.events(`/events/collections/${collectionId}`, pageSize, "events");
  }

  /** Every event one inserted, by timestamp. */
  myEvents(pageSize = 100): AsyncIterable<BrokerEvent> {
    return this.events("/events/user", pageSize, "events");
  }

  /** The events of one's own profile collection, by timestamp. */
  myInfo(pageSize = 100): AsyncIterable<BrokerEvent> {
    return this.events("/events/user", pageSize, "info");
  }

  private async *events(path: string, limit: number, list: string): AsyncGenerator<BrokerEvent> {
    for await (const wire of this.pages<Wire>(path, limit, list)) yield eventOf(wire);
  }

  /** The `list` of each page of a listing, following its cursor. */
  private async *pages<T>(path: string, limit: number, list: string): AsyncGenerator<T> {
    let cursor: string | null = null;
    do {
      const query = `${path.includes("?") ? "&" : "?"}limit=${limit}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
      const page: Record<string, unknown> = await this.request("GET", path + query);
      yield* page[list] as T[];
      cursor = page.cursor as string | null;
    } while (cursor);
  }

  // Collections

  /** Claims a collection (private by default). */
  claim(collectionId: string, isPrivate = true): Promise<Collection> {
    return this.request("POST", "/collections", { collection_id: collectionId, private: isPrivate });
  }

  /** A claimed collection (owner and members only). */
  collection(collectionId: string): Promise<Collection> {
    return this.request("GET", `/collections/${collectionId}`);
  }

  /** A claimed collection's JSON Schemas, by event name or pattern (owner and members). */
  async schemas(collectionId: string): Promise<Record<string, object>> {
    return (await this.request<{ schemas: Record<string, object> }>("GET", `/collections/${collectionId}/schemas`)).schemas;
  }

  /**
   * Sets the JSON Schema (draft 2020-12, an object) that the data of events
   * named `event` must match from now on; `event` may be a pattern such as
   * `card:*`. An insert that does not match fails with 400 and
   * `error.path`. Answers the collection's schemas.
   */
  async setSchema(collectionId: string, event: string, schema: object): Promise<Record<string, object>> {
    const path = `/collections/${collectionId}/schemas/${encodeURIComponent(event)}`;
    return (await this.request<{ schemas: Record<string, object> }>("PUT", path, schema)).schemas;
  }

  /** Removes the schema of an event name or pattern; answers the collection's schemas. */
  async deleteSchema(collectionId: string, event: string): Promise<Record<string, object>> {
    const path = `/collections/${collectionId}/schemas/${encodeURIComponent(event)}`;
    return (await this.request<{ schemas: Record<string, object> }>("DELETE", path)).schemas;
  }

  /** Sets which events one's collection keeps: `{}` all, `maxAge` (seconds) and/or `keepLatest` per name. */
  async setRetention(collectionId: string, retention: { maxAge?: number; keepLatest?: number }): Promise<Collection> {
    const body = { retention: { max_age: retention.maxAge, keep_latest: retention.keepLatest } };
    return this.request("PATCH", `/collections/${collectionId}`, body);
  }

  /**
   * Has the published events of one's collection POSTed to `url`, signed as
   * Standard Webhooks says (verify them with the `standardwebhooks`
   * package and the `secret` answered here, and only here).
   */
  addWebhook(collectionId: string, url: string, options: { events?: string[]; description?: string } = {}): Promise<Webhook> {
    return this.request("POST", `/collections/${collectionId}/webhooks`, { url, ...options });
  }

  /** One's collection's webhooks (without their secrets). */
  async webhooks(collectionId: string): Promise<Webhook[]> {
    return (await this.request<{ webhooks: Webhook[] }>("GET", `/collections/${collectionId}/webhooks`)).webhooks;
  }

  /** One webhook, with its latest attempts. */
  webhook(collectionId: string, id: string): Promise<Webhook> {
    return this.request("GET", `/collections/${collectionId}/webhooks/${id}`);
  }

  /** Changes a webhook; `paused: false` resumes it (after a failure too) at the first event not delivered. */
  updateWebhook(
    collectionId: string,
    id: string,
    change: { url?: string; events?: string[]; description?: string; paused?: boolean },
  ): Promise<Webhook> {
    return this.request("PATCH", `/collections/${collectionId}/webhooks/${id}`, change);
  }

  /** Gives a webhook a new secret (in the answer). */
  rotateWebhookSecret(collectionId: string, id: string): Promise<Webhook> {
    return this.request("POST", `/collections/${collectionId}/webhooks/${id}/secret`);
  }

  /** Removes a webhook. */
  async deleteWebhook(collectionId: string, id: string): Promise<void> {
    await this.request("DELETE", `/collections/${collectionId}/webhooks/${id}`);
  }

  /** Makes one's collection private or public. */
  setPrivate(collectionId: string, isPrivate: boolean): Promise<Collection> {
    return this.request("PATCH", `/collections/${collectionId}`, { private: isPrivate });
  }

  /** Adds a member to one's collection, or changes their role. */
  addMember(collectionId: string, username: string, role: Role): Promise<Collection> {
    return this.request("PUT", `/collections/${collectionId}/members/${encodeURIComponent(username)}`, { role });
  }

  /** Removes a member from one's collection. */
  removeMember(collectionId: string, username: string): Promise<Collection> {
    return this.request("DELETE", `/collections/${collectionId}/members/${encodeURIComponent(username)}`);
  }

  // Administration (administrators only)

  /** Users whose name contains `search`, by name. */
  users(search = "", pageSize = 100): AsyncIterable<AdminUser> {
    const path = `/admin/users?search=${encodeURIComponent(search)}`;
    return this.pages(path, pageSize, "users");
  }

  /** Disables (or enables again) an account. */
  setDisabled(userId: string, disabled: boolean): Promise<AdminUser> {
    return this.request("PATCH", `/admin/users/${userId}`, { disabled });
  }

  /** Sets a user's password; their tokens are revoked. */
  resetPassword(userId: string, password: string): Promise<AdminUser> {
    return this.request("PATCH", `/admin/users/${userId}`, { password });
  }

  /** Any claimed collection. */
  adminCollection(collectionId: string): Promise<Collection> {
    return this.request("GET", `/admin/collections/${collectionId}`);
  }

  // The stream

  /**
   * Keeps a live state (the latest event of each name in each collection)
   * and hands over every event, in order, once: reconnects after any
   * failure (backing off with jitter), resumes after the last id, clears
   * the state on `reset`, reconnects a silent connection, and uses the
   * current token. When the user changes (log in as another, log out, a
   * session the server ended) the state is cleared and the stream starts
   * afresh as the new user; with nobody logged in it waits for a log in
   * (status `unauthenticated`), unless `anonymous` is set.
   */
  subscribe(options: SubscribeOptions = {}): Subscription {
    const state = new State();
    const presence = new Map<string, Presence>();
    let last = options.lastEventId;
    let closed = false;
    let controller: AbortController | undefined;
    let wake: (() => void) | undefined;
    let renewed = false;
    /** Nobody is logged in any more: wait for a log in. */
    let waiting = false;
    /** Whose view the state is: a user id, or null (anonymous). */
    let viewer = tokenUser(this.token);
    let current: StreamStatus | undefined;
    let currentError: string | undefined;
    let forbidden: string[] = [];
    const silence = options.silence ?? 45_000;
    const maxBackoff = options.maxBackoff ?? 30_000;
    const report = (status: StreamStatus, error?: BrokerError) => {
      if (status === current && error?.message === currentError) return;
      [current, currentError] = [status, error?.message];
      options.onStatus?.(status, error);
    };
    const reset = (reason: string) => {
      state.clear();
      presence.clear();
      last = undefined;
      options.onReset?.(reason);
      options.onState?.(state);
    };
    const restart = () => {
      renewed = true;
      controller?.abort();
      wake?.();
    };
    const unlisten = this.onToken((token, reason) => {
      const user = tokenUser(token);
      // A refreshed token of the same user: use it at once, resuming.
      if (user === viewer && !(token === null && this.cookies)) return restart();
      // Another user, or nobody: the old view must not outlive the session.
      const wasSomebody = viewer !== null || this.cookies;
      viewer = user;
      reset(reason ?? (token ? "another user" : "logged out"));
      waiting = token === null && wasSomebody && !options.anonymous;
      if (waiting) report("unauthenticated", new BrokerError(401, reason ?? "logged out"));
      restart();
    });

    const query = new URLSearchParams({ envelope: "true" });
    for (const c of options.collections ?? []) query.append("collection_id", c);
    for (const e of options.events ?? []) query.append("event", e);
    if (options.signals) query.set("signals", options.signals === "others" ? "others" : "true");
    if (options.presence) query.set("presence", "true");

    const deliver = (message: { id?: string; event: string; data: string }) => {
      if (message.event === "reset") return reset("Broker did not know the last event id");
      if (message.event === "signal") return options.onSignal?.(signalOf(JSON.parse(message.data) as SignalWire));
      if (message.event === "presence") {
        const change = JSON.parse(message.data) as PresenceWire & PresentWire & { type: string };
        const id = change.collection_id;
        const before = presence.get(id) ?? { collectionId: id, users: [], anonymous: 0 };
        const others = before.users.filter((u) => u.userId !== change.user_id);
        const after =
          change.type === "list"
            ? presenceOf(change)
            : change.type === "join"
              ? { ...before, users: [...others, presentOf(change)].sort(byName) }
              : { ...before, users: others };
        presence.set(id, after);
        return options.onPresence?.(after);
      }
      if (message.event === "forbidden") {
        const notice = JSON.parse(message.data) as { collections: string[]; error: string | null };
        forbidden = notice.collections;
        if (forbidden.length === 0) return report("open");
        const status = viewer === null && !this.cookies ? 401 : 403;
        return report("forbidden", new BrokerError(status, notice.error ?? "forbidden", undefined, forbidden));
      }
      if (message.event !== "message") return;
      const seq = Number(message.id);
      if (!Number.isSafeInteger(seq) || (last !== undefined && seq <= last)) return; // seen
      const event = eventOf(JSON.parse(message.data) as Wire, seq);
      last = seq;
      state.set(event);
      options.onEvent?.(event);
      options.onState?.(state);
    };

    const connect = async (): Promise<void> => {
      controller = new AbortController();
      const headers: Record<string, string> = { accept: "text/event-stream" };
      const token = this.storage.get();
      // In cookie mode the stream is authenticated by the cookie alone.
      if (token && !this.cookies) headers.authorization = `Bearer ${token}`;
      if (last !== undefined) headers["last-event-id"] = String(last);
      let response: Response;
      try {
        response = await this.fetcher(`${this.base}/events?${query}`, {
          headers,
          signal: controller.signal,
          credentials: this.cookies ? "include" : "same-origin",
          cache: "no-store",
        });
      } catch {
        throw new BrokerError(0, "cannot reach Broker");
      }
      if (!response.ok || !response.body) {
        const error = await errorOf(response, token !== null || this.cookies);
        if (error.status === 401 && token === this.storage.get()) {
          if (token && !this.cookies) {
            // An expired token: a fresh one, then again; a revoked one: the session is over.
            await this.refresh().catch((e) => refused(e) && this.endSession(error));
          } else if (token) {
            this.endSession(error); // cookie mode: the session this client knew is over
          } else {
            // No session known here (this server reads no stream without
            // one, or a cookie from before a reload was revoked): nothing
            // read with that cookie stays, and no tight loop either.
            if (this.cookies && state.size > 0) reset(`session ended: ${error.message}`);
            waiting = !options.anonymous;
            if (waiting) report("unauthenticated", error);
          }
        }
        throw error;
      }
      const reader = response.body.getReader();
      const parser = new SseParser();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const quiet = () => {
        clearTimeout(timer);
        timer = setTimeout(() => reader.cancel().catch(() => {}), silence);
      };
      forbidden = [];
      try {
        quiet();
        for (let first = true; ; first = false) {
          let read: ReadableStreamReadResult<Uint8Array>;
          try {
            read = await reader.read();
          } catch {
            throw new BrokerError(0, "connection to Broker lost");
          }
          if (read.done) return; // ended by Broker (shutdown, token revoked or expired): connect again
          quiet();
          parser.feed(read.value, deliver);
          // The first chunk says whether some named collections are unreadable.
          if (first && forbidden.length === 0) report("open");
        }
      } finally {
        clearTimeout(timer);
        reader.cancel().catch(() => {});
      }
    };

    const run = async () => {
      let attempt = 0;
      while (!closed) {
        if (waiting) {
          await new Promise<void>((resolve) => (wake = resolve));
          continue;
        }
        if (current !== "connecting") report("connecting");
        let failure: BrokerError | undefined;
        const before = last;
        renewed = false;
        try {
          await connect();
        } catch (e) {
          failure = e instanceof BrokerError ? e : new BrokerError(0, (e as Error).message);
        }
        if (closed) break;
        if (renewed || waiting) continue; // a new session, or none: see above
        // A connection that delivered something starts the backoff afresh.
        attempt = last !== before ? 0 : attempt + 1;
        report("connecting", failure);
        const backoff = Math.min(maxBackoff, 500 * 2 ** Math.min(attempt, 10));
        const delay = Math.max((failure?.retryAfter ?? 0) * 1000, backoff / 2 + Math.random() * (backoff / 2));
        await new Promise<void>((resolve) => {
          // A stream Broker ended is opened again at once (a revoked session shows at once).
          const timer = setTimeout(resolve, !failure && attempt <= 1 ? 0 : delay);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      report("closed");
    };
    void run();

    return {
      state,
      get status() {
        return current ?? "connecting";
      },
      get lastEventId() {
        return last;
      },
      presence,
      close: () => {
        closed = true;
        unlisten();
        controller?.abort();
        wake?.();
      },
    };
  }
}

/** A present user as the server writes it. */
interface PresentWire {
  user_id: string;
  username: string;
  since: number;
}

/** Who is present, as the server writes it. */
interface PresenceWire {
  collection_id: string;
  users: PresentWire[];
  anonymous: number;
}

const presentOf = (wire: PresentWire): PresentUser => ({ userId: wire.user_id, username: wire.username, since: wire.since });
const byName = (a: PresentUser, b: PresentUser) => (a.username < b.username ? -1 : a.username > b.username ? 1 : 0);

function presenceOf(wire: PresenceWire): Presence {
  return { collectionId: wire.collection_id, users: wire.users.map(presentOf), anonymous: wire.anonymous };
}

/** A signal as the server writes it. */
interface SignalWire {
  collection_id: string;
  event: string;
  user_id: string;
  data: unknown;
}

function signalOf(wire: SignalWire): Signal {
  return { collectionId: wire.collection_id, event: wire.event, userId: wire.user_id, data: wire.data };
}

/** Whether a failed insert may be sent again: Broker was not reached, was busy (429) or failed (5xx). */
function retryable(e: unknown): boolean {
  return e instanceof BrokerError && (e.status === 0 || e.status === 429 || e.status >= 500);
}

/** Milliseconds before attempt `attempt + 1`: doubling from 250 ms to 8 s, with jitter, at least `Retry-After`. */
function backoff(attempt: number, e: BrokerError): number {
  const base = Math.min(8000, 250 * 2 ** attempt);
  return Math.max((e.retryAfter ?? 0) * 1000, base / 2 + (Math.random() * base) / 2);
}

/** The {@link BrokerError} of a failed response; `credentials`: whether a token or cookie went with it. */
async function errorOf(response: Response, credentials: boolean): Promise<BrokerError> {
  let message = response.statusText || `HTTP ${response.status}`;
  let path: string | undefined;
  try {
    const body = await response.json();
    if (typeof body?.error === "string") message = body.error;
    if (typeof body?.path === "string") path = body.path;
  } catch {
    // not JSON: keep the status text
  }
  if (response.status === 401 && !credentials) message = `not logged in (${message})`;
  const retry = Number(response.headers.get("retry-after"));
  return new BrokerError(response.status, message, Number.isFinite(retry) && retry > 0 ? retry : undefined, undefined, path);
}
