import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import {
  snapshotOf,
  type Broker,
  type BrokerError,
  type BrokerEvent,
  type BrokerState,
  type OutboxStatus,
  type Presence,
  type Signal,
  type StreamStatus,
  type Subscription,
} from "@broker/client";

/** What to read: collections and event names (all by default). */
export interface Filter {
  collections?: string[];
  events?: string[];
  /** Also the signals of `collections`: all, or only other users' (see `@broker/client`). */
  signals?: boolean | "others";
  /** Also who is present in `collections`. */
  presence?: boolean;
}

/**
 * One stream per filter, shared by every hook that asks for it and closed
 * when the last one goes: an app's components do not each open one.
 */
class Live {
  subscription?: Subscription;
  /** A new copy on every change, so that React sees it changed. */
  state: BrokerState;
  events: BrokerEvent[] = [];
  /** The signals received, oldest first; a new array on every one. */
  signals: Signal[] = [];
  /** Who is present, by collection; a new map on every change. */
  presence: ReadonlyMap<string, Presence> = new Map();
  /** A new object on every change of status. */
  status: { status: StreamStatus; error?: BrokerError } = { status: "connecting" };
  private listeners = new Set<() => void>();
  users = 0;
  key = "";

  constructor(broker: Broker, filter: Filter, keep: number) {
    this.subscription = broker.subscribe({
      ...filter,
      onEvent: (event) => {
        this.events = [...this.events.slice(-(keep - 1)), event];
      },
      onPresence: (presence) => {
        this.presence = new Map(this.presence).set(presence.collectionId, presence);
        this.notify();
      },
      onSignal: (signal) => {
        this.signals = [...this.signals.slice(-(keep - 1)), signal];
        this.notify();
      },
      onState: (state) => {
        this.state = snapshotOf(state);
        this.notify();
      },
      // Another user, or none: nothing of the old view stays on screen.
      onReset: () => {
        this.events = [];
        this.signals = [];
        this.presence = new Map();
      },
      onStatus: (status, error) => {
        this.status = { status, error };
        this.notify();
      },
    });
    this.state = snapshotOf(this.subscription.state);
  }

  listen = (listener: () => void) => {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  };

  private notify() {
    for (const listener of this.listeners) listener();
  }
}

/** The events each filter's stream keeps for {@link useBrokerEvents}. */
const KEEP = 500;

interface Shared {
  broker: Broker;
  /** The stream of `filter`, opened if need be (and closed again unless held). */
  get(filter: Filter): Live;
  hold(live: Live): void;
  release(live: Live): void;
}

const Context = createContext<Shared | null>(null);

/** Makes `client` available to the hooks below it. */
export function BrokerProvider({ client, children }: { client: Broker; children?: ReactNode }) {
  const shared = useMemo<Shared>(() => {
    const lives = new Map<string, Live>();
    const key = (f: Filter) =>
      JSON.stringify([
        [...(f.collections ?? [])].sort(),
        [...(f.events ?? [])].sort(),
        f.signals ?? false,
        f.presence ?? false,
      ]);
    // A stream nobody holds is closed a moment later (a component that
    // re-mounts at once, as under StrictMode, keeps it).
    const reap = (k: string, live: Live) =>
      setTimeout(() => {
        if (live.users === 0 && lives.get(k) === live) {
          live.subscription?.close();
          lives.delete(k);
        }
      }, 1000);
    return {
      broker: client,
      get(filter) {
        const k = key(filter);
        let live = lives.get(k);
        if (!live) {
          lives.set(k, (live = new Live(client, filter, KEEP)));
          live.key = k;
          reap(k, live);
        }
        return live;
      },
      hold(live) {
        live.users++;
      },
      release(live) {
        if (--live.users === 0) reap(live.key, live);
      },
    };
  }, [client]);
  return <Context.Provider value={shared}>{children}</Context.Provider>;
}

function useShared(): Shared {
  const shared = useContext(Context);
  if (!shared) throw new Error("the Broker hooks need a <BrokerProvider> above them");
  return shared;
}

/** The client given to the provider. */
export function useBroker(): Broker {
  return useShared().broker;
}

/** The shared stream of `filter`, held while the component is mounted. */
function useLive(filter: Filter): Live {
  const shared = useShared();
  const key = JSON.stringify(filter);
  const live = useMemo(() => shared.get(filter), [shared, key]); // eslint-disable-line react-hooks/exhaustive-deps
  useEffect(() => {
    shared.hold(live);
    return () => shared.release(live);
  }, [shared, live]);
  return live;
}

