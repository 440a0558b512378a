// A live board: the current value of each event, straight from Broker's
// stream with the browser's own EventSource. No library, no build step.
//
// ?broker=<url>      where Broker runs (default http://localhost:8080)
// ?event=<name>      watch only these events (repeatable); default: all
// ?collection_id=<id> watch only these collections (repeatable)
'use strict';

const page = new URLSearchParams(location.search);
const broker = page.get('broker') || 'http://localhost:8080';
const names = page.getAll('event');

const query = new URLSearchParams();
names.forEach((name) => query.append('event', name));
page.getAll('collection_id').forEach((id) => query.append('collection_id', id));
// Events are named by their `event` field. A board that knows its names
// listens for each; one that shows every name asks Broker for unnamed
// messages instead, the name travelling inside the data.
if (names.length === 0) query.set('envelope', 'true');

const board = document.getElementById('board');
const status = document.getElementById('status');

/** Shows the latest data of one event name. */
function show(name, data, id) {
  let tile = document.querySelector(`.tile[data-event="${CSS.escape(name)}"]`);
  if (!tile) {
    tile = document.createElement('div');
    tile.className = 'tile';
    tile.dataset.event = name;
    tile.append(document.createElement('h2'), document.createElement('output'));
    tile.firstChild.textContent = name;
    board.append(tile);
  }
  tile.dataset.id = id;
  tile.lastChild.textContent = JSON.stringify(data);
}

// On connect Broker sends the latest event of each name, then every new
// one. If the connection drops, EventSource reconnects by itself and sends
// Last-Event-ID, and Broker replays whatever was published meanwhile.
const source = new EventSource(`${broker}/events?${query}`);
source.onopen = () => { status.textContent = `live from ${broker}`; };
source.onerror = () => {
  status.textContent = source.readyState === EventSource.CLOSED
    ? 'the stream was refused; reload to retry'
    : 'reconnecting…';
};
if (names.length === 0) {
  source.onmessage = (m) => {
    const { event, data } = JSON.parse(m.data);
    show(event, data, m.lastEventId);
  };
} else {
  for (const name of names) {
    source.addEventListener(name, (m) => show(name, JSON.parse(m.data), m.lastEventId));
  }
}
