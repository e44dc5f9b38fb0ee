import { expect } from 'chai';
import { sql } from 'kysely';
import { openDatabase, type DatabaseHandle } from '../lib/infra/db.ts';
import { recordHeartbeats } from '../lib/store/pulse-store.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';

/** The named statements of the (one) connection of `handle`, as pg_prepared_statements has them. */
async function namedStatements(handle: DatabaseHandle) {
  const { rows } = await sql<{ name: string; statement: string; plans: number }>`
    SELECT name, statement, generic_plans + custom_plans AS plans
    FROM pg_prepared_statements WHERE name LIKE 'pulse_%'`.execute(handle.db);
  return rows.map((row) => ({ ...row, plans: Number(row.plans) }));
}

describe('named statements (DATABASE_PREPARED_STATEMENTS)', () => {
  let database: TestDatabase;
  const handles: DatabaseHandle[] = [];
  const open = (preparedStatements?: boolean) => {
    const handle = openDatabase({
      connectionString: database.url,
      poolMax: 1,
      applicationName: 'pulse-test',
      logger: silentLogger,
      ...(preparedStatements === undefined ? {} : { preparedStatements }),
    });
    handles.push(handle);
    return handle;
  };
  beforeEach(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    await Promise.all(handles.splice(0).map((handle) => handle.close()));
    await database.drop();
  });

  it('run the heartbeat upsert by name: prepared once per connection, its plan reused', async () => {
    const handle = open();
    for (let flush = 1; flush <= 8; flush += 1) {
      await recordHeartbeats(handle.db, [flush, flush + 100]);
    }
    const named = await namedStatements(handle);
    expect(named).to.have.length(1);
    expect(named[0]!.statement).to.match(/INSERT INTO pulse AS p/);
    // Every flush ran the one statement PostgreSQL parsed once.
    expect(named[0]!.plans).to.equal(8);
    expect(await database.userIds()).to.have.length(16);
  });

  it('run every statement unnamed when turned off', async () => {
    const handle = open(false);
    await recordHeartbeats(handle.db, [1, 2]);
    expect(await namedStatements(handle)).to.deep.equal([]);
    expect(await database.userIds()).to.deep.equal([1, 2]);
  });
});
