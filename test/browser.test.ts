/**
 * The demo page and the client library in a real browser: Debian's Chromium driven by
 * playwright-core, a fresh temporary profile per launch. A browser context stands for one person's
 * browser (its tabs share Web Locks and BroadcastChannel); two contexts are two people.
 */
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { startTestApp, type TestApp } from './support/app.ts';
import { ensureClientBuilt } from './support/client-build.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { waitFor } from './support/entry-points.ts';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
  '--disable-quic',
];
/**
 * 5 s: a user whose stream closes without explicit offline stays online for 3.3 to 5 s (the server
 * beats every third of it), so "offline within 2 s" can only come from the explicit offline, and
 * "still online 6 s after a tab closed" only from a stream that another tab took over.
 */
const THRESHOLD_SECONDS = 5;

const cell = (userId: number, state?: 'online' | 'offline') =>
  `#grid li[data-user-id="${userId}"]${state ? `[data-state="${state}"]` : ''}`;

/** A plain web application on its own origin (another port): one empty page. */
async function startAppOrigin(): Promise<{ origin: string; server: Server }> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>another app</title><link rel="icon" href="data:,">');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

/** In the page: import the library from the API, hold `userId`, resolve with the status reached. */
const holdFromPage = (api: string, userId: number) => `(async () => {
  const { PulseClient } = await import('${api}/client/index.js');
  const pulse = new PulseClient({ url: '${api}', userId: ${userId} });
  pulse.start();
  for (let i = 0; i < 100 && pulse.status !== 'live'; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return pulse.status;
})()`;

