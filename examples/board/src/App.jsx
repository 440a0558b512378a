import { useEffect, useState } from "react";
import {
  useAuth,
  useBroker,
  useBrokerState,
  useBrokerStatus,
  useOutbox,
  usePresence,
  useSendSignal,
  useSignals,
} from "@broker/react";

// The board everyone shares, and the team's private one (claimed by
// whoever creates it first). Each card is an event named `card:<id>`; its
// latest event is the card (data `null`: deleted).
const BOARD = "3a7c9d52-6b1e-4f0a-9c8d-0b0a4d000001";
const TEAM = "3a7c9d52-6b1e-4f0a-9c8d-0b0a4d000002";
const COLUMNS = ["todo", "doing", "done"];
const FILTER = { collections: [BOARD, TEAM] };

export function App() {
  const { loggedIn } = useAuth();
  return loggedIn ? <Board /> : <Login />;
}

function Login() {
  const { signUp, logIn } = useAuth();
  const [error, setError] = useState("");
  const submit = (create) => async (e) => {
    e.preventDefault();
    const form = new FormData(e.target.form ?? e.target);
    const [name, password] = [form.get("username"), form.get("password")];
    setError("");
    try {
      if (create) await signUp(name, password);
      await logIn(name, password);
    } catch (err) {
      setError(err.message);
    }
  };
  return (
    <main>
      <h1>Broker board</h1>
      <form onSubmit={submit(false)}>
        <input type="text" name="username" placeholder="username" aria-label="username" required />
        <input type="password" name="password" placeholder="password" aria-label="password" required />
        <button type="submit">Log in</button>
        <button type="button" className="quiet" onClick={submit(true)}>Sign up</button>
      </form>
      {error && <p className="error" role="alert">{error}</p>}
    </main>
  );
}

function Board() {
  const broker = useBroker();
  const { logOut } = useAuth();
  const state = useBrokerState(FILTER);
  const { status, error: streamError } = useBrokerStatus(FILTER);
  const [error, setError] = useState("");
  const { pending } = useOutbox();
  // The state holds each board's cards apart, even where names meet; what
  // waits in the outbox is shown over it, marked as not sent yet.
  const shown = new Map([...state].map((e) => [`${e.collectionId}/${e.event}`, e]));
  for (const e of broker.outboxEntries) {
    if (FILTER.collections.includes(e.collectionId) && e.timestamp * 1000 <= Date.now()) {
      shown.set(`${e.collectionId}/${e.event}`, { ...e, pending: true });
    }
  }
  const cards = [...shown.values()].filter((e) => e.event.startsWith("card:") && e.data);
  const run = (work) => work().then(() => setError(""), (err) => setError(err.message));

  const add = (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const delay = Number(form.get("delay") || 0);
    const collection = form.get("team") ? TEAM : BOARD;
    const at = new Date(Date.now() + delay * 1000);
    e.target.reset();
    run(() => broker.insert(`card:${crypto.randomUUID()}`, collection, { title: form.get("title"), column: "todo" }, at));
  };
  const move = (card, column) => run(() => broker.insert(card.event, card.collectionId, { ...card.data, column }));
  // Pressing a card tells the others, as a signal (never stored), that one is moving it.
  const sendSignal = useSendSignal(BOARD);
  const grab = (card) => card.collectionId === BOARD && sendSignal("moving", { card: card.data.title }).catch(() => {});
  const remove = (card) => run(() => broker.insert(card.event, card.collectionId, null));

  return (
    <>
      <header>
        <h1>Broker board</h1>
        <span className="status" data-status={status} title={streamError?.message}>
          {status === "forbidden" ? "open (team board: members only)" : status}
        </span>
        <button className="quiet" onClick={() => logOut()}>Log out</button>
      </header>
      <main>
        <form onSubmit={add}>
          <input type="text" name="title" placeholder="a new card" aria-label="title" required />
          <label>appears in <input type="number" name="delay" min="0" defaultValue="0" aria-label="delay" /> s</label>
          <label><input type="checkbox" name="team" /> team only</label>
          <button type="submit">Add</button>
        </form>
        {error && <p className="error" role="alert">{error}</p>}
        {pending > 0 && <p className="status" data-pending={pending}>{pending} change{pending > 1 ? "s" : ""} waiting to be sent</p>}
        <Here />
        <div className="columns">
          {COLUMNS.map((column) => (
            <div className="column" key={column} data-column={column}>
              <h2>{column}</h2>
              {cards
                .filter((card) => card.data.column === column)
                .map((card) => (
                  <Card key={`${card.collectionId}/${card.event}`} card={card} move={move} remove={remove} grab={grab} />
                ))}
            </div>
          ))}
        </div>
        <Team run={run} />
        <Password run={run} />
      </main>
    </>
  );
}

