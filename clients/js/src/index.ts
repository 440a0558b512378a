import { SseParser } from "./sse.js";

export { SseParser, type SseMessage } from "./sse.js";

/** An event as Broker stores it. */
export interface EventRecord {
  id: string;
  user_id: string;
  collection_id: string;
  event: string;
  /** UNIX seconds. */
  timestamp: number;
  published: boolean;
  cancelled: boolean;
  data: unknown;
}

/** An event as the stream delivers it. */
export interface BrokerEvent {
  /** The publication sequence number: increasing, never reused. */
  id: number;
  event: string;
  collectionId: string;
  data: unknown;
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
}

/** What {@link Broker.subscribe} selects and is told. */
export interface SubscribeOptions {
  /** Only these collections (default: all). */
  collections?: string[];
  /** Only these event names (default: all). */
  events?: string[];
  /** Each event, in order, once. */
  onEvent?: (event: BrokerEvent) => void;
  /** The state (latest event of each name) after each change. */
  onState?: (state: ReadonlyMap<string, BrokerEvent>) => void;
  /** `reset`: the server did not know the last id; the state was cleared. */
  onReset?: () => void;
  /** Connection changes; `error` is set while reconnecting after one. */
  onStatus?: (status: "connecting" | "open" | "closed", error?: BrokerError) => void;
  /** Resume after this id instead of starting with the current state. */
  lastEventId?: number;
  /** Reconnect when nothing (not even a heartbeat) came for this long, ms (default 45000). */
  silence?: number;
  /** Longest wait between reconnection attempts, ms (default 30000). */
  maxBackoff?: number;
}

/** An open subscription: its live state, until {@link Subscription.close}. */
export interface Subscription {
  /** The latest event of each name. */
  readonly state: ReadonlyMap<string, BrokerEvent>;
  /** The id of the last event received. */
  readonly lastEventId: number | undefined;
  /** Stops for good. */
  close(): void;
}

/** The seconds of a token's `exp` claim, if it has one. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return typeof claims.exp === "number" ? claims.exp : undefined;
  } catch {
    return undefined;
  }
}

/** A Broker server, as one user (or anonymous) sees it. */
export class Broker {
  private readonly base: string;
  private readonly storage: TokenStorage;
  private readonly cookies: boolean;
  private readonly fetcher: typeof fetch;
  private readonly refreshBefore: number;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly listeners = new Set<(token: string | null) => void>();

  constructor(options: BrokerOptions) {
    this.base = options.url.replace(/\/+$/, "");
    this.cookies = options.storage === "cookie";
    this.storage = typeof options.storage === "object" ? options.storage : memoryStorage();
    this.fetcher = options.fetch ?? ((input, init) => fetch(input, init));
    this.refreshBefore = options.refreshBefore ?? 60;
    this.schedule(this.storage.get());
  }

  /** The current token, if logged in. */
  get token(): string | null {
    return this.storage.get();
  }

