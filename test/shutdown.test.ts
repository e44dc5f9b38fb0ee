import { expect } from 'chai';
import { createTestDatabase, lockPulse, type TestDatabase } from './support/database.ts';
import { startApi, waitFor } from './support/entry-points.ts';

describe('graceful shutdown of the API process', function () {
  this.timeout(60_000);
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  const heartbeat = (base: string, userId: number) =>
    fetch(`${base}/status/update`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: userId }),
    }).catch(() => undefined);

  /** A heartbeat the server cannot finish: its statement waits for the lock on pulse. */
  async function stuckHeartbeat(base: string, userId: number): Promise<void> {
    void heartbeat(base, userId);
    await waitFor(
      'the heartbeat to wait for the lock',
      async () => (await database.lockWaiters()) > 0,
    );
  }

  it('forces exit 1 when cleanup outlives SHUTDOWN_TIMEOUT_SECONDS', async () => {
    const { api, baseUrl } = await startApi({
      DATABASE_URL: database.url,
      SHUTDOWN_TIMEOUT_SECONDS: '1',
      LOG_LEVEL: 'info',
    });
    const release = await lockPulse(database.url);
    try {
      await stuckHeartbeat(baseUrl, 1);
      const signalled = Date.now();
      const { code } = await api.stop('SIGTERM');
      expect(code).to.equal(1);
      expect(Date.now() - signalled, 'not before the timeout').to.be.at.least(900);
      expect(api.logLines().map((l) => l.msg)).to.include('shutdown timed out: forcing exit');
    } finally {
      await release();
    }
  });

  it('forces exit 1 on a second signal', async () => {
    const { api, baseUrl } = await startApi({
      DATABASE_URL: database.url,
      SHUTDOWN_TIMEOUT_SECONDS: '60',
      LOG_LEVEL: 'info',
    });
    const release = await lockPulse(database.url);
    try {
      await stuckHeartbeat(baseUrl, 2);
      api.signal('SIGTERM');
      await api.waitForOutput('"msg":"shutting down"');
      expect(api.exitStatus, 'still waiting for the stuck request').to.equal(undefined);
      const { code } = await api.stop('SIGINT');
      expect(code).to.equal(1);
      expect(api.logLines().map((l) => l.msg)).to.include('second signal: forcing exit');
    } finally {
      await release();
    }
  });

  for (const groupCommit of ['true', 'false']) {
    it(`on SIGTERM under load, exits 0 and every acknowledged heartbeat is in the table (HEARTBEAT_GROUP_COMMIT=${groupCommit})`, async () => {
      await database.db.deleteFrom('pulse').execute();
      const { api, baseUrl } = await startApi({
        DATABASE_URL: database.url,
        HEARTBEAT_GROUP_COMMIT: groupCommit,
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
            const response = await fetch(`${baseUrl}/status/update`, {
              method: 'POST',
              headers: { 'content-type': 'application/json' },
              body: JSON.stringify({ user_id: id }),
            });
            if (response.status === 200) acknowledged.push(id);
            else refused += 1;
            await response.arrayBuffer();
          } catch {
            refused += 1; // connection refused or closed: the server is going, which is allowed
            // Pace the retries of a refused connection (this is no wait for a condition).
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        }
      };
      const workers = Array.from({ length: 16 }, worker);
      // Under load: a steady stream of acknowledgements, however slow the machine is.
      await waitFor('100 acknowledged heartbeats', () => acknowledged.length >= 100, {
        whileRunning: api,
        timeoutMs: 30_000,
      });
      const { code } = await api.stop('SIGTERM');
      running = false;
      await Promise.all(workers);

      expect(code).to.equal(0);
      expect(refused, 'requests after the stop were refused').to.be.greaterThan(0);
      const stored = new Set(await database.userIds());
      const lost = acknowledged.filter((id) => !stored.has(id));
      expect(
        lost,
        `${lost.length} of ${acknowledged.length} acknowledged heartbeats lost`,
      ).to.deep.equal([]);
    });
  }
});