/** Who else has the board open, and what one of them is doing right now. */
function Here() {
  const { userId } = useAuth();
  const { users } = usePresence(BOARD);
  const signals = useSignals(BOARD, { others: true });
  const [doing, setDoing] = useState(null);
  const last = signals.at(-1);
  useEffect(() => {
    if (!last) return;
    const who = users.find((u) => u.userId === last.userId)?.username ?? "someone";
    setDoing(`${who} is moving “${last.data.card}”`);
    const timer = setTimeout(() => setDoing(null), 3000);
    return () => clearTimeout(timer);
  }, [last]); // eslint-disable-line react-hooks/exhaustive-deps
  const others = users.filter((u) => u.userId !== userId).map((u) => u.username);
  return (
    <p className="here">
      <span data-here={others.join(",")}>on this board: {["you", ...others].join(", ")}</span>
      {doing && <span className="doing" role="status">{doing}</span>}
    </p>
  );
}

function Card({ card, move, remove, grab }) {
  const at = COLUMNS.indexOf(card.data.column);
  return (
    <div className="card" data-card={card.data.title} data-unsent={card.pending || undefined} onPointerDown={() => grab(card)}>
      {card.data.title}
      {card.collectionId === TEAM && <span className="badge">team</span>}
      <div className="actions">
        {at > 0 && <button className="quiet" onClick={() => move(card, COLUMNS[at - 1])}>←</button>}
        {at < COLUMNS.length - 1 && <button className="quiet" onClick={() => move(card, COLUMNS[at + 1])}>→</button>}
        <button className="quiet" onClick={() => remove(card)}>×</button>
      </div>
    </div>
  );
}

/** The team's private board: create it (once), add members by name. */
function Team({ run }) {
  const broker = useBroker();
  const [members, setMembers] = useState(null);
  const claim = () => run(async () => setMembers((await broker.claim(TEAM, true)).members));
  const add = (e) => {
    e.preventDefault();
    const name = new FormData(e.target).get("member");
    e.target.reset();
    run(async () => setMembers((await broker.addMember(TEAM, name, "writer")).members));
  };
  return (
    <section>
      <h2>Team</h2>
      <p className="status">Cards marked “team only” go to the team's private board: only its members see them.</p>
      <form onSubmit={add}>
        <button type="button" className="quiet" onClick={claim}>Create the team board</button>
        <input type="text" name="member" placeholder="username" aria-label="member" required />
        <button type="submit">Add to the team</button>
      </form>
      {members && <p className="status">members: {members.map((m) => m.username).join(", ") || "none yet"}</p>}
    </section>
  );
}

/** A new password: every other session of this user ends (their private view with it). */
function Password({ run }) {
  const { changePassword } = useAuth();
  const [done, setDone] = useState(false);
  const submit = (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    e.target.reset();
    run(async () => {
      await changePassword(form.get("old"), form.get("new"));
      setDone(true);
    });
  };
  return (
    <section>
      <h2>Account</h2>
      <form onSubmit={submit}>
        <input type="password" name="old" placeholder="current password" aria-label="current password" required />
        <input type="password" name="new" placeholder="new password" aria-label="new password" required />
        <button type="submit">Change password</button>
      </form>
      {done && <p className="status">Password changed: your other sessions are logged out.</p>}
    </section>
  );
}