  /** Calls `listener` whenever the token changes (log in, refresh, log out); returns the unsubscribe. */
  onToken(listener: (token: string | null) => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  private setToken(token: string | null): void {
    this.storage.set(token);
    this.schedule(token);
    for (const listener of this.listeners) listener(token);
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
      this.refresh().catch(() => this.schedule(null));
    }, Math.max(0, left - margin));
    // In Node, a pending refresh does not keep the process alive.
    (this.refreshTimer as { unref?: () => void }).unref?.();
  }

  /** Stops the token refresh timer (subscriptions close by themselves). */
  close(): void {
    clearTimeout(this.refreshTimer);
  }

  /** Sends a request; the JSON answer, or a {@link BrokerError}. */
  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
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
    if (!response.ok) throw await errorOf(response);
    return (response.status === 204 ? undefined : await response.json()) as T;
  }

  // Accounts

  /** Signs up; `collectionId` holds the user's profile events (a new one by default). */
  signUp(username: string, password: string, collectionId: string = crypto.randomUUID()): Promise<{ id: string }> {
    return this.request("POST", "/users", { username, password, collection_id: collectionId });
  }

  /** Logs in and keeps the token (refreshed before it expires). */
  async logIn(username: string, password: string): Promise<string> {
    const { jwt } = await this.request<{ jwt: string }>("POST", "/login", { username, password });
    this.setToken(jwt);
    return jwt;
  }

  /** Revokes the token everywhere and forgets it. */
  async logOut(): Promise<void> {
    try {
      if (this.token || this.cookies) await this.request("POST", "/logout");
    } finally {
      this.setToken(null);
    }
  }

  /** Exchanges the token for a fresh one (done by itself before expiry). */
  async refresh(): Promise<string> {
    const { jwt } = await this.request<{ jwt: string }>("POST", "/refresh");
    this.setToken(jwt);
    return jwt;
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

  /** Who the token belongs to. */
  me(): Promise<Me> {
    return this.request("GET", "/users/me");
  }

  // Events

  /** Inserts an event, published now or at `at`. */
  async insert(event: string, collectionId: string, data: unknown, at: Date = new Date()): Promise<EventRecord> {
    const timestamp = Math.floor(at.getTime() / 1000);
    const body = { event, collection_id: collectionId, timestamp, data };
    return (await this.request<{ event: EventRecord }>("POST", "/insert", body)).event;
  }

  /** Cancels a future event of one's own. */
  async cancel(id: string): Promise<EventRecord> {
    return (await this.request<{ event: EventRecord }>("POST", `/events/${id}/cancel`)).event;
  }

  /** Every event of a collection, by timestamp, fetched a page at a time. */
  collectionEvents(collectionId: string, pageSize = 100): AsyncIterable<EventRecord> {
    return this.pages(`/events/collections/${collectionId}`, pageSize, "events");
  }

  /** Every event one inserted, by timestamp. */
  myEvents(pageSize = 100): AsyncIterable<EventRecord> {
    return this.pages("/events/user", pageSize, "events");
  }

  /** The events of one's own profile collection, by timestamp. */
  myInfo(pageSize = 100): AsyncIterable<EventRecord> {
    return this.pages("/events/user", pageSize, "info");
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
   * Keeps a live state (the latest event of each name) and hands over
   * every event, in order, once: reconnects after any failure (backing off
   * with jitter), resumes after the last id, clears the state on `reset`,
   * reconnects a silent connection, and uses the current token.
   */
  subscribe(options: SubscribeOptions = {}): Subscription {
    const state = new Map<string, BrokerEvent>();
    let last = options.lastEventId;
    let closed = false;
    let controller: AbortController | undefined;
    let wake: (() => void) | undefined;
    let renewed = false;
    const silence = options.silence ?? 45_000;
    const maxBackoff = options.maxBackoff ?? 30_000;
    const status = options.onStatus ?? (() => {});
    // A new token (refresh, log in) is used at once: the old one's stream ends when it expires.
    const unlisten = this.onToken(() => {
      renewed = true;
      controller?.abort();
      wake?.();
    });

    const query = new URLSearchParams({ envelope: "true" });
    for (const c of options.collections ?? []) query.append("collection_id", c);
    for (const e of options.events ?? []) query.append("event", e);

    const deliver = (message: { id?: string; event: string; data: string }) => {
      if (message.event === "reset") {
        state.clear();
        last = undefined;
        options.onReset?.();
        options.onState?.(state);
        return;
      }
      const id = Number(message.id);
      if (!Number.isSafeInteger(id) || (last !== undefined && id <= last)) return; // seen
      const body = JSON.parse(message.data) as { event: string; collection_id: string; data: unknown };
      const event: BrokerEvent = { id, event: body.event, collectionId: body.collection_id, data: body.data };
      last = id;
      state.set(event.event, event);
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
      } catch (e) {
        throw new BrokerError(0, `cannot reach Broker: ${(e as Error).message}`);
      }
      if (!response.ok || !response.body) {
        const error = await errorOf(response);
        // An expired token: a fresh one, then again.
        if (error.status === 401 && token && !this.cookies && token === this.storage.get()) {
          await this.refresh().catch(() => this.setToken(null));
        }
        throw error;
      }
      status("open");
      const reader = response.body.getReader();
      const parser = new SseParser();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const quiet = () => {
        clearTimeout(timer);
        timer = setTimeout(() => reader.cancel().catch(() => {}), silence);
      };
      try {
        quiet();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return;
          quiet();
          parser.feed(value, deliver);
        }
      } finally {
        clearTimeout(timer);
        reader.cancel().catch(() => {});
      }
    };

    const run = async () => {
      let attempt = 0;
      while (!closed) {
        status("connecting");
        let failure: BrokerError | undefined;
        const before = last;
        renewed = false;
        try {
          await connect();
        } catch (e) {
          failure = e instanceof BrokerError ? e : new BrokerError(0, (e as Error).message);
        }
        if (closed) break;
        if (renewed) continue; // a new token: reconnect with it at once
        // A connection that delivered something starts the backoff afresh.
        attempt = last !== before ? 0 : attempt + 1;
        status("connecting", failure);
        const backoff = Math.min(maxBackoff, 500 * 2 ** Math.min(attempt, 10));
        const delay = Math.max((failure?.retryAfter ?? 0) * 1000, backoff / 2 + Math.random() * (backoff / 2));
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, attempt === 0 && !failure ? 0 : delay);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      status("closed");
    };
    void run();

    return {
      state,
      get lastEventId() {
        return last;
      },
      close: () => {
        closed = true;
        unlisten();
        controller?.abort();
        wake?.();
      },
    };
  }
}

/** The {@link BrokerError} of a failed response. */
async function errorOf(response: Response): Promise<BrokerError> {
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (typeof body?.error === "string") message = body.error;
  } catch {
    // not JSON: keep the status text
  }
  const retry = Number(response.headers.get("retry-after"));
  return new BrokerError(response.status, message, Number.isFinite(retry) && retry > 0 ? retry : undefined);
}
