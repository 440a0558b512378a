// Shared notes: log in, post notes, and see everyone's notes live, with the
// seed's own client, broker-client, which reads the stream with fetch and
// can therefore send the Authorization header.
//
// ?broker=<url>  where Broker runs (default http://localhost:8080)
// ?event=<name>  the event name notes use (default "note")
// ?collection_id=<uuid>  the collection notes go to (default: a fixed one)
import BrokerClient from 'broker-client';

const page = new URLSearchParams(location.search);
const broker = page.get('broker') || 'http://localhost:8080';
const NAME = page.get('event') || 'note';
const COLLECTION = page.get('collection_id') || '3d0f4b1e-8c55-4d0e-9a57-2f1b6a8e4c11';
// Broker sends a comment at least this often (its --heartbeat, 15 s by
// default); a stream silent for longer is dead.
const SILENCE_MS = 40_000;

const $ = (selector) => document.querySelector(selector);
let jwt = null;
let client = null;
let lastEventId = null;
let lastHeard = 0;

async function post(path, body) {
  const response = await fetch(broker + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(jwt && { authorization: `Bearer ${jwt}` }) },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error);
  return answer;
}

function show(data, id) {
  if (document.querySelector(`#notes li[data-id="${id}"]`)) return;
  const li = document.createElement('li');
  li.dataset.id = id;
  li.textContent = `${data.author}: ${data.text}`;
  $('#notes').append(li);
}

/**
 * Opens the stream. broker-client neither reconnects nor reports a failed
 * connection, so this page does both: it reconnects when the stream ends or
 * falls silent, sending Last-Event-ID so Broker replays what was missed.
 */
function connect() {
  try { client?.close(); } catch { /* never connected */ }
  const headers = { authorization: `Bearer ${jwt}` };
  if (lastEventId) headers['last-event-id'] = lastEventId;
  const query = new URLSearchParams({ event: NAME, collection_id: COLLECTION });
  client = new BrokerClient(`${broker}/events?${query}`, { headers });
  lastHeard = Date.now();
  client.onmessage = () => {
    lastHeard = Date.now();
    $('#status').textContent = `live from ${broker}`;
  };
  client.addEventListener(NAME, (m) => {
    lastEventId = m.lastEventId;
    show(JSON.parse(m.data), m.lastEventId);
  });
  client.onclose = () => {
    $('#status').textContent = 'reconnecting…';
    setTimeout(connect, 1000);
  };
}

setInterval(() => {
  if (client && Date.now() - lastHeard > (client.readState === BrokerClient.OPEN ? SILENCE_MS : 3000)) {
    $('#status').textContent = 'reconnecting…';
    connect();
  }
}, 1000);

$('#login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target.elements;
  try {
    ({ jwt } = await post('/login', { username: form.username.value, password: form.password.value }));
    $('#login').hidden = true;
    $('#write').hidden = false;
    connect();
  } catch (err) {
    $('#status').textContent = `login failed: ${err.message}`;
  }
});

$('#write').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = e.target.elements.text;
  const author = $('#login').elements.username.value;
  const timestamp = Math.floor(Date.now() / 1000);
  try {
    await post('/insert', { event: NAME, collection_id: COLLECTION, timestamp, data: { author, text: input.value } });
    input.value = '';
  } catch (err) {
    $('#status').textContent = `not posted: ${err.message}`;
  }
});
