// The Broker console: sign up, log in, watch the live stream, insert,
// cancel and browse events. Plain JavaScript, the browser's own EventSource,
// no dependencies; served from the binary.
'use strict';

const $ = (selector) => document.querySelector(selector);

// ---------------------------------------------------------------- the API

const session = {
  get jwt() { return sessionStorage.getItem('broker.jwt'); },
  get username() { return sessionStorage.getItem('broker.username'); },
  set(jwt, username) {
    sessionStorage.setItem('broker.jwt', jwt);
    sessionStorage.setItem('broker.username', username);
  },
  clear() {
    sessionStorage.removeItem('broker.jwt');
    sessionStorage.removeItem('broker.username');
  },
};

/** Calls the API; resolves to the JSON answer or throws its error message. */
async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (session.jwt) headers.authorization = `Bearer ${session.jwt}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401 && session.jwt) {
    session.clear();
    showAccount();
  }
  if (!response.ok) {
    const error = new Error(answer.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return answer;
}

/** A random UUID v4, also outside secure contexts (plain http on a LAN). */
function uuid4() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const list = (text) => text.split(',').map((s) => s.trim()).filter(Boolean);
const when = (ts) => new Date(ts * 1000).toLocaleString();
const say = (id, text, ok = true) => {
  const p = $(id);
  p.textContent = text;
  p.dataset.ok = ok;
};

/** A table row of text cells (never HTML: the data is the users'). */
function row(cells) {
  const tr = document.createElement('tr');
  for (const cell of cells) {
    const td = document.createElement('td');
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

function status(event) {
  if (event.cancelled) return 'cancelled';
  return event.published ? 'published' : 'scheduled';
}

// ---------------------------------------------------------------- account

let passwordRule = { min_length: 1, max_length: 1024 };

/** Makes a new-password input follow the server's rule, and say it. */
function applyPasswordRule(input) {
  input.minLength = passwordRule.min_length;
  input.maxLength = passwordRule.max_length;
  if (passwordRule.min_length > 1) {
    input.title = `at least ${passwordRule.min_length} characters`;
    input.placeholder = input.placeholder || input.title;
  }
}

function showAccount() {
  const name = session.username;
  $('#whoami').textContent = name ? `logged in as ${name}` : 'not logged in';
  $('#logout').hidden = !name;
  document.body.dataset.loggedIn = Boolean(name);
  $('#signed-in-name').textContent = name;
  document.body.dataset.admin = false;
  if (name) {
    refreshMine();
    // Administrators get the administration panel.
    api('GET', '/users/me').then((me) => {
      document.body.dataset.admin = me.admin;
      if (me.admin) searchUsers(true);
    }, () => {});
  }
}

async function logIn(username, password) {
  const { jwt } = await api('POST', '/login', { username, password });
  session.set(jwt, username);
  showAccount();
  // The answer also set the stream's cookie: reconnect with it, resuming.
  watch(true);
}

$('#signup-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target.elements;
  const body = {
    username: form.username.value,
    password: form.password.value,
    collection_id: form.collection_id.value.trim(),
  };
  try {
    await api('POST', '/users', body);
    localStorage.setItem('broker.collection', body.collection_id);
    for (const form of ['#insert-form', '#browse-form', '#sharing-form']) {
      $(form).elements.collection_id.value = body.collection_id;
    }
    await logIn(body.username, body.password);
    say('#auth-message', `Welcome, ${body.username}.`);
  } catch (err) {
    say('#auth-message', `Sign-up failed: ${err.message}`, false);
  }
});

$('#login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target.elements;
  try {
    await logIn(form.username.value, form.password.value);
    say('#auth-message', `Logged in as ${form.username.value}.`);
  } catch (err) {
    say('#auth-message', `Login failed: ${err.message}`, false);
  }
});

$('#logout').addEventListener('click', async () => {
  // Revokes the token everywhere and clears the stream's cookie.
  await api('POST', '/logout').catch(() => {});
  session.clear();
  showAccount();
  scheduled = [];
  $('#my-events tbody').replaceChildren();
  watch(false);
});

// ---------------------------------------------------------------- stream

let source = null;
let lastId = null;
let retryTimer = null;
let retryDelay = 1000;
let received = 0;
const state = new Map();

function setStatus(state, text) {
  const el = $('#stream-status');
  el.dataset.state = state;
  el.textContent = text;
}

/**
 * Opens the stream with the filters in the form. With `resume`, the last
 * event seen is passed on, so the server sends everything missed since;
 * otherwise the stream starts from the current state.
 */
function watch(resume) {
  clearTimeout(retryTimer);
  if (source) source.close();
  const form = $('#filter-form').elements;
  const params = new URLSearchParams({ envelope: 'true' });
  list(form.collection_id.value).forEach((c) => params.append('collection_id', c));
  list(form.event.value).forEach((n) => params.append('event', n));
  if (resume && lastId !== null) {
    params.set('last_event_id', lastId);
  } else {
    // A new selection starts afresh, from the current state.
    lastId = null;
    state.clear();
    renderState();
    received = 0;
    $('#received-count').textContent = received;
    $('#feed').replaceChildren();
  }
  setStatus('connecting', 'connecting…');
  source = new EventSource(`/events?${params}`);
  source.onopen = () => {
    retryDelay = 1000;
    setStatus('live', 'live');
  };
  source.onmessage = (m) => {
    lastId = m.lastEventId;
    receive(JSON.parse(m.data), m.lastEventId);
  };
  source.addEventListener('reset', (m) => {
    lastId = m.lastEventId;
    state.clear();
    renderState();
    note('The server did not know the last event seen: starting again from the current state.');
  });
  // Named collections this user may not read: said, not shown as empty.
  source.addEventListener('forbidden', (m) => {
    const { collections, error } = JSON.parse(m.data);
    if (collections.length === 0) {
      setStatus('live', 'live');
      note('Every collection named is readable now.');
    } else {
      setStatus('forbidden', `live; not readable: ${collections.length} collection(s)`);
      note(`Not readable: ${collections.join(', ')}. ${error}`);
    }
  });
  source.onerror = () => {
    // The browser reconnects by itself (sending Last-Event-ID) unless the
    // server refused the stream; then try again later, resuming.
    if (source.readyState === EventSource.CLOSED) {
      setStatus('closed', `disconnected; retrying in ${retryDelay / 1000} s`);
      retryTimer = setTimeout(() => watch(true), retryDelay);
      retryDelay = Math.min(retryDelay * 2, 30000);
    } else {
      setStatus('reconnecting', 'reconnecting…');
    }
  };
}

function note(text) {
  const li = document.createElement('li');
  li.className = 'note';
  li.textContent = text;
  $('#feed').prepend(li);
}

function receive(envelope, id) {
  received += 1;
  $('#received-count').textContent = received;
  // One row per collection and name: two boards may share names.
  state.set(`${envelope.collection_id} ${envelope.event}`, { ...envelope, id });
  renderState();
  const li = document.createElement('li');
  li.dataset.id = id;
  li.dataset.event = envelope.event;
  const head = document.createElement('div');
  head.className = 'head';
  const name = document.createElement('strong');
  name.textContent = envelope.event;
  const meta = document.createElement('span');
  meta.textContent = `#${id} · ${envelope.collection_id} · ${new Date().toLocaleTimeString()}`;
  head.append(name, meta);
  const data = document.createElement('pre');
  data.textContent = JSON.stringify(envelope.data);
  li.append(head, data);
  const feed = $('#feed');
  feed.prepend(li);
  while (feed.children.length > 500) feed.lastChild.remove();
  // One of the user's scheduled events may just have been published.
  if (scheduled.some((s) => s.event === envelope.event && s.collection_id === envelope.collection_id)) {
    refreshMineSoon();
  }
}

