import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { expect } from 'chai';
import { freePort } from '../dev/embedded-postgres.ts';
import { createTestDatabase, lockPulse, type TestDatabase } from './support/database.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('graceful shutdown of the API process', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  /** The real API process on a free port, answering /healthz. */
  async function startApi(env: Record<string, string> = {}) {
    const port = await freePort();
    const api = spawn(process.execPath, ['--import', 'tsx', 'api/main.ts'], {
      env: {
        PATH: process.env.PATH,
        DATABASE_URL: database.url,
        PORT: String(port),
        LOG_LEVEL: process.env.DEBUG_SHUTDOWN ? 'info' : 'silent',
        ...env,
      },
      stdio: process.env.DEBUG_SHUTDOWN ? 'inherit' : 'ignore',
    });
    const exited = once(api, 'exit') as Promise<[number | null, string | null]>;
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; ; i += 1) {
      if ((await fetch(`${base}/healthz`).catch(() => undefined))?.ok) break;
      if (i > 200) throw new Error('the API did not start');
      await sleep(50);
    }
    return { api, exited, base };
  }

  const heartbeat = (base: string, userId: number) =>
    fetch(`${base}/status/update`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: userId }),
    }).catch(() => undefined);

  it('forces exit 1 when cleanup outlives SHUTDOWN_TIMEOUT_SECONDS', async () => {
    const { api, exited, base } = await startApi({ SHUTDOWN_TIMEOUT_SECONDS: '1' });
    const release = await lockPulse(database.url);
    try {
      void heartbeat(base, 1); // stuck behind the lock: the server cannot finish it
      await sleep(200);
      const signalled = Date.now();
      api.kill('SIGTERM');
      const [code] = await exited;
      expect(code).to.equal(1);
      expect(Date.now() - signalled).to.be.within(800, 5_000);
    } finally {
      await release();
    }
  });

  it('forces exit 1 on a second signal', async () => {
    const { api, exited, base } = await startApi({ SHUTDOWN_TIMEOUT_SECONDS: '60' });
    const release = await lockPulse(database.url);
    try {
      void heartbeat(base, 2);
      await sleep(200);
      api.kill('SIGTERM');
      await sleep(300);
      expect(api.exitCode).to.equal(null); // still waiting for the stuck request
      api.kill('SIGINT');
      const [code] = await exited;
      expect(code).to.equal(1);
    } finally {
      await release();
    }
  });

  it('on SIGTERM under load, exits 0 and every acknowledged heartbeat is in the table', async () => {
    const { api, exited, base } = await startApi({
      // Long enough that heartbeats are still queued when the signal arrives.
      HEARTBEAT_FLUSH_DELAY_MS: '50',
      HEARTBEAT_FLUSH_MAX_IDS: '100000',
    });

    const acknowledged: number[] = [];
    let refused = 0;
    let nextId = 1;
    let running = true;
    const worker = async () => {
      while (running) {
        const id = nextId++;
        try {
          const response = await fetch(`${base}/status/update`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ user_id: id }),
          });
          if (response.status === 200) acknowledged.push(id);
          else refused += 1;
          await response.arrayBuffer();
        } catch {
          refused += 1; // connection refused or closed: the server is gone, which is allowed
          await sleep(5);
        }
      }
    };
    const workers = Array.from({ length: 16 }, worker);
    // Under load: wait for a steady stream of acknowledgements, however slow the machine is.
    while (acknowledged.length < 100) await sleep(20);
    await sleep(100);
    api.kill('SIGTERM');
    const [code] = await exited;
    running = false;
    await Promise.all(workers);

    expect(code).to.equal(0);
    expect(refused).to.be.greaterThan(0);
    const stored = new Set(await database.userIds());
    const lost = acknowledged.filter((id) => !stored.has(id));
    expect(
      lost,
      `${lost.length} of ${acknowledged.length} acknowledged heartbeats lost`,
    ).to.deep.equal([]);
  });
});
