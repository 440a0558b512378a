import { createRoot } from "react-dom/client";
import { StrictMode } from "react";
import { Broker, localStorageStorage } from "@broker/client";
import { BrokerProvider } from "@broker/react";
import { App } from "./App.jsx";

// Broker's URL: ?broker=… or the default of `broker` on this machine.
const url = new URLSearchParams(location.search).get("broker") ?? "http://localhost:8080";
// The token survives a reload; each browser (profile) is its own user.
const client = new Broker({ url, storage: localStorageStorage() });

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <BrokerProvider client={client}>
      <App />
    </BrokerProvider>
  </StrictMode>,
);
