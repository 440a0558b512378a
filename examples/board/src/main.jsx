import { createRoot } from "react-dom/client";
import { StrictMode } from "react";
import { Broker, localStorageStorage } from "@broker/client";
import { BrokerProvider } from "@broker/react";
import { App } from "./App.jsx";

const params = new URLSearchParams(location.search);
// Broker's URL: ?broker=… or the default of `broker` on this machine.
const url = params.get("broker") ?? "http://localhost:8080";
// The token survives a reload (each browser profile is its own user); with
// ?storage=cookie the page keeps it in memory only and the stream is
// authenticated by Broker's HttpOnly cookie.
const storage = params.get("storage") === "cookie" ? "cookie" : localStorageStorage();
// Inserts go through the outbox: made offline, they wait in IndexedDB (a
// reload keeps them) and are sent, in order, once Broker can be reached.
const client = new Broker({ url, storage, outbox: true });

// The board opens offline too: a service worker keeps its files.
navigator.serviceWorker?.register("/sw.js").then(async () => {
  const worker = (await navigator.serviceWorker.ready).active;
  const loaded = performance.getEntriesByType("resource").map((e) => e.name);
  const channel = new MessageChannel();
  channel.port1.onmessage = () => (document.documentElement.dataset.offline = "ready");
  worker.postMessage({ cache: [location.href, ...loaded] }, [channel.port2]);
});

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <BrokerProvider client={client}>
      <App />
    </BrokerProvider>
  </StrictMode>,
);
