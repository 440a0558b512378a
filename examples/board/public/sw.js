// Keeps the board's own files, so that it opens without a network: what one
// does offline waits in the client's outbox (IndexedDB) until Broker is back.
const CACHE = "board";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

// The page names the files it loaded before this worker took over.
self.addEventListener("message", (event) => {
  const urls = event.data.cache.filter((url) => new URL(url).origin === location.origin);
  // One by one: a file that fails (gone since) does not stop the others.
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => Promise.allSettled(urls.map((url) => cache.add(url))))
      .then((results) => event.ports[0]?.postMessage(results.filter((r) => r.status === "rejected").length)),
  );
});

// The network first (a fresh board when online), the copy without one.
self.addEventListener("fetch", (event) => {
  const { request } = event;
  if (request.method !== "GET" || new URL(request.url).origin !== location.origin) return;
  event.respondWith(
    fetch(request)
      .then((response) => {
        const copy = response.clone();
        caches.open(CACHE).then((cache) => cache.put(request, copy));
        return response;
      })
      .catch(() => caches.match(request).then((cached) => cached ?? Response.error())),
  );
});