/**
 * The live state: the latest event of each name in each collection within
 * `filter`. The component re-renders when an event within its filter
 * arrives, and when the state is cleared (log out, another user).
 */
export function useBrokerState(filter: Filter = {}): BrokerState {
  const live = useLive(filter);
  return useSyncExternalStore(live.listen, () => live.state, () => live.state);
}

/**
 * The latest event named `name` in `collectionId` (read from the stream of
 * `filter`, by default that collection's): the component re-renders only
 * when that one changes.
 */
export function useBrokerValue(
  collectionId: string,
  name: string,
  filter: Filter = { collections: [collectionId] },
): BrokerEvent | undefined {
  const live = useLive(filter);
  const get = () => live.state.get(collectionId, name);
  return useSyncExternalStore(live.listen, get, get);
}

/** The events within `filter` as they arrive, oldest first (the last 500). */
export function useBrokerEvents(filter: Filter = {}): readonly BrokerEvent[] {
  const live = useLive(filter);
  return useSyncExternalStore(live.listen, () => live.events, () => live.events);
}

/**
 * Where the stream of `filter` stands (`connecting`, `open`, `forbidden`,
 * `unauthenticated`, `closed`: see `StreamStatus`), with the error that
 * explains it, such as the collections one may not read.
 */
export function useBrokerStatus(filter: Filter = {}): { status: StreamStatus; error?: BrokerError } {
  const live = useLive(filter);
  return useSyncExternalStore(live.listen, () => live.status, () => live.status);
}

/**
 * The signals sent to `collectionId` while the component is mounted,
 * oldest first (the last 500; cleared when the user changes): every one,
 * or with `others` only those other users sent. Signals are never stored:
 * a component mounted later sees only what comes after.
 */
export function useSignals(collectionId: string, { others = false } = {}): readonly Signal[] {
  const live = useLive({ collections: [collectionId], signals: others ? "others" : true });
  return useSyncExternalStore(live.listen, () => live.signals, () => live.signals);
}

/**
 * Who has `collectionId` open now (`users`, by username, and the anonymous
 * streams' count as of the last connection), kept current: joins, and
 * leaves once a user's last page has been closed for the server's grace
 * period. Empty until the stream has said, and cleared when the user changes.
 */
export function usePresence(collectionId: string): Presence {
  const live = useLive({ collections: [collectionId], presence: true });
  const get = () => live.presence.get(collectionId) ?? empty(collectionId);
  return useSyncExternalStore(live.listen, get, get);
}

const nobody = new Map<string, Presence>();
/** The same empty presence for a collection each time (React compares snapshots by identity). */
function empty(collectionId: string): Presence {
  let presence = nobody.get(collectionId);
  if (!presence) nobody.set(collectionId, (presence = { collectionId, users: [], anonymous: 0 }));
  return presence;
}

/** A function that sends a signal to `collectionId` (`broker.signal`). */
export function useSendSignal(collectionId: string): (event: string, data: unknown) => Promise<Signal> {
  const broker = useBroker();
  return useCallback((event: string, data: unknown) => broker.signal(event, collectionId, data), [broker, collectionId]);
}

/**
 * The outbox (`new Broker({ outbox: true })`): how many inserts wait to be
 * sent, and why the last attempt failed (`null` once one succeeds).
 */
export function useOutbox(): OutboxStatus {
  const broker = useBroker();
  return useSyncExternalStore(
    useCallback((listener: () => void) => broker.onOutbox(listener), [broker]),
    () => broker.outboxStatus,
    () => broker.outboxStatus,
  );
}

/** The session: whether one is logged in, and the calls that change it. */
export function useAuth() {
  const broker = useBroker();
  const token = useSyncExternalStore(
    useCallback((listener: () => void) => broker.onToken(listener), [broker]),
    () => broker.token,
    () => broker.token,
  );
  return useMemo(
    () => ({
      token,
      loggedIn: token !== null,
      /** The logged-in user's id, read from the token. */
      userId: broker.userId,
      signUp: broker.signUp.bind(broker),
      logIn: broker.logIn.bind(broker),
      logOut: broker.logOut.bind(broker),
      changePassword: broker.changePassword.bind(broker),
    }),
    [broker, token],
  );
}
