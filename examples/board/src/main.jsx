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
const client = new Broker({ url, storage });

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <BrokerProvider client={client}>
      <App />
    </BrokerProvider>
  </StrictMode>,
);
