// The React example of @broker/react's README, type-checked with strict
// TypeScript against the packed packages (e2e/newcomer.sh).
import { createRoot } from "react-dom/client";
import { Broker, type BrokerEvent } from "@broker/client";
import { BrokerProvider, useAuth, useBrokerState, useBrokerStatus, useBrokerValue } from "@broker/react";

const client = new Broker({ url: "https://events.example.com" });

export function mount(root: HTMLElement) {
  createRoot(root).render(
    <BrokerProvider client={client}>
      <Board board="5b4a8f5e-2f1c-4a0e-9a57-7d3c2b1a0f99" />
    </BrokerProvider>,
  );
}

function Board({ board }: { board: string }) {
  const { loggedIn, logOut } = useAuth();
  const cards = useBrokerState({ collections: [board] }); // cleared when the user logs out
  const { status, error } = useBrokerStatus({ collections: [board] });
  if (status === "forbidden") return <p>{error?.message}</p>;
  return (
    <>
      {[...cards.collection(board).values()].map((card) => (
        <Card key={card.id} card={card} />
      ))}
      {loggedIn && <button onClick={() => logOut()}>Log out</button>}
    </>
  );
}

function Card({ card }: { card: BrokerEvent }) {
  return <div>{(card.data as { title: string }).title}</div>;
}

export function Price({ board }: { board: string }) {
  const price = useBrokerValue(board, "price"); // re-renders only when "price" changes
  return <b>{(price?.data as { eur: number } | undefined)?.eur}</b>;
}