function renderState() {
  const rows = [...state.values()]
    .sort((a, b) => a.event.localeCompare(b.event) || a.collection_id.localeCompare(b.collection_id))
    .map((e) => {
      const tr = row([e.event, JSON.stringify(e.data), e.collection_id, e.id]);
      tr.dataset.event = e.event;
      return tr;
    });
  $('#state tbody').replaceChildren(...rows);
}

$('#filter-form').addEventListener('submit', (e) => {
  e.preventDefault();
  watch(false);
});

// ---------------------------------------------------------------- insert

$('#insert-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target.elements;
  let data;
  try {
    data = JSON.parse(form.data.value);
  } catch (err) {
    say('#insert-message', `The data is not JSON: ${err.message}`, false);
    return;
  }
  const now = Math.floor(Date.now() / 1000);
  let timestamp = now;
  if (form.when.value === 'in') timestamp = now + Number(form.seconds.value);
  if (form.when.value === 'at') {
    const at = Date.parse(form.at.value);
    if (Number.isNaN(at)) {
      say('#insert-message', 'Choose a date and time to publish at.', false);
      return;
    }
    timestamp = Math.floor(at / 1000);
  }
  const body = { event: form.event.value, collection_id: form.collection_id.value.trim(), timestamp, data };
  try {
    const { event } = await api('POST', '/insert', body);
    localStorage.setItem('broker.collection', body.collection_id);
    const due = event.timestamp > now ? `due ${when(event.timestamp)}` : 'published now';
    say('#insert-message', `Inserted ${event.event} (${due}).`);
    refreshMine();
  } catch (err) {
    say('#insert-message', `Insert failed: ${err.message}`, false);
  }
});

