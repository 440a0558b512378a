/**
 * The outbox: inserts made while Broker cannot be reached are kept, in
 * order, in a store that survives a reload (IndexedDB in browsers, a file
 * or memory in Node), and sent when it can be reached again. Each carries
 * its `Idempotency-Key` from the start, so a retry after a cut connection
 * never stores an event twice.
 */

/** One queued insert. */
export interface OutboxEntry {
  /** Its `Idempotency-Key`, and its id until it is sent (what `cancel` takes). */
  key: string;
  /** Whose insert it is (the token's user); sent only as that user. */
  user: string | null;
  event: string;
  collectionId: string;
  data: unknown;
  /** When to publish it, in UNIX seconds. */
  timestamp: number;
}

/** Where queued inserts are kept, in queue order. */
export interface OutboxStore {
  load(): Promise<OutboxEntry[]>;
  add(entry: OutboxEntry): Promise<void>;
  remove(key: string): Promise<void>;
}

/** Keeps the queue in memory: gone with the process or page. */
export function memoryOutbox(): OutboxStore {
  const entries = new Map<string, OutboxEntry>();
  return {
    load: async () => [...entries.values()],
    add: async (entry) => void entries.set(entry.key, entry),
    remove: async (key) => void entries.delete(key),
  };
}

/** Keeps the queue in the browser's IndexedDB database `name`: a reload keeps it. */
export function indexedDbOutbox(name = "broker-outbox"): OutboxStore {
  let db: Promise<IDBDatabase> | undefined;
  const open = () =>
    (db ??= new Promise((resolve, reject) => {
      const request = indexedDB.open(name, 1);
      // `n` keeps the queue order; `key` finds an entry.
      request.onupgradeneeded = () =>
        request.result.createObjectStore("entries", { keyPath: "n", autoIncrement: true }).createIndex("key", "key");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    }));
  const run = async <T>(mode: IDBTransactionMode, work: (store: IDBObjectStore) => IDBRequest<T>) => {
    const tx = (await open()).transaction("entries", mode);
    const request = work(tx.objectStore("entries"));
    return new Promise<T>((resolve, reject) => {
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  };
  return {
    load: async () => (await run("readonly", (s) => s.getAll())).map(({ n: _, ...entry }) => entry as OutboxEntry),
    add: async (entry) => void (await run("readwrite", (s) => s.add({ ...entry }))),
    remove: async (key) => {
      const n = await run("readonly", (s) => s.index("key").getKey(key));
      if (n !== undefined) await run("readwrite", (s) => s.delete(n));
    },
  };
}

/** Keeps the queue in a JSON file (Node), rewritten (then renamed) on each change. */
export function fileOutbox(path: string): OutboxStore {
  // Named at run time: browsers' bundlers need not resolve Node's module.
  const module = "node:fs/promises";
  const fs = (): Promise<{
    readFile(path: string, encoding: "utf8"): Promise<string>;
    writeFile(path: string, data: string): Promise<void>;
    rename(from: string, to: string): Promise<void>;
  }> => import(/* @vite-ignore */ module);
  let entries: OutboxEntry[] | undefined;
  let last: Promise<unknown> = Promise.resolve();
  /** Runs `change` on the entries after every earlier call, saving what it returns. */
  const queued = <T>(work: (list: OutboxEntry[]) => Promise<T>): Promise<T> => {
    const next = last.then(async () => {
      if (!entries) {
        try {
          entries = JSON.parse(await (await fs()).readFile(path, "utf8")) as OutboxEntry[];
        } catch (e) {
          if ((e as { code?: string }).code !== "ENOENT") throw e;
          entries = [];
        }
      }
      return work(entries);
    });
    last = next.catch(() => {});
    return next;
  };
  const save = async (list: OutboxEntry[]) => {
    entries = list;
    const { writeFile, rename } = await fs();
    await writeFile(`${path}.tmp`, JSON.stringify(list));
    await rename(`${path}.tmp`, path);
  };
  return {
    load: () => queued(async (list) => [...list]),
    add: (entry) => queued((list) => save([...list, entry])),
    remove: (key) => queued((list) => save(list.filter((e) => e.key !== key))),
  };
}
