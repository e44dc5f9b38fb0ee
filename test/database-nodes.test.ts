/**
 * DATABASE_URL listing several nodes (libpq's multi-host form): parsed into one URL per node,
 * each wrong node named, and the API's pool per node taking each connection from the next node,
 * past one that refuses. On plain PostgreSQL: the Citus suite covers routing by shard.
 */
import { createServer, type Server } from 'node:net';
import { expect } from 'chai';
import { sql } from 'kysely';
import { ConfigError, loadApiConfig, loadSweeperConfig } from '../lib/infra/config.ts';
import { databaseNodeUrls, firstNodeUrl, nodeName } from '../lib/infra/database-url.ts';
import { openDatabaseNodes } from '../lib/infra/db.ts';
import { checkNodesReadiness } from '../lib/store/readiness.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';

function problemsOf(load: () => unknown): string[] {
  try {
    load();
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
  throw new Error('expected a ConfigError');
}

/** A port on 127.0.0.1 where nothing listens (connections are refused). */
async function closedPort(): Promise<number> {
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('DATABASE_URL with several nodes', () => {
  it('splits into one URL per node with the same user, password, database and options', () => {
    expect(
      databaseNodeUrls(
        'postgres://pulse:pw@10.0.0.1:6432,worker-2,[::1]:7000/pulse?options=-c%20x%3D1',
      ),
    ).to.deep.equal([
      'postgres://pulse:pw@10.0.0.1:6432/pulse?options=-c%20x%3D1',
      'postgres://pulse:pw@worker-2/pulse?options=-c%20x%3D1',
      'postgres://pulse:pw@[::1]:7000/pulse?options=-c%20x%3D1',
    ]);
    expect(nodeName('postgres://pulse:pw@worker-2/pulse')).to.equal('worker-2:5432');
    expect(firstNodeUrl('postgres://u@a:1,b:2/db')).to.equal('postgres://u@a:1/db');
  });

  it('keeps a one-host URL exactly as given', () => {
    const url = 'postgresql://u:p@127.0.0.1:5432/pulse?sslmode=disable';
    expect(databaseNodeUrls(url)).to.deep.equal([url]);
  });

  const wrong: [string, RegExp][] = [
    ['postgres://u@a:5432,b:abc/db', /node 2 of 2 \("b:abc"\) must be host or host:port/],
    ['postgres://u@a:5432,,c/db', /node 2 of 3 \(""\) must be host or host:port/],
    ['postgres://u@a:5432,b:70000/db', /node 2 of 2 \("b:70000"\) .*port from 1 to 65535/],
    ['postgres://u@a:5432,A/db', /node 2 of 2 \("A"\) names a:5432 again/],
    ['mysql://u@a,b/db', /must be a postgres:\/\/ or postgresql:\/\/ URL/],
  ];
  for (const [url, message] of wrong) {
    it(`names what is wrong in ${url}`, () => {
      const problems = problemsOf(() => loadApiConfig({ DATABASE_URL: url }));
      expect(problems.join('\n')).to.match(new RegExp(`^DATABASE_URL ${message.source}`, 'm'));
    });
  }

  it('names every wrong node at once, never echoing the password', () => {
    const problems = problemsOf(() =>
      loadSweeperConfig({ DATABASE_URL: 'postgres://u:s3cret@a:x,b:y/db' }),
    );
    expect(problems).to.have.length(2);
    expect(problems.join('\n')).to.include('node 1 of 2').and.include('node 2 of 2');
    expect(problems.join('\n')).to.not.include('s3cret');
  });

  describe('the pool per node', () => {
    let database: TestDatabase;
    beforeEach(async () => {
      database = await createTestDatabase();
    });
    afterEach(async () => {
      await database.drop();
    });

    const withNodes = (url: string, hosts: string) => {
      const parsed = new URL(url);
      return `${parsed.protocol}//${parsed.username}${parsed.password ? `:${parsed.password}` : ''}@${hosts}${parsed.pathname}${parsed.search}`;
    };

    it('takes connections from each node in turn, and past one that refuses', async () => {
      const here = new URL(database.url);
      const refusing = await closedPort();
      const live = `${here.hostname}:${here.port || 5432}`;
      const handle = openDatabaseNodes({
        connectionString: withNodes(database.url, `${live},127.0.0.1:${refusing}`),
        poolMax: 2,
        applicationName: 'pulse-test-nodes',
        logger: silentLogger,
      });
      try {
        expect(handle.nodes.map((n) => n.name)).to.deep.equal([live, `127.0.0.1:${refusing}`]);
        // Half of these would go to the refusing node without the failover.
        for (let i = 0; i < 6; i += 1) {
          const { rows } = await sql<{ one: number }>`SELECT 1 AS one`.execute(handle.db);
          expect(rows).to.deep.equal([{ one: 1 }]);
        }
        expect(handle.connections.totalCount).to.be.at.least(1);
        const readiness = await checkNodesReadiness(handle.nodes);
        expect(readiness.ready).to.equal(true);
        expect(readiness.nodes.map((n) => n.ready)).to.deep.equal([true, false]);
        // No node answers: not ready, each named with its reason.
        const none = await checkNodesReadiness([handle.nodes[1]!, handle.nodes[1]!]);
        expect(none).to.deep.include({
          ready: false,
          reason: `127.0.0.1:${refusing}: database unavailable; 127.0.0.1:${refusing}: database unavailable`,
        });
      } finally {
        await handle.close();
        await handle.close();
      }
    });

    it('is exactly one pool for a one-host URL', async () => {
      const handle = openDatabaseNodes({
        connectionString: database.url,
        poolMax: 2,
        applicationName: 'pulse-test-nodes',
        logger: silentLogger,
      });
      try {
        expect(handle.nodes).to.have.length(1);
        expect(handle.nodes[0]!.db).to.equal(handle.db);
        expect(handle.connections).to.equal(handle.pool);
      } finally {
        await handle.close();
      }
    });
  });
});