describe('in a real browser (Chromium): the demo page and the client library', function () {
  this.timeout(30_000);
  let database: TestDatabase;
  let api: TestApp;
  let browser: Browser;
  const contexts: BrowserContext[] = [];
  const consoleErrors: string[] = [];
  /** The API's request log: which explicit offline requests reached it. */
  const requestLines: string[] = [];
  const offlineRequests = () => requestLines.filter((line) => line.includes('"/status/offline'));
  /** Waits until the API logged a request line that includes every one of `texts`. */
  const waitForRequestLine = (what: string, ...texts: string[]) =>
    waitFor(what, () => requestLines.some((line) => texts.every((text) => line.includes(text))));

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`);
    }
    ensureClientBuilt();
    database = await createTestDatabase();
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        requestLines.push(...chunk.toString().split('\n').filter(Boolean));
        done();
      },
    });
    api = await startTestApp(
      database,
      { ONLINE_THRESHOLD_SECONDS: String(THRESHOLD_SECONDS), STREAM_POLL_INTERVAL_MS: '200' },
      createLogger('pulse-api', 'info', sink),
    );
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
    });
  });
  afterEach(async () => {
    await Promise.all(contexts.splice(0).map((context) => context.close()));
    expect(consoleErrors.splice(0), 'console errors').to.deep.equal([]);
  });
  after(async () => {
    await browser?.close();
    await api?.close();
    await database?.drop();
  });

  /** A new browser, as another person would have. */
  async function newBrowser(): Promise<BrowserContext> {
    const context = await browser.newContext();
    contexts.push(context);
    return context;
  }

  async function openDemo(context: BrowserContext, query = ''): Promise<Page> {
    const page = await context.newPage();
    page.on('console', (message) => {
      if (message.type() === 'error') consoleErrors.push(message.text());
    });
    page.on('pageerror', (error) => consoleErrors.push(error.message));
    await page.goto(`${api.baseUrl}/demo/${query}`);
    return page;
  }

  /** Records every state the page shows for `userId` from now on (scripts run in the page). */
  async function recordStates(page: Page, userId: number): Promise<() => Promise<string[]>> {
    await page.evaluate(`(() => {
      const target = document.querySelector(${JSON.stringify(cell(userId))});
      window.seenStates = [];
      new MutationObserver(() => window.seenStates.push(target.getAttribute('data-state'))).observe(
        target,
        { attributes: true, attributeFilter: ['data-state'] },
      );
    })()`);
    return () => page.evaluate<string[]>('window.seenStates');
  }

  it('renders the demo page without console errors, every user known', async () => {
    const page = await openDemo(await newBrowser());
    await page.waitForSelector('#status[data-status="live"]');
    await page.waitForFunction(
      `!document.querySelector('#grid li[data-state="unknown"]')`,
      undefined,
      {
        timeout: 5_000,
      },
    );
    expect(await page.locator('#grid li').count()).to.equal(24);
    expect(await page.title()).to.equal('Pulse: live presence demo');
  });

  it('shows two users in two browsers each other online', async () => {
    const alice = await openDemo(await newBrowser(), '?user=1');
    const bob = await openDemo(await newBrowser(), '?user=2');
    await alice.waitForSelector(cell(2, 'online'), { timeout: 5_000 });
    await bob.waitForSelector(cell(1, 'online'), { timeout: 5_000 });
    await alice.waitForSelector(cell(1, 'online'));
    expect(await alice.locator(`${cell(1)}.you`).count()).to.equal(1);
    const screenshot = process.env.DEMO_SCREENSHOT;
    if (screenshot) {
      await alice.setViewportSize({ width: 900, height: 560 });
      await alice.screenshot({ path: screenshot });
    }
  });

  // About 2.5 s on a quiet machine: the offline's grace (a reload would cancel it, 1.5 s), then a
  // poll interval; the window is wider because the suite runs in parallel on two cores.
  it('shows a user offline within 5 s when their only tab closes', async () => {
    const alice = await openDemo(await newBrowser(), '?user=4');
    const carol = await openDemo(await newBrowser(), '?user=5');
    await alice.waitForSelector(cell(5, 'online'), { timeout: 5_000 });
    await carol.waitForSelector('#status[data-status="live"]');

    requestLines.length = 0;
    const closedAt = Date.now();
    await carol.close({ runBeforeUnload: true });
    await alice.waitForSelector(cell(5, 'offline'), { timeout: 5_000 });
    const elapsed = Date.now() - closedAt;
    expect(elapsed).to.be.below(5_000);
    expect(await database.ageOf(5)).to.equal(undefined);
    expect(offlineRequests()).to.have.length(1);
  });

  it('keeps a user online when one of their two tabs closes, with one stream for both', async () => {
    const alice = await openDemo(await newBrowser(), '?user=6');
    const daveBrowser = await newBrowser();
    const streams: string[] = [];
    daveBrowser.on('request', (request) => {
      if (request.url().includes('/status/stream')) streams.push(request.url());
    });
    const first = await openDemo(daveBrowser, '?user=7');
    await first.waitForSelector('#status[data-status="live"]');
    const second = await openDemo(daveBrowser, '?user=7');
    await second.waitForSelector(`${cell(7, 'online')}`);
    expect(await second.locator('#status').getAttribute('data-status')).to.equal('shared');
    expect(streams, 'streams opened by two tabs').to.have.length(1);
    await alice.waitForSelector(cell(7, 'online'), { timeout: 5_000 });

    const states = await recordStates(alice, 7);
    requestLines.length = 0;
    // The first tab holds the stream: closing it hands the stream over to the second.
    await first.close({ runBeforeUnload: true });
    await second.waitForSelector('#status[data-status="live"]', { timeout: 5_000 });
    expect(streams).to.have.length(2);
    await new Promise((resolve) => setTimeout(resolve, (THRESHOLD_SECONDS + 1) * 1000));
    expect(await states(), 'states alice saw for user 7').to.deep.equal([]);
    expect(offlineRequests(), 'explicit offline requests').to.deep.equal([]);
    expect(await alice.locator(cell(7)).getAttribute('data-state')).to.equal('online');
    expect(await database.ageOf(7)).to.be.below(THRESHOLD_SECONDS);
  });

  it('keeps a user online on two devices (two browsers) when one closes its page, and offline when the last does', async () => {
    const alice = await openDemo(await newBrowser(), '?user=9');
    const laptop = await openDemo(await newBrowser(), '?user=10');
    const phone = await openDemo(await newBrowser(), '?user=10');
    await laptop.waitForSelector('#status[data-status="live"]');
    await phone.waitForSelector('#status[data-status="live"]');
    await alice.waitForSelector(cell(10, 'online'), { timeout: 5_000 });
    // Two browser profiles are two devices: each keeps its own device id in localStorage.
    const ids = await Promise.all(
      [laptop, phone].map((page) =>
        page.evaluate<string>(`localStorage.getItem('pulse-device-id')`),
      ),
    );
    expect(ids[0]).to.match(/^b-[a-z0-9]{16}$/);
    expect(ids[1])
      .to.match(/^b-[a-z0-9]{16}$/)
      .and.not.equal(ids[0]);
    await alice.waitForSelector(`${cell(10)} .devices[data-count="2"]`, { timeout: 5_000 });
    expect(await alice.locator(`${cell(10)} .devices`).textContent()).to.equal('2 devices: web');

    const states = await recordStates(alice, 10);
    requestLines.length = 0;
    await laptop.close({ runBeforeUnload: true });
    await waitForRequestLine("the laptop's offline", '/status/offline', '"statusCode":202');
    // The grace (1.5 s) and a poll pass: the phone keeps user 10 online, no change is shown.
    await new Promise((resolve) => setTimeout(resolve, 3_500));
    expect(await states(), 'states alice saw for user 10').to.deep.equal([]);
    expect(await database.ageOf(10)).to.be.below(THRESHOLD_SECONDS);
    await alice.waitForSelector(`${cell(10)} .devices[data-count="1"]`, { timeout: 5_000 });

    await phone.close({ runBeforeUnload: true });
    await alice.waitForSelector(cell(10, 'offline'), { timeout: 5_000 });
    expect(await states()).to.deep.equal(['offline']);
    expect(await database.ageOf(10)).to.equal(undefined);
  });

  it('opens a second device in the page: the user shows on two devices, and closing it leaves one', async () => {
    const page = await openDemo(await newBrowser(), '?user=11');
    await page.waitForSelector(cell(11, 'online'), { timeout: 5_000 });
    await page.click('#second');
    await page.waitForSelector(`${cell(11)} .devices[data-count="2"]`, { timeout: 5_000 });
    expect(await page.locator(`${cell(11)} .devices`).textContent()).to.equal(
      '2 devices: mobile, web',
    );
    await page.click('#second');
    await page.waitForSelector(`${cell(11)} .devices[data-count="1"]`, { timeout: 5_000 });
    expect(await page.locator(cell(11)).getAttribute('data-state')).to.equal('online');
  });

  it('keeps an idle page on one stream for 40 s: no reconnect, no error, no fallback heartbeat', async function () {
    this.timeout(90_000);
    const context = await newBrowser();
    const requests: string[] = [];
    context.on('request', (request) => {
      const { pathname } = new URL(request.url());
      if (pathname.startsWith('/status/')) requests.push(`${request.method()} ${pathname}`);
    });
    const page = await openDemo(context, '?user=30');
    await page.waitForSelector('#status[data-status="live"]');
    await page.evaluate(`(() => {
      window.seenStatuses = [];
      const pill = document.getElementById('status');
      new MutationObserver(() => window.seenStatuses.push(pill.dataset.status)).observe(pill, {
        attributes: true,
        attributeFilter: ['data-status'],
      });
    })()`);
    // Past the client's 10 s snapshot watchdog and two of the server's 15 s keep-alives.
    await new Promise((resolve) => setTimeout(resolve, 40_000));
    // Besides the stream, only the demo's reads of where users are online (devices joining or
    // leaving send no event): every 2 s, never a heartbeat or a second stream.
    const reads = requests.filter((request) => request === 'POST /status/batch');
    expect(
      requests.filter((request) => request !== 'POST /status/batch'),
      'requests of the page',
    ).to.deep.equal(['GET /status/stream']);
    expect(reads.length, 'device reads in 40 s').to.be.within(10, 21);
    expect(await page.evaluate<string[]>('window.seenStatuses'), 'status changes').to.deep.equal(
      [],
    );
    expect(await page.locator('#error').textContent()).to.equal('');
    expect(await page.locator('#status').textContent()).to.equal('live: you are online');
  });

  it('sends no offline when the page reloads itself, and the user never looks offline', async () => {
    const alice = await openDemo(await newBrowser(), '?user=20');
    const erin = await openDemo(await newBrowser(), '?user=21');
    await alice.waitForSelector(cell(21, 'online'), { timeout: 5_000 });
    await erin.waitForSelector('#status[data-status="live"]');
    const states = await recordStates(alice, 21);
    requestLines.length = 0;
    await Promise.all([erin.waitForEvent('load'), erin.evaluate('location.reload()')]);
    await erin.waitForSelector('#status[data-status="live"]', { timeout: 5_000 });
    // The page that went away closed its stream (an offline request would go out with it).
    await waitForRequestLine("the first page's stream to close", 'user_id=21', 'stream closed');
    expect(offlineRequests(), 'explicit offline requests').to.deep.equal([]);
    expect(await states(), 'states alice saw for user 21').to.deep.equal([]);
    expect(await database.ageOf(21)).to.be.below(THRESHOLD_SECONDS);
  });

  it("on a reload from the browser's own button, sends an offline with a grace that the reloaded page cancels: the user never looks offline", async () => {
    const alice = await openDemo(await newBrowser(), '?user=22');
    const frank = await openDemo(await newBrowser(), '?user=23');
    await alice.waitForSelector(cell(23, 'online'), { timeout: 5_000 });
    await frank.waitForSelector('#status[data-status="live"]');
    const states = await recordStates(alice, 23);
    requestLines.length = 0;
    await frank.reload(); // as the button, F5 or a typed address: the page cannot tell a close
    await frank.waitForSelector('#status[data-status="live"]', { timeout: 5_000 });
    await waitForRequestLine("the leaving page's offline", '/status/offline', '"statusCode":202');
    expect(offlineRequests().every((line) => line.includes('grace_ms=1500'))).to.equal(true);
    // Time is what this is about: the grace (1.5 s) and a poll (1 s) pass, and nothing changes.
    await new Promise((resolve) => setTimeout(resolve, 3_500));
    expect(await states(), 'states alice saw for user 23').to.deep.equal([]);
    expect(await database.ageOf(23)).to.be.below(THRESHOLD_SECONDS);
  });

  it('says in its status whether you are online, and shows a legend', async () => {
    const page = await openDemo(await newBrowser());
    const pill = page.locator('#status');
    await page.waitForSelector('#status[data-status="live"]');
    expect(await pill.textContent()).to.equal('live: watching (you are offline)');
    await page.fill('#user', '34');
    await page.click('#join');
    await page.waitForSelector('#status[data-status="live"][data-holding="true"]');
    expect(await pill.textContent()).to.equal('live: you are online');
    await page.click('#leave');
    await page.waitForSelector('#status[data-status="live"][data-holding="false"]');
    expect(await pill.textContent()).to.equal('live: watching (you are offline)');
    expect(await page.locator('#legend li').allTextContents()).to.deep.equal([
      'online',
      'offline',
      'not known yet',
    ]);
  });

  it('draws unknown and offline users differently, and "you" inside its cell', async () => {
    const page = await openDemo(await newBrowser(), '?user=24');
    await page.waitForSelector(cell(24, 'online'));
    const dot = (selector: string) =>
      page.evaluate<string>(`(() => {
        const style = getComputedStyle(document.querySelector(${JSON.stringify(selector)}), '::before');
        return style.backgroundColor + ' ' + style.borderTopStyle + ' ' + style.borderTopColor;
      })()`);
    const [unknown, offline, online] = await Promise.all([
      dot('#legend li[data-state="unknown"]'),
      dot('#legend li[data-state="offline"]'),
      dot('#legend li[data-state="online"]'),
    ]);
    expect(
      new Set([unknown, offline, online]).size,
      `${unknown} | ${offline} | ${online}`,
    ).to.equal(3);
    expect(await dot(cell(23, 'offline'))).to.equal(offline);
    for (const width of [1280, 900, 420]) {
      await page.setViewportSize({ width, height: 700 });
      const fits = await page.evaluate<boolean>(`(() => {
        const you = document.querySelector('#grid li.you');
        const small = you.querySelector('small');
        const name = you.querySelector('span');
        const cellBox = you.getBoundingClientRect();
        const badge = small.getBoundingClientRect();
        return you.scrollWidth <= you.clientWidth && name.scrollWidth <= name.clientWidth &&
          badge.left >= cellBox.left && badge.right <= cellBox.right;
      })()`);
      expect(fits, `"you" inside its cell at ${width} px`).to.equal(true);
    }
  });

  it('works from a page on another origin listed in CORS_ORIGINS, and not from one unlisted', async () => {
    const listed = await startAppOrigin();
    const unlisted = await startAppOrigin();
    const corsApi = await startTestApp(database, { CORS_ORIGINS: listed.origin });
    try {
      const context = await newBrowser();
      const page = await context.newPage();
      await page.goto(listed.origin);
      expect(await page.evaluate<string>(holdFromPage(corsApi.baseUrl, 91))).to.equal('live');
      expect(await database.ageOf(91)).to.be.within(0, 2);

      const stranger = await context.newPage();
      await stranger.goto(unlisted.origin);
      const refused = await stranger
        .evaluate<string>(holdFromPage(corsApi.baseUrl, 92))
        .then(String, (error: Error) => error.message);
      expect(refused).to.match(/Failed to fetch dynamically imported module/);
      const direct = await stranger.evaluate<string>(
        `fetch('${corsApi.baseUrl}/status/1').then(() => 'read', (error) => error.message)`,
      );
      expect(direct).to.equal('Failed to fetch');
      expect(await database.ageOf(92)).to.equal(undefined);
    } finally {
      await Promise.all(contexts.splice(0).map((context) => context.close()));
      await corsApi.close();
      for (const { server } of [listed, unlisted]) {
        server.close();
        server.closeAllConnections();
      }
    }
  });
});