// ---------------------------------------------------------------- my events

let mineTimer = null;
/** The user's events still waiting for their time, as last listed. */
let scheduled = [];
function refreshMineSoon() {
  clearTimeout(mineTimer);
  mineTimer = setTimeout(refreshMine, 300);
}

async function refreshMine() {
  if (!session.jwt) return;
  try {
    const { events } = await api('GET', '/events/user');
    scheduled = events.filter((event) => status(event) === 'scheduled');
    const rows = events.slice(-100).reverse().map((event) => {
      let action = '';
      if (status(event) === 'scheduled') {
        action = document.createElement('button');
        action.type = 'button';
        action.className = 'small';
        action.textContent = 'Cancel';
        action.addEventListener('click', () => cancel(event));
      }
      const tr = row([event.event, when(event.timestamp), status(event), action]);
      tr.dataset.id = event.id;
      tr.dataset.status = status(event);
      return tr;
    });
    $('#my-events tbody').replaceChildren(...rows);
    say('#mine-message', events.length ? '' : 'You have not inserted any event yet.');
  } catch (err) {
    say('#mine-message', `Could not list your events: ${err.message}`, false);
  }
}

async function cancel(event) {
  try {
    await api('GET', `/events/${event.id}/cancel`);
    say('#mine-message', `Cancelled ${event.event}.`);
  } catch (err) {
    say('#mine-message', `Cancel failed: ${err.message}`, false);
  }
  refreshMine();
}

$('#mine-refresh').addEventListener('click', refreshMine);

// ---------------------------------------------------------------- browse

$('#browse-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const id = e.target.elements.collection_id.value.trim();
  try {
    const { events } = await api('GET', `/events/collections/${encodeURIComponent(id)}`);
    const rows = events.map((ev) => row([ev.event, JSON.stringify(ev.data), when(ev.timestamp), status(ev)]));
    $('#collection tbody').replaceChildren(...rows);
    say('#browse-message', `${events.length} event${events.length === 1 ? '' : 's'}.`);
  } catch (err) {
    say('#browse-message', `Could not list the collection: ${err.message}`, false);
  }
  // Who has it open now, over every node.
  try {
    const { users, anonymous } = await api('GET', `/collections/${encodeURIComponent(id)}/presence`);
    const named = users.map((u) => (u.connections > 1 ? `${u.username} (${u.connections} streams)` : u.username));
    const nobody = anonymous === 0 ? 'nobody' : '';
    const streams = anonymous > 0 ? `${anonymous} anonymous stream${anonymous === 1 ? '' : 's'}` : '';
    $('#browse-presence').textContent = `Open now: ${[...named, streams].filter(Boolean).join(', ') || nobody}.`;
  } catch (err) {
    $('#browse-presence').textContent = `Presence: ${err.message}`;
  }
});

// ---------------------------------------------------------------- sharing

const sharedId = () => $('#sharing-form').elements.collection_id.value.trim();

function showCollection(collection) {
  const rows = collection.members.map((m) => {
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'small';
    remove.textContent = 'Remove';
    remove.addEventListener('click', () => share('DELETE', `/members/${encodeURIComponent(m.username)}`));
    const tr = row([m.username, m.role, remove]);
    tr.dataset.member = m.username;
    return tr;
  });
  $('#members tbody').replaceChildren(...rows);
  $('#sharing').dataset.private = collection.private;
  say('#sharing-message', `${collection.private ? 'Private' : 'Public'}, owned by ${collection.owner.username}; ${collection.members.length} member${collection.members.length === 1 ? '' : 's'}.`);
}

/** Calls `/collections/{id}{path}` and shows the collection it answers, and its schemas. */
async function share(method, path = '', body = undefined) {
  try {
    showCollection(await api(method, `/collections/${encodeURIComponent(sharedId())}${path}`, body));
    showSchemas(await api('GET', `/collections/${encodeURIComponent(sharedId())}/schemas`));
  } catch (err) {
    say('#sharing-message', err.message, false);
  }
}

function showSchemas({ schemas }) {
  const lines = Object.entries(schemas).map(([event, schema]) => `${event}: ${JSON.stringify(schema)}`);
  $('#schemas').textContent = lines.join('\n') || 'No schemas: any data is taken.';
}

