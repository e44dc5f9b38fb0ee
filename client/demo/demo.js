// The demo page's only script. It uses nothing but the client library, as a page on another
// origin would: import { PulseClient } from 'https://your-pulse-host/client/index.js'.
// ?user=7 joins as user 7 at once; ?users=48 shows users 1 to 48 (default 24, at most 200).
import { PulseClient } from '/client/index.js';

const params = new URLSearchParams(location.search);
const gridSize = Math.min(Math.max(Number(params.get('users')) || 24, 1), 200);
const watched = Array.from({ length: gridSize }, (_, i) => i + 1);

const form = document.getElementById('who');
const userInput = document.getElementById('user');
const tokenInput = document.getElementById('token');
const leaveButton = document.getElementById('leave');
const secondButton = document.getElementById('second');
const statusLine = document.getElementById('status');
const errorLine = document.getElementById('error');
const grid = document.getElementById('grid');
document.getElementById('grid-title').textContent = `Users 1 to ${gridSize}`;

/** The status pill: what the connection does, and whether it holds this page's user online. */
const STATUS_TEXT = {
  idle: () => 'not connected',
  connecting: () => 'connecting…',
  live: (holding) => (holding ? 'live: you are online' : 'live: watching (you are offline)'),
  backoff: () => 'reconnecting…',
  polling: (holding) =>
    holding ? 'no stream here: online by heartbeats, polling' : 'no stream here: polling',
  shared: (holding) =>
    holding ? 'live: you are online (another tab’s stream)' : 'live: another tab’s stream',
};

const cells = new Map();
for (const id of watched) {
  const cell = document.createElement('li');
  cell.dataset.userId = String(id);
  cell.dataset.state = 'unknown';
  const name = document.createElement('span');
  name.textContent = `user ${id}`;
  cell.append(name, devicesLabel());
  grid.append(cell);
  cells.set(id, cell);
}

function devicesLabel() {
  const label = document.createElement('small');
  label.className = 'devices';
  return label;
}

/** "2 devices: desktop, web" for an online user, nothing for the others. */
function showDevices(userId, devices) {
  const label = cells.get(userId)?.querySelector('.devices');
  if (!label || !devices) return;
  const { count, kinds } = devices;
  label.dataset.count = String(count);
  label.textContent =
    count === 0
      ? ''
      : `${count} device${count === 1 ? '' : 's'}${kinds.length ? `: ${kinds.join(', ')}` : ''}`;
}

let client;
let unwatch;
/** A second client of the same user with its own device id: another device, in this page. */
let second;
let devicesTimer;
/** The user this page holds online, if any. */
let holding;

function showStatus(status) {
  statusLine.dataset.status = status;
  statusLine.dataset.holding = String(holding !== undefined);
  statusLine.textContent = STATUS_TEXT[status]?.(holding !== undefined) ?? status;
  if (status === 'live' || status === 'shared') errorLine.textContent = '';
}

function render({ user_id, is_online, devices }) {
  const cell = cells.get(user_id);
  if (cell) cell.dataset.state = is_online ? 'online' : 'offline';
  showDevices(user_id, devices);
}

/**
 * A device joining or leaving while its user stays online is no transition (the stream sends
 * none): the summaries are read again every 2 s.
 */
async function refreshDevices() {
  const reading = client;
  try {
    const statuses = await reading?.read(watched);
    if (reading === client)
      for (const status of statuses ?? []) showDevices(status.user_id, status.devices);
  } catch {
    // The next round tries again; the status line shows connection trouble.
  }
}

function markYou(userId) {
  for (const [id, cell] of cells) {
    cell.classList.toggle('you', id === userId);
    const name = document.createElement('span');
    name.textContent = `user ${id}`;
    const devices = cell.querySelector('.devices') ?? devicesLabel();
    cell.replaceChildren(name);
    if (id === userId) {
      const you = document.createElement('small');
      you.textContent = 'you';
      cell.append(you);
    }
    cell.append(devices);
  }
}

/** Opens or closes the second device of the user this page holds online. */
async function toggleSecond() {
  if (second) {
    const closing = second;
    second = undefined;
    secondButton.setAttribute('aria-pressed', 'false');
    secondButton.textContent = 'Open a second device';
    await closing.stop({ offline: true });
    return;
  }
  if (holding === undefined) return;
  const token = tokenInput.value.trim();
  second = new PulseClient({
    url: location.origin,
    userId: holding,
    deviceId: `demo-second-${Math.random().toString(36).slice(2, 10)}`,
    deviceKind: 'mobile',
    shareAcrossTabs: false,
    ...(token ? { token } : {}),
  });
  second.start();
  secondButton.setAttribute('aria-pressed', 'true');
  secondButton.textContent = 'Close the second device';
}

async function disconnect(offline) {
  if (second) await toggleSecond();
  clearInterval(devicesTimer);
  unwatch?.();
  unwatch = undefined;
  const previous = client;
  client = undefined;
  holding = undefined;
  await previous?.stop({ offline });
  for (const cell of cells.values()) cell.dataset.state = 'unknown';
  markYou(undefined);
  leaveButton.disabled = true;
  secondButton.disabled = true;
  for (const id of watched) showDevices(id, { count: 0, kinds: [] });
  showStatus('idle');
}

/** Goes offline now (explicit offline) and keeps watching the grid. */
async function leave() {
  await disconnect(true);
  await connect(undefined);
}

/** Watches the grid; with a user id, also holds that user's presence. */
async function connect(userId) {
  await disconnect(false);
  const token = tokenInput.value.trim();
  client = new PulseClient({
    url: location.origin,
    userId,
    ...(token ? { token } : {}),
    onStatus: showStatus,
    onError: (error) => {
      errorLine.textContent = `${error.code}: ${error.message}`;
    },
  });
  unwatch = client.watch(watched, render);
  devicesTimer = setInterval(() => void refreshDevices(), 2_000);
  if (userId === undefined) return;
  holding = userId;
  client.start();
  markYou(userId);
  leaveButton.disabled = false;
  secondButton.disabled = false;
  history.replaceState(
    null,
    '',
    `?user=${userId}${params.has('users') ? `&users=${gridSize}` : ''}`,
  );
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const userId = Number(userInput.value);
  if (Number.isSafeInteger(userId) && userId >= 1) void connect(userId);
});
leaveButton.addEventListener('click', () => void leave());
secondButton.addEventListener('click', () => void toggleSecond());

const requested = Number(params.get('user'));
if (Number.isSafeInteger(requested) && requested >= 1) {
  userInput.value = String(requested);
  void connect(requested);
} else {
  void connect(undefined);
}