$('#schema-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target.elements;
  const path = `/collections/${encodeURIComponent(sharedId())}/schemas/${encodeURIComponent(form.event.value.trim())}`;
  try {
    if (e.submitter?.value === 'remove') return showSchemas(await api('DELETE', path));
    let schema;
    try {
      schema = JSON.parse(form.schema.value);
    } catch {
      return say('#sharing-message', 'The schema is not JSON.', false);
    }
    showSchemas(await api('PUT', path, schema));
    say('#sharing-message', `Inserts named ${form.event.value.trim()} are checked from now on.`);
  } catch (err) {
    say('#sharing-message', err.message, false);
  }
});

$('#sharing-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const action = e.submitter?.value || 'show';
  if (action === 'show') return share('GET');
  const wanted = { private: action === 'private' };
  try {
    showCollection(await api('PATCH', `/collections/${encodeURIComponent(sharedId())}`, wanted));
  } catch (err) {
    if (err.status !== 404) return say('#sharing-message', err.message, false);
    // Not claimed yet: claim it.
    try {
      showCollection(await api('POST', '/collections', { collection_id: sharedId(), ...wanted }));
    } catch (claimErr) {
      say('#sharing-message', claimErr.message, false);
    }
  }
});

$('#member-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const form = e.target.elements;
  share('PUT', `/members/${encodeURIComponent(form.username.value.trim())}`, { role: form.role.value });
});

// ---------------------------------------------------------------- admin

let usersCursor = null;

async function searchUsers(fresh) {
  const search = $('#admin-search').elements.search.value;
  const params = new URLSearchParams({ search, limit: '50' });
  if (!fresh && usersCursor) params.set('cursor', usersCursor);
  try {
    const page = await api('GET', `/admin/users?${params}`);
    usersCursor = page.cursor;
    $('#admin-more').hidden = !page.cursor;
    const rows = page.users.map(userRow);
    if (fresh) $('#admin-users tbody').replaceChildren(...rows);
    else $('#admin-users tbody').append(...rows);
  } catch (err) {
    say('#admin-message', err.message, false);
  }
}

function userRow(user) {
  const toggle = document.createElement('button');
  toggle.type = 'button';
  toggle.className = 'small';
  toggle.textContent = user.disabled ? 'Enable' : 'Disable';
  toggle.addEventListener('click', () => changeUser(user, { disabled: !user.disabled }));
  const password = document.createElement('input');
  password.type = 'password';
  password.placeholder = 'new password';
  applyPasswordRule(password);
  const reset = document.createElement('button');
  reset.type = 'button';
  reset.className = 'small';
  reset.textContent = 'Reset password';
  reset.addEventListener('click', () => changeUser(user, { password: password.value }));
  const actions = document.createElement('span');
  actions.append(toggle, ' ', password, ' ', reset);
  const state = [user.admin && 'administrator', user.disabled ? 'disabled' : 'active'].filter(Boolean).join(', ');
  const tr = row([user.username, user.id, state, actions]);
  tr.dataset.user = user.username;
  tr.dataset.disabled = user.disabled;
  return tr;
}

async function changeUser(user, change) {
  try {
    const changed = await api('PATCH', `/admin/users/${user.id}`, change);
    document.querySelector(`#admin-users tr[data-user="${CSS.escape(user.username)}"]`)?.replaceWith(userRow(changed));
    say('#admin-message', `${changed.username}: ${change.password !== undefined ? 'password reset' : changed.disabled ? 'disabled' : 'enabled'}.`);
  } catch (err) {
    say('#admin-message', err.message, false);
  }
}

$('#admin-search').addEventListener('submit', (e) => {
  e.preventDefault();
  searchUsers(true);
});
$('#admin-more').addEventListener('click', () => searchUsers(false));
$('#admin-collection').addEventListener('submit', async (e) => {
  e.preventDefault();
  const id = e.target.elements.collection_id.value.trim();
  try {
    const c = await api('GET', `/admin/collections/${encodeURIComponent(id)}`);
    const members = c.members.map((m) => `${m.username} (${m.role})`).join(', ') || 'none';
    $('#admin-collection-info').textContent = `${c.private ? 'private' : 'public'}; owner ${c.owner.username}; members: ${members}`;
  } catch (err) {
    $('#admin-collection-info').textContent = err.message;
  }
});

// ---------------------------------------------------------------- start

const collection = localStorage.getItem('broker.collection') || uuid4();
$('#signup-form').elements.collection_id.value = uuid4();
$('#insert-form').elements.collection_id.value = collection;
$('#browse-form').elements.collection_id.value = collection;
$('#sharing-form').elements.collection_id.value = collection;
showAccount();
watch(false);
// The server's rule for new passwords (`--min-password-length`), shown
// where one is chosen: the browser then refuses a shorter one.
api('GET', '/users/password-rule').then((rule) => {
  passwordRule = rule;
  applyPasswordRule($('#signup-form').elements.password);
}, () => {});
